"""The plugin's version: the one in ``metadata.txt`` (stamped from ``segearth_backend.__version__`` at packaging)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def plugin_version() -> str:
    """``version=`` of this plugin's ``metadata.txt`` (``0.2.0``, or ``0.2.0-dev`` for a development build)."""
    for line in Path(__file__).with_name("metadata.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith("version="):
            return line.split("=", 1)[1].strip()
    return "unknown"


def same_release(backend_version: object, plugin: str = "") -> bool:
    """Whether a backend of ``backend_version`` belongs with this plugin (a ``-dev`` suffix aside)."""
    mine = (plugin or plugin_version()).split("-", 1)[0]
    return str(backend_version).split("-", 1)[0] == mine
