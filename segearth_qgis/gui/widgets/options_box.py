"""Advanced options: threshold, global-bias lambda, probabilities, where results go."""

from __future__ import annotations

from typing import Optional

from qgis.gui import QgsCollapsibleGroupBox, QgsDoubleSpinBox, QgsFileWidget
from qgis.PyQt.QtWidgets import QCheckBox, QFormLayout, QWidget

from ... import settings
from ...core.request_rules import BIAS_LAMBDA_RANGE, DEFAULT_BIAS_LAMBDA
from ..user_presets import UserPreset


class OptionsBox(QgsCollapsibleGroupBox):
    """Collapsed by default; holds the numbers a preset sets and the output choices."""

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__("Options", parent)
        self.setObjectName("SegEarthOVOptions")
        self.threshold_spin = QgsDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setClearValue(0.0)
        self.threshold_spin.setToolTip(
            "Pixels whose most likely class has a probability below this go to the background class. 0 keeps "
            "every pixel's best class; the paper uses 0.1 for OpenEarthMap, up to 0.7 for one-class sets "
            "(roads). No effect when the background is 'None'.")
        self.lambda_spin = QgsDoubleSpinBox()
        self.lambda_spin.setRange(*BIAS_LAMBDA_RANGE)
        self.lambda_spin.setSingleStep(0.1)
        self.lambda_spin.setClearValue(DEFAULT_BIAS_LAMBDA)
        self.lambda_spin.setToolTip(
            "Global-bias lambda: how much of the image's global (CLS) feature is subtracted from every pixel's "
            f"class scores. {DEFAULT_BIAS_LAMBDA:g} is the paper's value; 0 turns the subtraction off.")
        self.probabilities_check = QCheckBox("Also write class probabilities")
        self.probabilities_check.setToolTip("A second GeoTIFF beside the result: one float band per class")
        self.output_widget = QgsFileWidget()
        self.output_widget.setStorageMode(QgsFileWidget.StorageMode.SaveFile)
        self.output_widget.setFilter("GeoTIFF (*.tif *.tiff)")
        self.output_widget.lineEdit().setPlaceholderText("[a new file in the results folder]")
        self.output_widget.setToolTip("The class GeoTIFF to write; empty: a new file in the results folder. An "
                                      "existing file is replaced only after you confirm, and never the input.")
        self.folder_widget = QgsFileWidget()
        self.folder_widget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.folder_widget.lineEdit().setPlaceholderText(settings.default_output_folder())
        self.folder_widget.setToolTip("Where results without a file name are saved (kept after QGIS closes)")
        form = QFormLayout(self)
        form.addRow("Probability threshold", self.threshold_spin)
        form.addRow("Global-bias lambda", self.lambda_spin)
        form.addRow(self.probabilities_check)
        form.addRow("Output file", self.output_widget)
        form.addRow("Results folder", self.folder_widget)
        self.setCollapsed(True)
        self._before_preset: Optional[tuple[float, float]] = None

    def apply_preset(self, preset: UserPreset) -> None:
        if self._before_preset is None:
            self._before_preset = (self.threshold_spin.value(), self.lambda_spin.value())
        self.threshold_spin.setValue(preset.threshold)
        self.lambda_spin.setValue(preset.bias_lambda)

    def leave_preset(self) -> None:
        """The user typed their own classes: the preset's threshold and lambda give way to theirs."""
        if self._before_preset is not None:
            threshold, bias_lambda = self._before_preset
            self.threshold_spin.setValue(threshold)
            self.lambda_spin.setValue(bias_lambda)
        self._before_preset = None

    def restore(self) -> None:
        self.threshold_spin.setValue(settings.THRESHOLD.load())
        self.lambda_spin.setValue(settings.BIAS_LAMBDA.load())
        self.probabilities_check.setChecked(settings.PROBABILITIES.load())
        self.folder_widget.setFilePath(settings.OUTPUT_FOLDER.load())

    def save(self) -> None:
        settings.THRESHOLD.save(self.threshold_spin.value())
        settings.BIAS_LAMBDA.save(self.lambda_spin.value())
        settings.PROBABILITIES.save(self.probabilities_check.isChecked())
        settings.OUTPUT_FOLDER.save(self.folder_widget.filePath().strip())
