"""What a new user meets in the panel: size, tooltips, background, presets, drawing, estimates, first run."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsGeometry,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.gui import QgsMapToolPan
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtWidgets import (
    QAbstractButton,
    QAbstractSpinBox,
    QComboBox,
    QLineEdit,
    QPlainTextEdit,
)

from segearth_qgis import settings
from segearth_qgis.client.backend_manager import FAILED, READY, BackendStatus
from segearth_qgis.gui import user_presets
from segearth_qgis.gui.dock import SegEarthDock
from segearth_qgis.gui.user_presets import UserPreset
from segearth_qgis.job.aoi import AoiKind
from tests.plugin.helpers import UTM, smooth_image, wait_until, write_geotiff


@pytest.fixture
def dock(qgis_iface, tmp_path, monkeypatch):
    import sys

    monkeypatch.setenv("SEGEARTH_BACKEND_PYTHON", sys.executable)  # a backend is set up (see the not-set-up test)
    settings.OUTPUT_FOLDER.save(str(tmp_path / "results"))
    panel = SegEarthDock(qgis_iface)
    panel.confirm = lambda question: False
    yield panel
    panel.shutdown()
    for key in ("classes", "threshold", "background_index", "bias_lambda", "user_presets", "output_folder",
                "backend_python", "backend_url", "backend_token", "clip_weights", "upsampler_weights"):
        settings.ALL[key].reset()  # after shutdown(), which saves the panel's state


def load(path, name):
    layer = QgsRasterLayer(str(path), name)
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    return layer


def process_events(seconds: float = 0.4) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        QCoreApplication.processEvents()
        time.sleep(0.01)


# ------------------------------------------------------------------ the panel fits a 1366 x 768 screen

def test_the_panel_fits_a_small_screen(dock):
    """On 1366 x 768 a dock gets about 600 px: the panel scrolls instead of pushing Segment off screen."""
    assert dock.minimumSizeHint().height() < 300
    assert dock.options_box.isCollapsed() and dock.backend_box.isCollapsed()
    dock.resize(360, 600)
    dock.show()
    process_events()
    scroll = dock.widget()
    scroll.ensureWidgetVisible(dock.run_box.segment_button)
    process_events()
    button = dock.run_box.segment_button
    top_left = button.mapTo(scroll.viewport(), button.rect().topLeft())
    assert top_left.y() >= 0 and top_left.y() + button.height() <= scroll.viewport().height()
    dock.hide()


def test_classes_box_shows_six_lines_and_band_names_are_whole(dock, tmp_path):
    edit = dock.classes_box.edit
    assert edit.minimumHeight() >= 6 * edit.fontMetrics().lineSpacing()
    layer = load(write_geotiff(tmp_path / "b.tif", smooth_image(40, 40), 32633, UTM), "bands")
    dock.raster_box.set_layer(layer)
    dock.resize(360, 600)
    dock.show()
    process_events()
    for combo in dock.raster_box.band_combos:
        assert combo.width() >= combo.sizeHint().width() - 2, combo.currentText()
    dock.hide()


def _explained(widget, top) -> bool:
    """The widget, or the compound widget it is part of (a file chooser's line edit...), has a tooltip."""
    while widget is not None and widget is not top:
        if widget.toolTip():
            return True
        widget = widget.parentWidget()
    return False


def test_every_control_explains_itself(dock):
    body = dock.widget().widget()
    controls = body.findChildren((QAbstractButton, QComboBox, QAbstractSpinBox, QPlainTextEdit, QLineEdit))
    unexplained = [f"{type(w).__name__} '{getattr(w, 'text', lambda: '')()}'" for w in controls
                   if not _explained(w, body) and w.metaObject().className() != "QgsGroupBoxCollapseButton"]
    assert not unexplained, unexplained
    tips = {dock.options_box.threshold_spin.toolTip(), dock.options_box.lambda_spin.toolTip(),
            dock.area_box.resolution_spin.toolTip(), dock.classes_box.background.toolTip()}
    assert all(len(tip) > 60 for tip in tips)
    assert "Global-bias lambda" in dock.options_box.lambda_spin.toolTip()


def test_tab_leaves_the_classes_box_and_a_shortcut_segments(dock, messages):
    assert dock.classes_box.edit.tabChangesFocus()
    assert dock.run_box.shortcut.key().toString() == "Ctrl+Return"
    dock.raster_box.set_layer(None)
    dock.run_box.shortcut.activated.emit()
    assert any("Choose a valid raster layer" in m for m in messages.get_messages(Qgis.Warning))


def test_one_name_for_the_global_bias_lambda():
    """The dock, Processing, the backend's parameter and messages all call it the global-bias lambda."""
    from pathlib import Path

    from tests.helpers import ROOT

    sources = list((ROOT / "segearth_qgis").rglob("*.py")) + list((ROOT / "backend" / "segearth_backend").rglob("*.py"))
    offenders = [str(p.relative_to(ROOT)) for p in sources if "CLS-bias" in p.read_text(encoding="utf-8")]
    assert not offenders
    assert "Global-bias lambda" in Path(ROOT / "segearth_qgis" / "processing" / "segment.py").read_text()


# ------------------------------------------------------------------ one model of background, presets

def test_background_is_one_choice_that_follows_the_classes(dock):
    box = dock.classes_box
    box.edit.setPlainText("background\nroad\nwater")
    assert [box.background.itemText(i) for i in range(box.background.count())] == \
        ["None", "1: background", "2: road", "3: water"]
    box.set_background(2)
    box.edit.setPlainText("background\nroad\nwater\ntree, forest")
    assert box.background_index() == 2 and box.background.count() == 5
    box.edit.setPlainText("road")  # line 3 is gone: no background rather than a wrong one
    assert box.background_index() is None
    box.set_background(None)
    assert box.background_index() is None and box.background.currentText() == "None"


def test_a_long_message_shows_its_start_and_the_whole_behind_show_more(dock, monkeypatch):
    """Found in the walkthrough: bar texts were cut after two lines, some without a "more" button."""
    from qgis.gui import QgsMessageBar

    bar = QgsMessageBar()  # QGIS's own bar (the test interface's only records texts)
    monkeypatch.setattr(dock.iface, "messageBar", lambda: bar)
    text = ("The backend could not start: its log says the weights are missing. " * 3 +
            "Choose them with Weights… in the Backend box.")
    dock.report(text, Qgis.MessageLevel.Critical)
    item = bar.currentItem()
    assert item.text() == "The backend could not start: its log says the weights are missing."
    assert [button.text() for button in item.findChildren(QAbstractButton)].count("Show more") == 1


def test_a_list_typed_from_scratch_gets_its_background_class(dock):
    """Found in the walkthrough: emptying the box and typing "background, ..." left Background at None."""
    box = dock.classes_box
    box.edit.setPlainText("")
    assert box.background_index() is None
    box.edit.setPlainText("water\nBackground, clutter\nroad")  # as pasted or typed, line by line
    assert box.background_index() == 1 and box.background.currentText() == "2: Background, clutter"
    box.background.setCurrentIndex(box.background.findData(-1))
    box.background.activated.emit(box.background.currentIndex())  # the user picks None: that choice stays
    box.edit.setPlainText("")
    box.edit.setPlainText("background\nroad")
    assert box.background_index() is None


def test_a_preset_sets_everything_and_gives_way_to_the_users_classes(dock):
    options = dock.options_box
    options.threshold_spin.setValue(0.05)
    options.lambda_spin.setValue(-0.1)
    dock.classes_box.fill_presets()
    next(a for a in dock.classes_box.presets_menu.actions() if a.text() == "LoveDA").trigger()
    assert options.threshold_spin.value() == 0.3 and dock.classes_box.background_index() == 0
    assert dock.classes_box.preset_label.text() == "Preset: LoveDA"
    dock.classes_box.edit.setPlainText("solar panel\nroof")  # the user's own classes
    assert options.threshold_spin.value() == 0.05 and options.lambda_spin.value() == -0.1
    assert dock.classes_box.preset_label.text() == ""


def test_user_presets_keep_every_setting_and_can_be_renamed_and_deleted(dock, monkeypatch):
    from qgis.PyQt.QtWidgets import QInputDialog, QMessageBox

    dock.classes_box.edit.setPlainText("background\nsolar panel\nroof")
    dock.classes_box.set_background(0)
    dock.options_box.threshold_spin.setValue(0.45)
    dock.options_box.lambda_spin.setValue(-0.2)
    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: ("Solar", True))
    dock.classes_box.save_preset()
    assert user_presets.load_all()["Solar"] == UserPreset("Solar", "background\nsolar panel\nroof", 0.45, 0, -0.2)
    dock.classes_box.edit.setPlainText("x")
    dock.options_box.threshold_spin.setValue(0.0)
    dock.classes_box.fill_presets()
    next(a for a in dock.classes_box.presets_menu.actions() if a.text() == "Solar").trigger()
    assert dock.options_box.threshold_spin.value() == 0.45 and dock.options_box.lambda_spin.value() == -0.2
    assert dock.classes_box.text() == "background\nsolar panel\nroof"
    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: ("Solar parks", True))
    dock.classes_box.rename_preset("Solar")
    assert list(user_presets.load_all()) == ["Solar parks"]
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    dock.classes_box.delete_preset("Solar parks")
    assert user_presets.load_all() == {}


