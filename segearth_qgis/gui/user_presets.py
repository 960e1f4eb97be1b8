"""The user's own presets: a class list with every setting that goes with it (stored in the settings)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from .. import settings
from ..core.classes import Preset
from ..core.request_rules import DEFAULT_BIAS_LAMBDA


@dataclass(frozen=True)
class UserPreset:
    """A saved class list and its settings (background_index None: no background class)."""

    name: str
    classes: str
    threshold: float = 0.0
    background_index: Optional[int] = 0
    bias_lambda: float = DEFAULT_BIAS_LAMBDA

    @classmethod
    def from_preset(cls, preset: Preset, bias_lambda: float = DEFAULT_BIAS_LAMBDA) -> UserPreset:
        return cls(preset.name, "\n".join(preset.classes), preset.threshold, preset.background_index, bias_lambda)


def _from_json(name: str, value: Any) -> Optional[UserPreset]:
    if isinstance(value, str):  # presets saved by 0.1.0 held the class text only
        return UserPreset(name, value)
    if not isinstance(value, dict) or not isinstance(value.get("classes"), str):
        return None
    background = value.get("background_index", 0)
    try:
        return UserPreset(name, value["classes"], float(value.get("threshold", 0.0)),
                          None if background is None else int(background),
                          float(value.get("bias_lambda", DEFAULT_BIAS_LAMBDA)))
    except (TypeError, ValueError):
        return None


def load_all() -> dict[str, UserPreset]:
    """The saved presets by name (unreadable entries are skipped)."""
    found = {}
    for name, value in settings.load_json(settings.USER_PRESETS).items():
        preset = _from_json(str(name), value)
        if preset is not None:
            found[preset.name] = preset
    return dict(sorted(found.items(), key=lambda item: item[0].casefold()))


def _store(presets: dict[str, UserPreset]) -> None:
    settings.save_json(settings.USER_PRESETS, {name: {k: v for k, v in asdict(p).items() if k != "name"}
                                               for name, p in presets.items()})


def save(preset: UserPreset) -> None:
    presets = load_all()
    presets[preset.name] = preset
    _store(presets)


def delete(name: str) -> None:
    presets = load_all()
    presets.pop(name, None)
    _store(presets)


def rename(old: str, new: str) -> None:
    """Rename ``old`` to ``new`` (replacing a preset called ``new``)."""
    presets = load_all()
    if old in presets and new.strip():
        preset = presets.pop(old)
        presets[new.strip()] = UserPreset(new.strip(), preset.classes, preset.threshold, preset.background_index,
                                          preset.bias_lambda)
        _store(presets)
