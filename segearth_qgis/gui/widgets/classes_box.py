"""The class list: a text box, the background class, and presets (the paper's and the user's)."""

from __future__ import annotations

from typing import Callable, Optional

from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtGui import QFontMetrics
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QMenu,
    QMessageBox,
    QPlainTextEdit,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ... import settings
from ...core.classes import PRESETS, background_line, class_lines, class_name
from ...core.request_rules import DEFAULT_BIAS_LAMBDA
from ...qt_compat import QAction
from .. import user_presets
from ..user_presets import UserPreset

MIN_VISIBLE_LINES = 6


class ClassesBox(QGroupBox):
    """Classes, the background choice and the presets menu.

    ``changed`` fires when the class list changes. A preset sets the classes,
    the threshold, the background and the lambda together; ``preset_applied``
    carries it so the options follow.
    """

    changed = pyqtSignal()
    preset_applied = pyqtSignal(object)  # UserPreset
    preset_left = pyqtSignal()  # the classes no longer are the applied preset's

    def __init__(self, options_values: Callable[[], tuple[float, float]] = lambda: (0.0, DEFAULT_BIAS_LAMBDA),
                 parent: Optional[QWidget] = None) -> None:
        """``options_values()`` gives the options' (threshold, bias_lambda) when a preset is saved."""
        super().__init__("Classes", parent)
        self.options_values = options_values
        self.edit = QPlainTextEdit()
        self.edit.setTabChangesFocus(True)
        self.edit.setPlaceholderText("background\nbuilding, roof\nroad\ntree, forest\nwater")
        self.edit.setToolTip(
            "One class per line. Synonyms on one line, separated by commas, are one class: "
            "'tree, forest' scores a pixel by whichever of the two fits best. Plain English nouns work best.")
        lines = QFontMetrics(self.edit.font()).lineSpacing()
        self.edit.setMinimumHeight(lines * MIN_VISIBLE_LINES + 12)
        self.background = QComboBox()
        self.background.setToolTip(
            "The class that pixels fall back to when no class is likely enough (see the probability threshold), "
            "drawn transparent. 'None': every pixel gets its most likely class and the threshold is not used.")
        self.presets_button = QToolButton()
        self.presets_button.setText("Presets")
        self.presets_button.setToolTip("The class sets of the SegEarth-OV paper with their settings, and your own")
        self.presets_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.presets_menu = QMenu(self.presets_button)
        self.presets_menu.aboutToShow.connect(self.fill_presets)
        self.presets_button.setMenu(self.presets_menu)
        self.preset_label = QLabel()
        self.preset_label.setStyleSheet("color: palette(mid);")
        row = QHBoxLayout()
        row.addWidget(QLabel("Background"))
        row.addWidget(self.background, 1)
        row.addWidget(self.presets_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.edit)
        layout.addLayout(row)
        layout.addWidget(self.preset_label)
        self.preset: Optional[UserPreset] = None
        #: The user picked "None" in the list: no class named background is picked for them.
        self.none_chosen = False
        self.background.activated.connect(lambda _: setattr(self, "none_chosen", self.background_index() is None))
        self.edit.textChanged.connect(self._text_changed)

    # ------------------------------------------------------------ values
    def text(self) -> str:
        return self.edit.toPlainText()

    def lines(self) -> list[str]:
        return class_lines(self.text())

    def background_index(self) -> Optional[int]:
        value = self.background.currentData()
        return None if value is None or int(value) < 0 else int(value)

    def set_classes(self, text: str, background_index: Optional[int]) -> None:
        self.edit.setPlainText(text)
        self.set_background(background_index)

    def set_background(self, index: Optional[int]) -> None:
        position = self.background.findData(-1 if index is None else index)
        self.background.setCurrentIndex(position if position >= 0 else 0)

    def _refill_background(self) -> None:
        """One entry per class line (and None), keeping the chosen line when it still exists; without one (the
        list was emptied, then typed), the line named "background" unless the user picked None."""
        current = self.background_index()
        self.background.blockSignals(True)
        self.background.clear()
        self.background.addItem("None", -1)
        for index, line in enumerate(self.lines()):
            self.background.addItem(f"{index + 1}: {class_name(line)}", index)
        self.background.blockSignals(False)
        lines = self.lines()
        if current is None or current >= len(lines):  # none chosen yet: the class called background, if any
            current = None if self.none_chosen else background_line(lines)
        self.set_background(current)

    def _text_changed(self) -> None:
        self._refill_background()
        if self.preset is not None and self.text().strip() != self.preset.classes.strip():
            self.preset = None
            self.preset_label.setText("")
            self.preset_left.emit()
        self.changed.emit()

    # ----------------------------------------------------------- state
    def restore(self) -> None:
        self.edit.setPlainText(settings.CLASSES.load())
        stored = settings.BACKGROUND_INDEX.load()
        self.set_background(None if stored < 0 else stored)

    def save(self) -> None:
        settings.CLASSES.save(self.text())
        index = self.background_index()
        settings.BACKGROUND_INDEX.save(-1 if index is None else index)

    # ---------------------------------------------------------- presets
    def fill_presets(self) -> None:
        menu = self.presets_menu
        menu.clear()
        for preset in PRESETS:
            action = menu.addAction(preset.name)
            background = (f"background line {preset.background_index + 1}" if preset.background_index >= 0
                          else "no background class")
            action.setToolTip(f"threshold {preset.threshold:g}, {background}")
            action.triggered.connect(lambda _=False, p=preset: self.apply(UserPreset.from_preset(p)))
        mine = user_presets.load_all()
        if mine:
            menu.addSeparator()
            for mine_preset in mine.values():
                action = menu.addAction(mine_preset.name)
                action.triggered.connect(lambda _=False, p=mine_preset: self.apply(p))
        menu.addSeparator()
        self.save_action = QAction("Save current settings as preset…", menu)
        self.save_action.triggered.connect(self.save_preset)
        menu.addAction(self.save_action)
        if mine:
            rename_menu, delete_menu = menu.addMenu("Rename preset"), menu.addMenu("Delete preset")
            for name in mine:
                rename_menu.addAction(name).triggered.connect(lambda _=False, n=name: self.rename_preset(n))
                delete_menu.addAction(name).triggered.connect(lambda _=False, n=name: self.delete_preset(n))

    def apply(self, preset: UserPreset) -> None:
        """Use ``preset``'s classes and settings (the options box follows through ``preset_applied``)."""
        self.preset = None
        self.set_classes(preset.classes, preset.background_index
                         if preset.background_index is None or preset.background_index >= 0 else None)
        self.preset = preset
        self.preset_label.setText(f"Preset: {preset.name}")
        self.preset_applied.emit(preset)

    def current_preset(self, name: str, threshold: float, bias_lambda: float) -> UserPreset:
        return UserPreset(name, self.text(), threshold, self.background_index(), bias_lambda)

    def save_preset(self) -> None:
        name, ok = QInputDialog.getText(self, "Save preset", "Name of the preset (classes, background, threshold "
                                        "and lambda are saved):")
        if ok and name.strip():
            threshold, bias_lambda = self.options_values()
            preset = self.current_preset(name.strip(), threshold, bias_lambda)
            user_presets.save(preset)
            self.preset = preset
            self.preset_label.setText(f"Preset: {preset.name}")

    def rename_preset(self, name: str) -> None:
        new, ok = QInputDialog.getText(self, "Rename preset", f"New name for '{name}':", text=name)
        if ok and new.strip() and new.strip() != name:
            user_presets.rename(name, new.strip())

    def delete_preset(self, name: str) -> None:
        answer = QMessageBox.question(self, "Delete preset", f"Delete the preset '{name}'?")
        if answer == QMessageBox.StandardButton.Yes:
            user_presets.delete(name)