def test_presets_saved_by_the_first_version_still_load():
    settings.USER_PRESETS.save('{"old": "road\\nwater"}')
    try:
        assert user_presets.load_all()["old"] == UserPreset("old", "road\nwater")
    finally:
        settings.USER_PRESETS.reset()


# ------------------------------------------------------------------ drawing and the estimate

def test_the_drawn_rectangle_stays_on_the_map_while_it_is_the_area(dock, qgis_iface, tmp_path):
    layer = load(write_geotiff(tmp_path / "d.tif", smooth_image(100, 100), 32633, UTM), "draw")
    dock.raster_box.set_layer(layer)
    area = dock.area_box
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:32633"))
    pan = QgsMapToolPan(canvas)
    canvas.setMapTool(pan)  # the user's tool before drawing
    area.draw_button.click()
    assert area.draw_button.isChecked() and canvas.mapTool() is area.map_tool
    area.map_tool.extentChanged.emit(QgsRectangle(500010, 5599810, 500100, 5599990))  # the mouse is released
    assert not area.draw_button.isChecked() and canvas.mapTool() is pan  # the user's tool is back
    assert area.aoi().rectangle == QgsRectangle(500010, 5599810, 500100, 5599990)
    area.draw_button.click()
    area.stop_drawing()  # the Draw button pressed again: drawing stops, the tool comes back
    assert not area.draw_button.isChecked() and canvas.mapTool() is pan
    canvas.unsetMapTool(pan)
    assert area.kind() == AoiKind.RECTANGLE and area.rectangle_shown()
    area.set_kind(AoiKind.LAYER)
    assert not area.rectangle_shown()
    area.set_kind(AoiKind.RECTANGLE)
    assert area.rectangle_shown()


