"""The raster layer and the bands that make its red, green and blue."""

from __future__ import annotations

from typing import Optional

from qgis.core import QgsRasterLayer
from qgis.gui import QgsMapLayerComboBox, QgsRasterBandComboBox
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtWidgets import QComboBox, QFormLayout, QGroupBox, QWidget

from ...job.layer_input import default_bands
from ...qgis_compat import RASTER_LAYERS


class RasterBox(QGroupBox):
    """Layer and bands; ``changed`` fires when either changes."""

    changed = pyqtSignal()

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__("Raster", parent)
        self.layer_combo = QgsMapLayerComboBox()
        self.layer_combo.setFilters(RASTER_LAYERS)
        self.layer_combo.setToolTip("The raster to segment: any layer QGIS can draw (files, WMS/XYZ, virtual "
                                    "rasters). 8-bit bands are used as they are; 16-bit and float bands are "
                                    "stretched like the layer's renderer shows them.")
        self.band_combos = [QgsRasterBandComboBox() for _ in range(3)]
        form = QFormLayout(self)
        form.addRow("Layer", self.layer_combo)
        for colour, combo in zip(("Red", "Green", "Blue"), self.band_combos):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
            combo.setToolTip(f"The band shown as {colour.lower()} (the layer's renderer bands by default). "
                             "For a single-band layer choose the same band three times.")
            combo.currentIndexChanged.connect(self.changed)
            form.addRow(f"{colour} band", combo)
        self.layer_combo.layerChanged.connect(self._layer_changed)
        self._layer_changed(self.layer_combo.currentLayer())  # a layer already in the project is chosen at once

    def layer(self) -> Optional[QgsRasterLayer]:
        layer = self.layer_combo.currentLayer()
        return layer if isinstance(layer, QgsRasterLayer) and layer.isValid() else None

    def bands(self) -> tuple[int, ...]:
        return tuple(combo.currentBand() for combo in self.band_combos)

    def set_layer(self, layer: Optional[QgsRasterLayer]) -> None:
        self.layer_combo.setLayer(layer)
        self._layer_changed(layer)

    def _layer_changed(self, layer: object) -> None:
        raster = layer if isinstance(layer, QgsRasterLayer) else None
        for combo, band in zip(self.band_combos, default_bands(raster) if raster else (1, 1, 1)):
            combo.blockSignals(True)
            combo.setLayer(raster)
            combo.setBand(band)
            combo.blockSignals(False)
        self.changed.emit()
