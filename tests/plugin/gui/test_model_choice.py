"""Backend ▸ Model in a real QGIS: the backend's presets or a config file, saved, sent to the local backend's
start, and checked by Weights… ▸ Check against the weight files' keys (real backend process, tiny weights)."""

from __future__ import annotations

import pytest

from segearth_backend.model.presets import MODEL_PRESETS
from segearth_qgis import settings
from segearth_qgis.gui.dock import SegEarthDock
from segearth_qgis.gui.weights_dialog import WeightsDialog
from segearth_qgis.gui.widgets.model_combo import CONFIG_FILE
from tests.plugin.helpers import wait_until


@pytest.fixture
def dock(qgis_iface, backend_environment):
    panel = SegEarthDock(qgis_iface)
    panel.confirm = lambda question: False
    yield panel
    panel.shutdown()
    for key in ("model", "clip_weights", "upsampler_weights"):
        settings.ALL[key].reset()


def test_the_model_list_is_the_backends_registry_and_a_config_file(dock, parity_dir):
    combo = dock.backend_box.model_combo
    names = [combo.itemData(i) for i in range(combo.count())]
    presets = [preset.name for preset in MODEL_PRESETS]
    assert names[:len(presets)] == presets and names[-1] == CONFIG_FILE
    # Nothing saved yet: the panel shows the model the backend's environment names ($SEGEARTH_MODEL here).
    assert names[len(presets):-1] == [combo.currentData()] == [str(parity_dir / "tiny-clip.json")]
    assert "RemoteCLIP ViT-B/32" in combo.itemText(names.index("remoteclip-vit-b32"))
    assert combo.itemText(combo.count() - 1) == "Config file…"


def test_the_chosen_model_is_saved_and_sent_to_the_local_backends_start(dock, parity_dir):
    combo = dock.backend_box.model_combo
    combo.setCurrentIndex(combo.findData("georsclip-vit-b32"))
    combo.activated.emit(combo.currentIndex())  # the user picks a preset
    assert settings.MODEL.load() == "georsclip-vit-b32"
    assert settings.backend_settings().serve_args()[:2] == ("--model", "georsclip-vit-b32")
    config = str(parity_dir / "tiny-clip.json")
    combo.ask_file = lambda parent: ""  # "Config file…", then the file dialog is cancelled: nothing changes
    combo.setCurrentIndex(combo.findData(CONFIG_FILE))
    combo.activated.emit(combo.currentIndex())
    assert settings.MODEL.load() == "georsclip-vit-b32" and combo.currentData() == "georsclip-vit-b32"
    combo.ask_file = lambda parent: config  # a config file of one's own
    combo.setCurrentIndex(combo.findData(CONFIG_FILE))
    combo.activated.emit(combo.currentIndex())
    assert settings.MODEL.load() == config and combo.currentData() == config
    assert combo.currentText() == "Config: tiny-clip.json"
    dock.backend_box.model_combo.clear()  # a new panel (next QGIS session) shows the saved choice
    reopened = SegEarthDock(dock.iface)
    try:
        assert reopened.backend_box.model_combo.currentData() == config
    finally:
        reopened.status_timer.stop()
    dock._backend_action("start")
    wait_until(lambda: dock.backend.local is not None and dock.backend.status().state == "ready", 180)
    args = dock.backend.local.args
    assert args[args.index("--model") + 1] == config
    assert dock.backend.health()["model"] == "tiny-clip"  # the backend runs the chosen model


def check(dialog: WeightsDialog) -> tuple[bool, str]:
    dialog.last_check = None
    dialog.check()
    wait_until(lambda: dialog.last_check is not None, 180)
    return dialog.last_check


def test_check_loads_the_weights_keys_against_the_chosen_model(dock, parity_dir):
    """Found in the walkthrough: a ViT-B/16 file given for another model said "All weight files are present";
    the mismatch showed only at Segment."""
    dialog = WeightsDialog(dock)
    dialog.clip_widget.setFilePath(str(parity_dir / "tiny-clip.pt"))
    dialog.upsampler_widget.setFilePath(str(parity_dir / "tiny-simfeatup.ckpt"))
    settings.MODEL.save(str(parity_dir / "tiny-clip.json"))
    ok, text = check(dialog)
    assert ok and "fit the model" in text and dialog.result_view.toPlainText().startswith("✔")
    settings.MODEL.save("clip-vit-b16")  # the tiny checkpoint given for CLIP ViT-B/16
    ok, text = check(dialog)
    assert not ok and "do not fit the model" in text and "missing keys" in text and "clip-vit-b16" in text
    assert dialog.result_view.toPlainText().startswith("✘")
