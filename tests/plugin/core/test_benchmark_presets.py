"""The plugin's presets come from the backend's benchmark file (a byte-identical copy)."""

from pathlib import Path

from segearth_qgis.core.classes import BENCHMARKS_FILE, PRESETS

SOURCE = Path(__file__).resolve().parents[3] / "backend" / "segearth_backend" / "data" / "benchmarks.json"


def test_copy_is_identical_to_the_backend_source():
    assert BENCHMARKS_FILE.read_bytes() == SOURCE.read_bytes(), (
        f"segearth_qgis/core/benchmarks.json is out of date: cp {SOURCE} {BENCHMARKS_FILE}")


def test_every_benchmark_preset_with_its_settings():
    presets = {p.name: p for p in PRESETS}
    assert len(PRESETS) == 30 and PRESETS[0].name == "OpenEarthMap"
    assert presets["Inria"].classes == ("background", "building")
    sar = [p for p in PRESETS if p.imagery == "sar"]
    assert len(sar) == 10 and presets["YESeg-SAR"].threshold == 0.3 and presets["WHU-SAR"].background_index == 6
    assert presets["SAR land and water"].classes[-1] == "ship,boat"
    assert presets["SAR land and water"].background_index == -1
    assert (presets["Potsdam"].background_index, presets["Vaihingen"].background_index) == (5, 5)
    assert presets["UDD5"].background_index == 4 and presets["UDD5"].classes[4] == "background"
    assert (presets["xBD (pre-disaster)"].threshold, presets["xBD (pre-disaster)"].bias_lambda) == (0.0, 0.0)
    assert presets["iSAID"].threshold == 0.4 and len(presets["iSAID"].classes) == 16
    assert all(p.bias_lambda == -0.3 for p in PRESETS if p.key != "xbd")
