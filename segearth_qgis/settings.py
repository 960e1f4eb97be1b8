"""The panel's persistent state (QgsSettings under ``segearth_ov/``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backend_client import BackendSettings

from qgis.core import QgsSettings

PREFIX = "segearth_ov/"
DEFAULTS: dict[str, Any] = {
    "classes": "background\nbuilding, roof, house\nroad\ntree, forest\nwater",
    "background_first": True,
    "threshold": 0.0,
    "background_index": 0,
    "bias_lambda": -0.3,
    "probabilities": False,
    "block_size": 1024,
    "large_job_megapixels": 50.0,
    "backend_url": "",
    "backend_token": "",
    "backend_python": "",
    "user_presets": "{}",
    "output_folder": "",
}


def load(key: str) -> Any:
    default = DEFAULTS[key]
    value = QgsSettings().value(PREFIX + key, default)
    try:
        if isinstance(default, bool):
            return value if isinstance(value, bool) else str(value).lower() in ("true", "1")
        return type(default)(value)
    except (TypeError, ValueError):
        return default


def save(key: str, value: Any) -> None:
    QgsSettings().setValue(PREFIX + key, value)


def user_presets() -> dict[str, str]:
    try:
        presets = json.loads(load("user_presets"))
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in presets.items()} if isinstance(presets, dict) else {}


def save_user_preset(name: str, classes: str) -> None:
    presets = user_presets()
    presets[name] = classes
    save("user_presets", json.dumps(presets))


#: Written by `make install`: the interpreter of the checkout's virtual environment.
BACKEND_PYTHON_FILE = Path(__file__).with_name("backend_python.txt")


def backend_settings() -> BackendSettings:
    """Plugin settings first, then the SEGEARTH_BACKEND_* environment, then ``backend_python.txt``."""
    from .backend_client import BackendSettings

    found = BackendSettings.from_env(url=load("backend_url") or None, token=load("backend_token") or None,
                                     python=load("backend_python") or None)
    if found.python is None and BACKEND_PYTHON_FILE.is_file():
        python = BACKEND_PYTHON_FILE.read_text(encoding="utf-8").strip()
        if python:
            found = BackendSettings(found.url, found.token, python, found.timeout)
    return found


def default_output_folder() -> str:
    """Where unnamed results go unless the user chose a folder: a folder of the user's own (never a shared /tmp)."""
    from qgis.PyQt.QtCore import QStandardPaths

    documents = QStandardPaths.writableLocation(QStandardPaths.DocumentsLocation) or str(Path.home())
    return str(Path(documents) / "SegEarth-OV")


def output_folder() -> str:
    """The folder for results saved without a file name (setting ``output_folder``, else the default)."""
    return load("output_folder") or default_output_folder()
