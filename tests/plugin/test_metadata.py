"""The plugin folder is a complete QGIS plugin: manifest, icon, entry point."""

import configparser
from pathlib import Path

import segearth_qgis

PLUGIN = Path(segearth_qgis.__file__).parent


def test_manifest_has_what_the_plugin_manager_needs():
    parser = configparser.ConfigParser()
    parser.read(PLUGIN / "metadata.txt", encoding="utf-8")
    general = parser["general"]
    for key in ("name", "description", "about", "version", "author", "email", "tracker", "repository", "icon"):
        assert general.get(key), key
    assert general["qgisMinimumVersion"] == "3.22"
    assert (PLUGIN / general["icon"]).is_file()
    assert (PLUGIN.parent / "metadata.txt").resolve() == (PLUGIN / "metadata.txt").resolve()
    plugin = segearth_qgis.classFactory(object())
    assert type(plugin).__name__ == "SegEarthPlugin"
    assert all(callable(getattr(plugin, name)) for name in ("initGui", "initProcessing", "unload"))
