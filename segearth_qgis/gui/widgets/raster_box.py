"""The raster layer, the bands that make its red, green and blue (or, in SAR mode, its grey SAR image),
and the layer to compare it with."""

from __future__ import annotations

from typing import Optional

from qgis.core import QgsRasterLayer
from qgis.gui import QgsMapLayerComboBox, QgsRasterBandComboBox
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtWidgets import QComboBox, QFormLayout, QGroupBox, QWidget

from ...core.sar import SarSettings
from ...job.layer_input import default_bands
from ...qgis_compat import RASTER_LAYERS
from .sar_box import SarBox

#: The "Compare with…" entry that means "segment one layer".
NO_COMPARISON = "none: segment"


class RasterBox(QGroupBox):
    """Layer, band mapping (optical RGB or SAR), bands and "Compare with…"; ``changed`` fires when any changes.

    A layer chosen in "Compare with…" is the later date: Segment becomes Detect change (the layer above is the
    earlier date, read with its bands; the later one with its own renderer bands, on the earlier one's grid).
    """

    changed = pyqtSignal()

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__("Raster", parent)
        self.layer_combo = QgsMapLayerComboBox()
        self.layer_combo.setFilters(RASTER_LAYERS)
        self.layer_combo.setToolTip("The raster to segment: any layer QGIS can draw (files, WMS/XYZ, virtual "
                                    "rasters). 8-bit bands are used as they are; 16-bit and float bands are "
                                    "stretched like the layer's renderer shows them.")
        self.band_combos = [QgsRasterBandComboBox() for _ in range(3)]
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(["Optical (RGB)", "SAR (one band)"])  # short: the panel fits 1366 x 768
        self.mode_combo.setToolTip("Optical: three bands as red, green and blue. SAR: one band of backscatter "
                                   "(VV is the usual choice) made into the grey image the SAR model expects.")
        self.sar_box = SarBox()
        form = QFormLayout(self)
        self.form = form
        form.addRow("Layer", self.layer_combo)
        form.addRow("Band mapping", self.mode_combo)
        for colour, combo in zip(("Red", "Green", "Blue"), self.band_combos):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
            combo.setToolTip(f"The band shown as {colour.lower()} (the layer's renderer bands by default). "
                             "For a single-band layer choose the same band three times.")
            combo.currentIndexChanged.connect(self._bands_changed)
            form.addRow(f"{colour} band", combo)
        form.addRow(self.sar_box)
        self.mode_combo.currentIndexChanged.connect(self._mode_changed)
        self.sar_box.changed.connect(self.changed)
        self._mode_changed()
        self.compare_combo = QgsMapLayerComboBox()
        self.compare_combo.setFilters(RASTER_LAYERS)
        self.compare_combo.setAllowEmptyLayer(True, NO_COMPARISON)
        self.compare_combo.setLayer(None)
        self.compare_combo.setToolTip("A later image of the same place: the panel then detects change between the "
                                      "layer above (before) and this one (after) in the classes, instead of "
                                      "segmenting. Each date keeps its own bands and stretch; this one is read on "
                                      "the layer's grid (reprojected and resampled when they differ).")
        form.addRow("Compare with…", self.compare_combo)
        self.compare_combo.layerChanged.connect(self.changed)
        self.layer_combo.layerChanged.connect(self._layer_changed)
        self._layer_changed(self.layer_combo.currentLayer())  # a layer already in the project is chosen at once

    def layer(self) -> Optional[QgsRasterLayer]:
        layer = self.layer_combo.currentLayer()
        return layer if isinstance(layer, QgsRasterLayer) and layer.isValid() else None

    def compare_layer(self) -> Optional[QgsRasterLayer]:
        """The later date to compare the layer with, or None (segment)."""
        layer = self.compare_combo.currentLayer()
        return layer if isinstance(layer, QgsRasterLayer) and layer.isValid() else None

    def set_compare_layer(self, layer: Optional[QgsRasterLayer]) -> None:
        self.compare_combo.setLayer(layer)

    def bands(self) -> tuple[int, ...]:
        if self.is_sar():
            return (self.band_combos[0].currentBand(),)
        return tuple(combo.currentBand() for combo in self.band_combos)

    def is_sar(self) -> bool:
        return self.mode_combo.currentIndex() == 1

    def sar_settings(self) -> Optional[SarSettings]:
        """The SAR conversion in SAR mode, else None (raises LayerError on a bad stretch)."""
        return self.sar_box.settings() if self.is_sar() else None

    def _mode_changed(self) -> None:
        sar = self.is_sar()
        self.form.labelForField(self.band_combos[0]).setText("SAR band" if sar else "Red band")
        for combo in self.band_combos[1:]:
            combo.setVisible(not sar)
            self.form.labelForField(combo).setVisible(not sar)
        self.sar_box.setVisible(sar)
        self._bands_changed()

    def _bands_changed(self) -> None:
        if self.is_sar():
            self.sar_box.show_band(self.layer(), self.band_combos[0].currentBand())
        self.changed.emit()

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
        self._bands_changed()
