"""One rule set for a request, on both sides: the backend's and the plugin's copies of request_rules.py."""

from __future__ import annotations

from tests.helpers import ROOT


def test_the_plugin_and_the_backend_ship_the_same_request_rules():
    backend = ROOT / "backend" / "segearth_backend" / "request_rules.py"
    plugin = ROOT / "segearth_qgis" / "core" / "request_rules.py"
    assert plugin.read_bytes() == backend.read_bytes(), "copy the backend's request_rules.py over the plugin's"


def test_the_backend_publishes_and_uses_the_shared_window():
    from segearth_backend.pipeline.segmenter import CROP, STRIDE
    from segearth_backend.serve.routes import WINDOW
    from segearth_qgis.core.blocks import CROP as PLUGIN_CROP
    from segearth_qgis.core.blocks import STRIDE as PLUGIN_STRIDE

    assert WINDOW == {"size": CROP, "stride": STRIDE} == {"size": PLUGIN_CROP, "stride": PLUGIN_STRIDE}
