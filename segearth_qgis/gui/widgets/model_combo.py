"""The Backend box's model choice: the backend's presets (one list, see core/model_choices.py) or a config file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QComboBox, QFileDialog, QWidget

from ... import settings
from ...core.model_choices import MODEL_CHOICES
from .narrow import narrow_combo

#: The environment variable the backend reads its model from (when the panel has none saved).
ENV_MODEL = "SEGEARTH_MODEL"
#: The entry that asks for an open_clip JSON config; its data is this marker, never a model.
CONFIG_FILE = "\x00config-file"


class ModelCombo(QComboBox):
    """Saved in the settings as the user picks; the local backend starts with ``--model <it>``."""

    def __init__(self, parent: Optional[QWidget] = None,
                 ask_file: Optional[Callable[[QWidget], str]] = None) -> None:
        super().__init__(parent)
        self.ask_file = ask_file or _ask_config_file
        self.setToolTip("The CLIP model the local backend runs (a preset of the SegEarth-OV paper's backbones, or "
                        "an open_clip JSON config of your own with its weights file under Weights…). Saved; the "
                        "backend restarts with it at the next job. Weights… ▸ Check tests the files against it.")
        for index, choice in enumerate(MODEL_CHOICES):
            label = f"{choice.label} — {choice.name}" + (" (default)" if index == 0 else "")
            self.addItem(label, choice.name)
        self.addItem("Config file…", CONFIG_FILE)
        narrow_combo(self)
        self._current = MODEL_CHOICES[0].name
        self.activated.connect(self._picked)

    def model(self) -> str:
        """The chosen preset name or config file path."""
        return self._current

    def set_model(self, model: str) -> None:
        """Show ``model`` (a preset name or a config path; '': the default preset), adding a path as an entry
        (nothing is saved: only the user's pick is)."""
        model = model.strip() or MODEL_CHOICES[0].name
        position = self.findData(model)
        if position < 0:
            self.insertItem(self.count() - 1, f"Config: {Path(model).name}", model)
            self.setItemData(self.count() - 2, model, Qt.ItemDataRole.ToolTipRole)  # the whole path
            position = self.count() - 2
        self.setCurrentIndex(position)
        self._current = model

    def _picked(self, index: int) -> None:
        if self.itemData(index) == CONFIG_FILE:
            path = self.ask_file(self)
            if not path:
                self.set_model(self._current)  # cancelled: the previous choice stays
                return
            self.set_model(path)
        else:
            self._current = str(self.itemData(index))
        settings.MODEL.save(self._current)

    def restore(self) -> None:
        """The saved choice; none saved: the model the backend's environment names ($SEGEARTH_MODEL), else the
        default preset."""
        self.set_model(settings.MODEL.load() or os.environ.get(ENV_MODEL, ""))


def _ask_config_file(parent: QWidget) -> str:
    path, _ = QFileDialog.getOpenFileName(parent, "open_clip model config", "", "JSON config (*.json);;All files (*)")
    return path