def test_the_estimate_follows_the_map_view_and_the_selection(dock, qgis_iface, tmp_path):
    layer = load(write_geotiff(tmp_path / "e.tif", smooth_image(400, 400), 32633, UTM), "estimate")
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(layer.crs())
    canvas.setExtent(QgsRectangle(500000, 5599200, 500800, 5600000))
    dock.raster_box.set_layer(layer)
    dock.area_box.set_kind(AoiKind.MAP_VIEW)
    wait_until(lambda: "px" in dock.area_box.estimate_label.text(), 10)
    before = dock.area_box.estimate_label.text()
    canvas.setExtent(QgsRectangle(500000, 5599800, 500200, 5600000))
    wait_until(lambda: dock.area_box.estimate_label.text() != before, 10)
    view = canvas.extent().intersect(layer.extent())  # the canvas keeps its aspect ratio
    width, height = round(view.width() / 2), round(view.height() / 2)
    assert dock.area_box.estimate_label.text().startswith(f"{width} x {height} px") and width < 400

    polygons = QgsVectorLayer("Polygon?crs=EPSG:32633", "aoi", "memory")
    for x0 in (500000, 500400):
        feature = QgsFeature()
        feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(x0, 5599800, x0 + 100, 5599900)))
        polygons.dataProvider().addFeatures([feature])
    QgsProject.instance().addMapLayer(polygons)
    dock.area_box.polygon_combo.setLayer(polygons)
    dock.area_box.set_kind(AoiKind.SELECTED_FEATURES)
    polygons.selectByIds([1])
    wait_until(lambda: dock.area_box.estimate_label.text().startswith("50 x 50 px"), 10)
    polygons.selectAll()
    wait_until(lambda: dock.area_box.estimate_label.text().startswith("250 x 50 px"), 10)


