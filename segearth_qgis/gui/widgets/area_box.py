"""Where to segment: the area of interest (with a drawing tool) and the processing resolution."""

from __future__ import annotations

import contextlib
import math
from typing import Any, Optional

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsUnitTypes,
    QgsVectorLayer,
)
from qgis.gui import QgsDoubleSpinBox, QgsMapLayerComboBox, QgsMapToolExtent, QgsRubberBand
from qgis.PyQt import sip
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtWidgets import QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton, QWidget

from ...errors import AoiError
from ...job.aoi import AoiKind, AreaOfInterest, selected_polygons
from ...job.layer_input import native_grid
from ...qgis_compat import POLYGON_GEOMETRY, POLYGON_LAYERS

METRES_PER_DEGREE = 111_320.0
KINDS = (("Whole layer", AoiKind.LAYER), ("Current map view", AoiKind.MAP_VIEW),
         ("Drawn rectangle", AoiKind.RECTANGLE), ("Selected features", AoiKind.SELECTED_FEATURES))


class AreaBox(QGroupBox):
    """AOI kind, the drawn rectangle (kept on the map while it is the AOI), polygons, resolution, estimate."""

    changed = pyqtSignal()

    def __init__(self, iface: Any, parent: Optional[QWidget] = None) -> None:
        super().__init__("Area", parent)
        self.iface = iface
        self.drawn: Optional[AreaOfInterest] = None
        self.map_tool: Optional[QgsMapToolExtent] = None
        self.previous_tool: Any = None
        self.band: Optional[QgsRubberBand] = None
        self.layer: Optional[QgsRasterLayer] = None

        self.kind_combo = QComboBox()
        for text, kind in KINDS:
            self.kind_combo.addItem(text, kind.value)
        self.kind_combo.setToolTip("The part of the raster to segment. A drawn rectangle may be drawn in any CRS; "
                                   "with selected features, pixels outside the polygons become nodata.")
        self.draw_button = QPushButton("Draw")
        self.draw_button.setCheckable(True)
        self.draw_button.setToolTip("Drag a rectangle on the map: it becomes the area of interest and stays drawn "
                                    "while it is chosen.")
        self.draw_button.toggled.connect(self._draw_toggled)
        self.polygon_combo = QgsMapLayerComboBox()
        self.polygon_combo.setFilters(POLYGON_LAYERS)
        self.polygon_combo.setToolTip("The polygon layer whose selected features limit the area")
        self.resolution_spin = QgsDoubleSpinBox()
        self.resolution_spin.setDecimals(4)
        self.resolution_spin.setRange(1e-4, 1e6)
        self.resolution_spin.setShowClearButton(True)
        self.resolution_spin.setToolTip(
            "Size of one processing pixel (map units, metres for a geographic CRS). The model sees 224-pixel "
            "windows: coarser pixels give each window more context and run faster; the paper's benchmarks "
            "correspond to roughly 0.3-1 m. The clear button restores the layer's own resolution.")
        self.resolution_label = QLabel()
        self.estimate_label = QLabel()
        self.estimate_label.setWordWrap(True)
        self.estimate_label.setToolTip("Pixels, blocks and time at this resolution; the time comes from this "
                                       "computer's measured speed once a job has run")
        kind_row = QHBoxLayout()
        kind_row.addWidget(self.kind_combo, 1)
        kind_row.addWidget(self.draw_button)
        resolution_row = QHBoxLayout()
        resolution_row.addWidget(self.resolution_spin, 1)
        resolution_row.addWidget(self.resolution_label)
        self.form = QFormLayout(self)
        self.form.addRow("Area of interest", kind_row)
        self.form.addRow("Polygon layer", self.polygon_combo)
        self.form.addRow("Resolution", resolution_row)
        self.form.addRow(self.estimate_label)
        self.kind_combo.currentIndexChanged.connect(self._kind_changed)
        self.resolution_spin.valueChanged.connect(self.changed)
        self.polygon_combo.layerChanged.connect(self._polygons_changed)
        self._watched_polygons: Optional[QgsVectorLayer] = None
        self._kind_changed()

    # -------------------------------------------------------------- kind
    def kind(self) -> AoiKind:
        return AoiKind(self.kind_combo.currentData())

    def set_kind(self, kind: AoiKind) -> None:
        self.kind_combo.setCurrentIndex(self.kind_combo.findData(kind.value))

    def _kind_changed(self) -> None:
        kind = self.kind()
        polygons = kind == AoiKind.SELECTED_FEATURES
        self.polygon_combo.setVisible(polygons)
        label = self.form.labelForField(self.polygon_combo)
        if label is not None:
            label.setVisible(polygons)
        self._show_rectangle()
        self.changed.emit()

    def _polygons_changed(self, layer: object) -> None:
        if self._watched_polygons is not None:
            with contextlib.suppress(TypeError, RuntimeError):  # already gone or disconnected
                self._watched_polygons.selectionChanged.disconnect(self._selection_changed)
        self._watched_polygons = layer if isinstance(layer, QgsVectorLayer) else None
        if self._watched_polygons is not None:
            self._watched_polygons.selectionChanged.connect(self._selection_changed)
        self.changed.emit()

    def _selection_changed(self, *args: object) -> None:
        if self.kind() == AoiKind.SELECTED_FEATURES:
            self.changed.emit()

    def aoi(self) -> AreaOfInterest:
        """The chosen area of interest (raises AoiError when it cannot be used)."""
        kind = self.kind()
        if kind == AoiKind.MAP_VIEW:
            canvas = self.iface.mapCanvas()
            return AreaOfInterest(kind, QgsRectangle(canvas.extent()), canvas.mapSettings().destinationCrs())
        if kind == AoiKind.RECTANGLE:
            if self.drawn is None:
                raise AoiError("No rectangle is drawn: click 'Draw' and drag a rectangle on the map.")
            return self.drawn
        if kind == AoiKind.SELECTED_FEATURES:
            layer = self.polygon_combo.currentLayer()
            return selected_polygons(layer if isinstance(layer, QgsVectorLayer) else None)
        return AreaOfInterest(AoiKind.LAYER)

    def mask_layer_source(self) -> Optional[str]:
        layer = self.polygon_combo.currentLayer()
        if self.kind() == AoiKind.SELECTED_FEATURES and isinstance(layer, QgsVectorLayer):
            return layer.source().split("|")[0]
        return None

    # ------------------------------------------------------------ drawing
    def set_drawn_rectangle(self, rectangle: QgsRectangle, crs: QgsCoordinateReferenceSystem) -> None:
        """Use ``rectangle`` (in ``crs``) as the AOI and keep it drawn on the map."""
        self.drawn = AreaOfInterest(AoiKind.RECTANGLE, QgsRectangle(rectangle), QgsCoordinateReferenceSystem(crs))
        self.set_kind(AoiKind.RECTANGLE)
        self._show_rectangle()
        self.changed.emit()

    def _draw_toggled(self, checked: bool) -> None:
        if checked:
            self.start_drawing()
        else:
            self.stop_drawing()

    def start_drawing(self) -> None:
        canvas = self.iface.mapCanvas()
        if self.map_tool is None:
            self.map_tool = QgsMapToolExtent(canvas)
            self.map_tool.extentChanged.connect(self._extent_drawn)
            self.map_tool.deactivated.connect(lambda: self.draw_button.setChecked(False))
        if canvas.mapTool() is not self.map_tool:
            self.previous_tool = canvas.mapTool()
            canvas.setMapTool(self.map_tool)
        self.draw_button.setChecked(True)

    def _extent_drawn(self, rectangle: QgsRectangle) -> None:
        if not rectangle.isEmpty():
            self.set_drawn_rectangle(rectangle, self.iface.mapCanvas().mapSettings().destinationCrs())
        self.stop_drawing()

    def stop_drawing(self) -> None:
        """Give the map its previous tool back. Unsetting ours unchecks the Draw button, which calls this again
        before the first call ends: the previous tool is taken first, so that inner call cannot lose it."""
        canvas = self.iface.mapCanvas()
        previous, self.previous_tool = self.previous_tool, None
        if self.map_tool is not None and canvas.mapTool() is self.map_tool:
            self.map_tool.clearRubberBand()
            canvas.unsetMapTool(self.map_tool)
            if previous is not None and not sip.isdeleted(previous):
                canvas.setMapTool(previous)
        if self.draw_button.isChecked():
            self.draw_button.setChecked(False)

    def _show_rectangle(self) -> None:
        """Keep the drawn rectangle on the map while it is the AOI (in the canvas's CRS)."""
        canvas = self.iface.mapCanvas()
        if self.band is None:
            self.band = QgsRubberBand(canvas, POLYGON_GEOMETRY)
            self.band.setStrokeColor(QColor(230, 60, 30))
            self.band.setFillColor(QColor(230, 60, 30, 30))
            self.band.setWidth(2)
        self.band.reset(POLYGON_GEOMETRY)
        if self.kind() != AoiKind.RECTANGLE or self.drawn is None or self.drawn.rectangle is None:
            return
        geometry = QgsGeometry.fromRect(self.drawn.rectangle)
        target = canvas.mapSettings().destinationCrs()
        if self.drawn.crs is not None and self.drawn.crs.isValid() and self.drawn.crs != target:
            geometry.transform(QgsCoordinateTransform(self.drawn.crs, target, QgsProject.instance()))
        self.band.setToGeometry(geometry, None)

    def rectangle_shown(self) -> bool:
        return self.band is not None and self.band.numberOfVertices() > 0

    # --------------------------------------------------------- resolution
    def set_layer(self, layer: Optional[QgsRasterLayer]) -> None:
        """Resolution default and units follow the layer (metres for a geographic CRS)."""
        self.layer = layer
        if layer is None:
            return
        grid = native_grid(layer)
        geographic = layer.crs().isGeographic()
        native = grid.pixel_width * (self._metres_per_unit(layer) if geographic else 1.0)
        self.resolution_spin.blockSignals(True)
        self.resolution_spin.setClearValue(native)
        self.resolution_spin.setValue(native)
        self.resolution_spin.blockSignals(False)
        unit = QgsUnitTypes.toAbbreviatedString(layer.crs().mapUnits()) or "map units"
        self.resolution_label.setText("m (converted)" if geographic else unit)

    @staticmethod
    def _metres_per_unit(layer: QgsRasterLayer) -> float:
        """Metres per degree of longitude at the layer's centre latitude."""
        latitude = layer.extent().center().y()
        return METRES_PER_DEGREE * max(math.cos(math.radians(latitude)), 1e-6)

    def resolution_in_map_units(self, layer: QgsRasterLayer) -> Optional[float]:
        """The processing resolution in the layer's map units; None for the layer's own (no resampling)."""
        value = self.resolution_spin.value()
        if math.isclose(value, self.resolution_spin.clearValue(), rel_tol=1e-4):
            return None  # the displayed native value is rounded: use the exact native grid
        return value / self._metres_per_unit(layer) if layer.crs().isGeographic() else value

    def cleanup(self) -> None:
        """Give the map back: drawing tool off, rectangle removed (plugin unload)."""
        self.stop_drawing()
        if self.band is not None:
            self.band.reset(POLYGON_GEOMETRY)
            self.iface.mapCanvas().scene().removeItem(self.band)
            self.band = None
