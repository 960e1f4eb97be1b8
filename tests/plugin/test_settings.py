"""The plugin's settings: every one is reachable by its key name."""

from __future__ import annotations

from segearth_qgis import settings


def test_every_setting_is_in_all_and_loads_by_name():
    defined = {value.key for value in vars(settings).values() if isinstance(value, settings.Setting)}
    assert set(settings.ALL) == defined and "live_update" in defined
    assert settings.load("live_update") == settings.LIVE_UPDATE.load()  # KeyError while ALL left it out
