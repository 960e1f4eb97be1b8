"""The plugin's persistent settings: one typed key per value (QgsSettings under ``segearth_ov/``).

Widgets bind to a :class:`Setting`; everything else reads through it too, so
a value has one name and one default. :func:`load` / :func:`save` by key name
remain for callers that only know the name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from qgis.core import QgsSettings

from .core.classes import PRESETS
from .core.request_rules import DEFAULT_BIAS_LAMBDA

if TYPE_CHECKING:
    from .client.backend_client import BackendSettings

PREFIX = "segearth_ov/"
T = TypeVar("T", str, bool, int, float)


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One persistent value: its key, its default (whose type is the value's type) and what it means."""

    key: str
    default: T
    help: str = ""

    def load(self) -> T:
        value = QgsSettings().value(PREFIX + self.key, self.default)
        kind = type(self.default)
        try:
            if kind is bool:
                return cast(T, value if isinstance(value, bool) else str(value).lower() in ("true", "1"))
            return cast(T, kind(value))
        except (TypeError, ValueError):
            return self.default

    def save(self, value: T) -> None:
        QgsSettings().setValue(PREFIX + self.key, value)

    def reset(self) -> None:
        QgsSettings().remove(PREFIX + self.key)


_DEFAULT_PRESET = PRESETS[0]

CLASSES = Setting("classes", "\n".join(_DEFAULT_PRESET.classes), "the class list, one class per line")
THRESHOLD = Setting("threshold", float(_DEFAULT_PRESET.threshold), "probability threshold")
#: The background class's line (0-based); -1: no background class.
BACKGROUND_INDEX = Setting("background_index", int(_DEFAULT_PRESET.background_index), "background class line")
BIAS_LAMBDA = Setting("bias_lambda", DEFAULT_BIAS_LAMBDA, "global-bias lambda")
PROBABILITIES = Setting("probabilities", False, "also write class probabilities")
BLOCK_SIZE = Setting("block_size", 1024, "pixels per block side")
LIVE_UPDATE = Setting("live_update", False, "re-segment the last area when the classes or options change")
LARGE_JOB_MEGAPIXELS = Setting("large_job_megapixels", 50.0, "ask before larger jobs")
OUTPUT_FOLDER = Setting("output_folder", "", "where results without a file name go")
BACKEND_URL = Setting("backend_url", "", "a running backend's URL (empty: start a local one)")
#: Where a remote backend's token used to be kept in plain text: read once and moved (see backend_token()).
BACKEND_TOKEN = Setting("backend_token", "", "the remote backend's token (before 0.3: moved to QGIS's auth database)")
BACKEND_TOKEN_AUTHCFG = Setting("backend_token_authcfg", "", "the QGIS authentication configuration holding the token")
BACKEND_PYTHON = Setting("backend_python", "", "the Python that runs the local backend")
MODEL = Setting("model", "", "the CLIP model: a preset name or an open_clip JSON config (empty: the backend's default)")
CLIP_WEIGHTS = Setting("clip_weights", "", "CLIP weights file (empty: the backend's default)")
UPSAMPLER_WEIGHTS = Setting("upsampler_weights", "", "SimFeatUp checkpoint file (empty: the backend's default)")
SETUP_PYTHON = Setting("setup_python", "", "the base Python the backend set-up uses (empty: found automatically)")
USER_PRESETS = Setting("user_presets", "{}", "the user's presets (JSON)")
SPEED_HISTORY = Setting("speed_history", "{}", "measured seconds per megapixel by device (JSON)")

#: Every setting above by key (collected, so a new one cannot be left out: live_update was).
ALL: dict[str, Setting[Any]] = {s.key: s for s in list(globals().values()) if isinstance(s, Setting)}


def load(key: str) -> Any:
    return ALL[key].load()


def save(key: str, value: Any) -> None:
    ALL[key].save(value)


def load_json(setting: Setting[str]) -> dict[str, Any]:
    """A JSON-object setting; an unreadable value reads as empty."""
    try:
        value = json.loads(setting.load())
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def save_json(setting: Setting[str], value: dict[str, Any]) -> None:
    setting.save(json.dumps(value, sort_keys=True))


def default_output_folder() -> str:
    """Where unnamed results go unless the user chose a folder: a folder of the user's own (never a shared /tmp)."""
    from qgis.PyQt.QtCore import QStandardPaths

    documents = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.DocumentsLocation)
    return str(Path(documents or Path.home()) / "SegEarth-OV")


def output_folder() -> str:
    """The folder for results saved without a file name (setting ``output_folder``, else the default)."""
    return OUTPUT_FOLDER.load() or default_output_folder()


#: Written by `make install`: the interpreter of the checkout's virtual environment.
BACKEND_PYTHON_FILE = Path(__file__).with_name("backend_python.txt")


