"""The SAR band mapping: units, the decibel stretch (fixed or fitted to the layer) and a preview of the result."""

from __future__ import annotations

from typing import Optional

import numpy as np
from qgis.core import QgsRasterLayer
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtGui import QImage, QPixmap
from qgis.PyQt.QtWidgets import QComboBox, QDoubleSpinBox, QFormLayout, QLabel, QPushButton, QWidget

from ...core.sar import DEFAULT_DB_RANGE, IMAGE, SAR_UNITS, UNIT_LABELS, SarSettings, fitted_db_range, sar_to_grey
from ...errors import LayerError
from ...job.sar_input import band_overview
from .narrow import narrow_combo

#: The preview's longer side on screen, in pixels (computed from the layer's overview).
PREVIEW_SIZE = 160


class SarBox(QWidget):
    """Units, dB range, "Fit to layer" and a grey preview of the chosen band; ``changed`` fires on any edit."""

    changed = pyqtSignal()

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.units_combo = QComboBox()
        for units in SAR_UNITS:
            self.units_combo.addItem(UNIT_LABELS[units], units)
        narrow_combo(self.units_combo)
        self.units_combo.setToolTip("What the band holds. Power and amplitude become decibels (10 log10, "
                                    "20 log10); an 8/16-bit grey image is used as the reference reads it.")
        self.low_spin, self.high_spin = QDoubleSpinBox(), QDoubleSpinBox()
        for spin, value, what in ((self.low_spin, DEFAULT_DB_RANGE[0], "black"),
                                  (self.high_spin, DEFAULT_DB_RANGE[1], "white")):
            spin.setRange(-80.0, 80.0)
            spin.setDecimals(1)
            spin.setSuffix(" dB")
            spin.setValue(value)
            spin.setToolTip(f"Decibels shown {what}; values beyond are clipped (our default "
                            f"{DEFAULT_DB_RANGE[0]:g} to {DEFAULT_DB_RANGE[1]:g} dB spans water to built-up areas).")
            spin.valueChanged.connect(self._edited)
        self.fit_button = QPushButton("Fit to layer (2–98 %)")
        self.fit_button.setToolTip("Set the range from the layer's own decibels (e.g. uncalibrated amplitudes).")
        self.fit_button.clicked.connect(self.fit_to_layer)
        self.preview = QLabel()
        self.preview.setMinimumHeight(40)
        self.units_combo.currentIndexChanged.connect(self._edited)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("SAR units", self.units_combo)
        form.addRow("Black at", self.low_spin)
        form.addRow("White at", self.high_spin)
        form.addRow("", self.fit_button)
        form.addRow("Preview", self.preview)
        self._layer: Optional[QgsRasterLayer] = None
        self._band = 1
        #: What the preview shows: ``rows x cols`` uint8 grey of the band's overview.
        self.preview_grey = np.zeros((0, 0), np.uint8)

    def units(self) -> str:
        return str(self.units_combo.currentData())

    def settings(self) -> SarSettings:
        """The conversion as set (raises LayerError when the range is empty)."""
        return SarSettings(self.units(), self.low_spin.value(), self.high_spin.value())

    def show_band(self, layer: Optional[QgsRasterLayer], band: int) -> None:
        self._layer, self._band = layer, band
        self.update_preview()

    def fit_to_layer(self) -> None:
        """Set the dB range to the 2-98 % of the layer's band (its overview); a message in the preview otherwise."""
        if self._layer is None:
            return
        try:
            values, nodata = band_overview(self._layer, self._band)
            low, high = fitted_db_range(values, self.units(), nodata)
        except LayerError as error:
            self.preview.setText(str(error))
            return
        for spin, value in ((self.low_spin, low), (self.high_spin, high)):
            spin.blockSignals(True)
            spin.setValue(value)
            spin.blockSignals(False)
        self._edited()

    def _edited(self) -> None:
        decibels = self.units() != IMAGE
        for widget in (self.low_spin, self.high_spin, self.fit_button):
            widget.setEnabled(decibels)
        self.update_preview()
        self.changed.emit()

    def update_preview(self) -> None:
        """The band as the model will see it (grey; nodata shown black), or why there is none."""
        if self._layer is None or self.isHidden():
            self.preview.clear()
            return
        try:
            values, nodata = band_overview(self._layer, self._band)
            grey, _ = sar_to_grey(values, self.settings(), nodata)
        except LayerError as error:
            self.preview.setText(str(error))
            return
        self.preview_grey = grey
        grey = np.ascontiguousarray(grey)
        image = QImage(grey.data, grey.shape[1], grey.shape[0], grey.shape[1], QImage.Format.Format_Grayscale8)
        pixmap = QPixmap.fromImage(image.copy())
        self.preview.setPixmap(pixmap.scaled(PREVIEW_SIZE, PREVIEW_SIZE, Qt.AspectRatioMode.KeepAspectRatio))