def test_estimate_before_the_first_run_is_a_sensible_guess(dock, tmp_path):
    """No measurement yet: a per-device prior, not the last tiny job's 326 s/MP."""
    settings.SPEED_HISTORY.reset()
    layer = load(write_geotiff(tmp_path / "p.tif", smooth_image(1000, 1000), 32633, UTM), "prior")
    dock.raster_box.set_layer(layer)
    dock.area_box.set_kind(AoiKind.LAYER)
    dock.update_estimate()
    text = dock.area_box.estimate_label.text()
    assert text.startswith("1000 x 1000 px (1.00 MP)") and "first guess for CPU" in text
    # An estimate, as a range: 20 s/MP prior, the backend's start (8 to 40 s) included while it is not running
    # (the walkthrough's 62 s run, 20 s of it the start, was announced as "about 35 s").
    low, high = re.search(r"estimate (\d+) s to (\d+ min(?: \d+ s)?|\d+ s) \(with the backend's start\)",
                          text).groups()
    assert int(low) == 22 and high != low


# ------------------------------------------------------------------ first run and backend states

def test_first_run_without_weights_says_what_is_missing_within_seconds(dock, messages, tmp_path, monkeypatch):
    import sys

    from segearth_qgis.client.backend_manager import shared_manager
    from tests.plugin.conftest import BACKEND_VARIABLES

    for name in BACKEND_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SEGEARTH_BACKEND_PYTHON", sys.executable)
    monkeypatch.setenv("SEGEARTH_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("SEGEARTH_DEVICE", "cpu")
    shared_manager().stop()
    layer = load(write_geotiff(tmp_path / "f.tif", smooth_image(60, 60), 32633, UTM), "first")
    dock.raster_box.set_layer(layer)
    dock.classes_box.edit.setPlainText("road\nwater")
    from qgis.core import QgsApplication

    logged = []
    log = QgsApplication.messageLog()
    collect = lambda message, tag, level: logged.append(message) if tag == "SegEarth-OV" else None  # noqa: E731
    log.messageReceived.connect(collect)
    start = time.monotonic()
    task = dock.segment()
    assert task is not None
    seen = set()
    try:
        wait_until(lambda: seen.add(dock.backend.status().state) or dock.task is None, 120)
    finally:
        log.messageReceived.disconnect(collect)
    assert time.monotonic() - start < 60
    # The bar shows the first line (the list is behind its "more" button); the log panel has everything.
    bar_text = " ".join(messages.shown(Qgis.Critical))
    assert "These weight files are missing" in bar_text and "\n" not in bar_text
    text = "\n".join(logged)
    assert "xclip_jbu_one_million_aid.ckpt" in text and "open_clip_pytorch_model.bin" in text and "Weights…" in text
    assert dock.backend.status().state == FAILED and "weights missing" in dock.backend.status().summary
    assert dock.backend_box.weights_button.isDefault()
    assert "failed" in dock.backend_box.title() and not dock.backend_box.isCollapsed()
    assert seen & {"starting", "loading model"}


def test_status_follows_a_backend_killed_while_idle(dock, tiny_backend_args, monkeypatch, tmp_path):
    import sys

    from segearth_qgis.client.backend_manager import shared_manager

    monkeypatch.setenv("SEGEARTH_BACKEND_PYTHON", sys.executable)
    monkeypatch.delenv("SEGEARTH_BACKEND_URL", raising=False)
    for flag, value in zip(tiny_backend_args[::2], tiny_backend_args[1::2]):
        monkeypatch.setenv({"--model": "SEGEARTH_MODEL", "--clip-weights": "SEGEARTH_CLIP_WEIGHTS",
                            "--upsampler-weights": "SEGEARTH_UPSAMPLER_WEIGHTS", "--device": "SEGEARTH_DEVICE",
                            "--cache-dir": "SEGEARTH_CACHE_DIR"}[flag], value)
    shared_manager().stop()
    dock._backend_action("start")
    wait_until(lambda: dock.backend.status().state == READY and "ready —" in dock.backend_box.status_label.text(),
               120)
    assert "CPU" in dock.backend_box.status_label.text()
    local = dock.backend.local
    workdir = local.workdir
    os.kill(local.process.pid, signal.SIGKILL)
    wait_until(lambda: "failed" in dock.backend_box.title(), 10)  # the panel notices within seconds
    status = dock.backend.status()
    assert "stopped unexpectedly (killed by signal 9)" in status.summary and str(local.log_path) in status.details
    dock._backend_action("stop")
    wait_until(lambda: dock.backend.status().state == "stopped", 30)
    # A failed backend's log is kept for the user, where such logs go; nothing stays in the temporary folder.
    assert local.log_path.is_file() and local.log_path.parent == Path(os.environ["SEGEARTH_LOG_DIR"])
    assert not workdir.exists()
    shared_manager().stop()


def test_without_any_backend_the_panel_offers_to_set_one_up(qgis_iface, monkeypatch, tmp_path):
    """A user who installed the plugin from the plugin manager and has no backend yet."""
    from segearth_qgis.client.backend_manager import NOT_SET_UP, shared_manager

    monkeypatch.delenv("SEGEARTH_BACKEND_PYTHON", raising=False)
    monkeypatch.delenv("SEGEARTH_BACKEND_URL", raising=False)
    monkeypatch.setattr(settings, "BACKEND_PYTHON_FILE", tmp_path / "none.txt")
    monkeypatch.setattr(settings, "set_up_python", lambda: "")
    shared_manager().stop()
    panel = SegEarthDock(qgis_iface)
    try:
        status = panel.backend.status()
        assert status.state == NOT_SET_UP and "Set up backend" in status.summary
        assert panel.backend_box.title() == "Backend (local): not set up" and not panel.backend_box.isCollapsed()
        assert panel.backend_box.setup_button.isDefault()
        # Found in the walkthrough: at the dock's default width the line was cut where the instruction is
        # ("...: click Set up bac…"). It wraps; the whole of it is on the panel.
        panel.resize(panel.minimumSizeHint().width(), 700)
        panel.show()
        process_events()
        label = panel.backend_box.status_label
        assert label.text() == status.summary and label.height() >= label.heightForWidth(label.width())
        missing = BackendStatus(FAILED, "weights missing: choose them with Weights… (Details… lists them)")
        panel.backend_box.show_status(missing)  # the walkthrough's other cut line
        process_events()
        assert label.text() == missing.summary and label.height() >= label.heightForWidth(label.width())
        panel.hide()
        dialog = panel.open_setup()
        wait_until(lambda: dialog.plan is not None or "Cannot set up" in dialog.plan_label.text(), 60)
        assert dialog.plan is None or "Python" in dialog.plan_label.text()
        dialog.close()
    finally:
        panel.shutdown()


def test_a_finished_set_up_is_what_the_panel_uses_afterwards(dock, tmp_path, monkeypatch):
    """Regression: the panel's empty Python field once overwrote the interpreter the set-up had just recorded."""
    from segearth_qgis.gui.setup_dialog import apply_record

    started = []
    monkeypatch.setattr(dock, "_backend_action", started.append)
    record = {"python": str(tmp_path / "venv" / "bin" / "python")}
    apply_record(record)
    dock._set_up_done(record)
    assert dock.backend_box.python_edit.text() == record["python"] and started == ["restart"]


def test_a_set_up_with_the_weights_for_later_starts_nothing_and_says_when_they_come(dock, messages, tmp_path):
    """Found in the walkthrough: right after "Done" the panel turned red: the backend was started and failed
    on the weights the user had chosen to fetch later."""
    import sys

    from segearth_qgis.client.backend_manager import shared_manager
    from segearth_qgis.gui.setup_dialog import apply_record

    shared_manager().stop()
    record = {"python": sys.executable, "weights": "skip"}
    apply_record(record)
    dock._set_up_done(record)
    process_events(1.0)  # a start would begin now
    assert dock.backend.local is None and dock.backend.status().state == "stopped"
    assert "failed" not in dock.backend_box.title() and "first job" in dock.backend_box.status_label.toolTip()
    assert any("downloaded at the first job" in m for m in messages.get_messages(Qgis.Info))
    assert not messages.get_messages(Qgis.Critical)
    dock.save_state()  # as the next Segment click does
    assert settings.BACKEND_PYTHON.load() == record["python"]


def test_one_set_up_dialog_and_its_plan_follows_every_choice(dock, tmp_path):
    first = dock.open_setup()
    assert dock.open_setup() is first  # a second click shows the same dialog: never two set-ups at once
    first.weights_combo.setCurrentIndex(first.weights_combo.findData("folder"))
    weights = tmp_path / "weights"
    weights.mkdir()
    first.weights_folder.setFilePath(str(weights))
    assert first.plan is None and not first.start_button.isEnabled()  # no start from an outdated plan
    wait_until(lambda: first.plan is not None, 30)
    assert first.plan.weights == str(weights)
    first.close()


def test_backend_controls_are_off_while_a_job_runs(dock):
    box = dock.backend_box
    box.set_job_running(True)
    assert not any(b.isEnabled() for b in (box.stop_button, box.restart_button, box.setup_button, box.weights_button))
    box.set_job_running(False)
    assert all(b.isEnabled() for b in (box.stop_button, box.restart_button, box.setup_button, box.weights_button))


def test_a_layer_already_in_the_project_gets_its_bands(qgis_iface, tmp_path, monkeypatch):
    import sys

    monkeypatch.setenv("SEGEARTH_BACKEND_PYTHON", sys.executable)
    for layer in list(QgsProject.instance().mapLayers().values()):
        QgsProject.instance().removeMapLayer(layer)
    load(write_geotiff(tmp_path / "early.tif", smooth_image(40, 40), 32633, UTM), "early")
    panel = SegEarthDock(qgis_iface)  # the plugin installed or reloaded mid-session
    try:
        assert [c.currentBand() for c in panel.raster_box.band_combos] == [1, 2, 3]
    finally:
        panel.shutdown()


def test_unload_while_the_backend_is_starting_does_not_hang(dock, tmp_path, monkeypatch):
    """Found in review: unloading during a slow start waited for the start (up to its 10-minute timeout)."""
    from segearth_qgis.client.backend_manager import shared_manager

    slow = tmp_path / "slow-python"
    slow.write_text("#!/bin/sh\nsleep 120\n")
    slow.chmod(0o755)
    monkeypatch.setenv("SEGEARTH_BACKEND_PYTHON", str(slow))
    shared_manager().stop()
    dock._backend_action("start")
    wait_until(lambda: dock.backend.status().state == "starting", 30)
    start = time.monotonic()
    dock.shutdown()
    assert time.monotonic() - start < 20