def set_up_python() -> str:
    """The interpreter of a finished *Set up backend…* in its default folder (the QGIS profile), or ''."""
    from qgis.core import QgsApplication

    record = Path(QgsApplication.qgisSettingsDirPath()) / "segearth-ov" / "backend" / "segearth-backend.json"
    try:
        python = str(json.loads(record.read_text(encoding="utf-8"))["python"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return python if Path(python).is_file() else ""


#: The name of the authentication configuration (Settings ▸ Options ▸ Authentication lists it).
TOKEN_CONFIG_NAME = "SegEarth-OV backend token"


def _on_main_thread() -> bool:
    """QGIS's authentication manager is not safe to write from a task's thread while the main thread reads it."""
    from qgis.PyQt.QtCore import QCoreApplication, QThread

    application = QCoreApplication.instance()
    return application is not None and QThread.currentThread() == application.thread()


def backend_token() -> str:
    """The remote backend's token, from QGIS's authentication database (encrypted with the master password).

    A token an older version kept in the plain settings is moved there the first time it is read once the
    master password has been given (it stays in the plain settings where the database cannot be used, with a
    line in the log).
    """
    from qgis.core import QgsApplication, QgsAuthMethodConfig

    plain = BACKEND_TOKEN.load()
    if plain:
        # Moved by QGIS's main thread only (a task's thread reads the plain one meanwhile), and only once the
        # user has given the master password: a status poll must never make QGIS ask for it.
        if _on_main_thread() and QgsApplication.authManager().masterPasswordIsSet():
            save_backend_token(plain)
        return plain
    config_id = BACKEND_TOKEN_AUTHCFG.load()
    if not config_id:
        return ""
    config = QgsAuthMethodConfig()
    if not QgsApplication.authManager().loadAuthenticationConfig(config_id, config, True):
        return ""
    return str(config.config("password", ""))


def token_is_saved() -> bool:
    """Whether a backend token is kept (plain or in the authentication database), without opening the latter."""
    return bool(BACKEND_TOKEN.load() or BACKEND_TOKEN_AUTHCFG.load())


def save_backend_token(token: str) -> None:
    """Keep ``token`` in QGIS's authentication database ('' removes it); the plain setting is cleared. Where the
    database cannot be used (disabled, or no master password given), the plain setting keeps it."""
    from qgis.core import Qgis, QgsApplication, QgsAuthMethodConfig, QgsMessageLog

    manager = QgsApplication.authManager()
    config_id = BACKEND_TOKEN_AUTHCFG.load()
    if not token:
        if config_id:
            manager.removeAuthenticationConfig(config_id)
        BACKEND_TOKEN_AUTHCFG.reset()
        BACKEND_TOKEN.reset()
        return
    config = QgsAuthMethodConfig("Basic")
    if config_id and not manager.loadAuthenticationConfig(config_id, config, True):
        config_id = ""  # removed by the user meanwhile: store a new one
    config.setName(TOKEN_CONFIG_NAME)
    config.setMethod("Basic")
    config.setConfig("username", "")
    config.setConfig("password", token)
    stored = not manager.isDisabled() and (
        manager.updateAuthenticationConfig(config) if config_id else manager.storeAuthenticationConfig(config)[0])
    if not stored:
        QgsMessageLog.logMessage("The backend token could not be stored in QGIS's authentication database (no "
                                 "master password?); it is kept in the plugin settings instead.", "SegEarth-OV",
                                 Qgis.MessageLevel.Warning)
        BACKEND_TOKEN.save(token)
        return
    BACKEND_TOKEN_AUTHCFG.save(config.id())
    BACKEND_TOKEN.reset()


def backend_settings() -> BackendSettings:
    """Plugin settings first, then the SEGEARTH_BACKEND_* environment, then ``backend_python.txt`` (a
    developer checkout), then a set-up in the profile's default folder."""
    from .client.backend_client import BackendSettings

    # A saved token goes with the saved URL (the panel shows them together); with no saved URL the
    # SEGEARTH_BACKEND_* environment gives both, and local-only users never open the authentication database.
    url = BACKEND_URL.load()
    token = backend_token() if url else None
    found = BackendSettings.from_env(url=url or None, token=token or None,
                                     python=BACKEND_PYTHON.load() or None,
                                     model=MODEL.load() or None, clip_weights=CLIP_WEIGHTS.load() or None,
                                     upsampler_weights=UPSAMPLER_WEIGHTS.load() or None)
    if found.python is None:
        python = BACKEND_PYTHON_FILE.read_text(encoding="utf-8").strip() if BACKEND_PYTHON_FILE.is_file() else ""
        python = python or set_up_python()
        if python:
            from dataclasses import replace

            found = replace(found, python=python)
    return found
