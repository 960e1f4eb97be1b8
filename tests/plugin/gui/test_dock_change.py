"""The dock's "Compare with…" end to end: real QGIS, real backend process, the change GeoTIFF read back with GDAL and
compared with what ``segearth:change`` writes for the same pair."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from qgis.core import Qgis, QgsApplication, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QCoreApplication, Qt

from segearth_qgis import settings
from segearth_qgis.core.change import FIRST_TRANSITION, NO_CHANGE, UNCERTAIN
from segearth_qgis.gui.dock import SegEarthDock
from segearth_qgis.gui.task import ChangeTask
from tests.plugin.helpers import CLASS_NAMES as NAMES
from tests.plugin.helpers import (
    CLASSES,
    PAIR_SIZE,
    PASTED,
    UTM,
    read_band,
    smooth_image,
    wait_until,
    write_geotiff,
    write_pasted_pair,
)

SIZE, REGION = PAIR_SIZE, PASTED


@pytest.fixture(scope="module")
def dock(qgis_iface, qgis_processing, backend_environment, tmp_path_factory):
    from segearth_qgis.processing.provider import SegEarthProvider

    settings.save("block_size", 1024)
    settings.save("output_folder", str(tmp_path_factory.mktemp("results")))
    provider = SegEarthProvider()  # segearth:change, to compare the dock's result with
    QgsApplication.processingRegistry().addProvider(provider)
    panel = SegEarthDock(qgis_iface)
    panel.confirm = lambda question: False
    yield panel
    panel.shutdown()
    QgsApplication.processingRegistry().removeProvider(provider)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Before, and after = before with a square pasted from elsewhere of the same image."""
    before, after, _ = write_pasted_pair(tmp_path_factory.mktemp("pair"))
    return before, after


def load(path, name):
    layer = QgsRasterLayer(str(path), name)
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    return layer


def prepare(dock, before, after, output=None):
    """Fill the panel as a user would: the layer, "Compare with…", the classes, the output."""
    dock.raster_box.set_layer(before)
    dock.raster_box.set_compare_layer(after)
    dock.classes_box.edit.setPlainText(CLASSES)
    dock.classes_box.set_background(0)
    dock.options_box.threshold_spin.setValue(0.0)
    dock.options_box.lambda_spin.setValue(-0.3)
    dock.options_box.output_widget.setFilePath(str(output) if output else "")
    dock.area_box.kind_combo.setCurrentIndex(dock.area_box.kind_combo.findData("layer"))


def detect(dock, before, after, output=None):
    """Fill the panel, click the main button, wait for the job to end."""
    prepare(dock, before, after, output)
    task = dock.segment()
    if task is not None:
        wait_until(lambda: dock.task is None)
    return task


def test_compare_with_turns_segment_into_detect_change(dock, pair):
    before, after = load(pair[0], "before"), load(pair[1], "after")
    dock.raster_box.set_layer(before)
    dock.raster_box.set_compare_layer(None)
    assert dock.run_box.segment_button.text() == "Segment" and not dock.comparing()
    dock.update_estimate()
    single = dock.area_box.estimate_label.text()
    dock.raster_box.set_compare_layer(after)  # one choice
    assert dock.run_box.segment_button.text() == "Detect change" and dock.comparing()
    dock.update_estimate()  # both dates are segmented: twice the work
    assert "(0.11 MP x 2 dates)" in dock.area_box.estimate_label.text() and "x 2 dates" not in single
    dock.raster_box.set_compare_layer(None)
    assert dock.run_box.segment_button.text() == "Segment"


def test_detect_change_loads_the_styled_change_equal_to_processing(dock, pair, tmp_path, messages):
    import processing

    before, after = load(pair[0], "before"), load(pair[1], "after")
    task = detect(dock, before, after, tmp_path / "change.tif")
    assert isinstance(task, ChangeTask) and task.result is not None, task.error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["change.qml", "change.tif", "change.tif.aux.xml"]
    codes = read_band(tmp_path / "change.tif")
    (tmp_path / "reference").mkdir()
    reference = processing.run("segearth:change", {"BEFORE": str(pair[0]), "AFTER": str(pair[1]), "CLASSES": CLASSES,
                                                   "THRESHOLD": 0.0, "OUTPUT": str(tmp_path / "reference" / "c.tif")})
    assert np.array_equal(codes, read_band(reference["OUTPUT"]))  # one engine, one set of defaults
    changed = codes >= FIRST_TRANSITION
    assert changed.any()
    layer = next(node.layer() for node in QgsProject.instance().layerTreeRoot().findGroup("SegEarth-OV").findLayers()
                 if node.layer().id() == dock.runner.result_layer_ids[0])
    assert layer.name().startswith("before → after") and layer.name().endswith("— change")
    labels = {entry.value: entry.label for entry in layer.renderer().classes()}
    assert labels[NO_CHANGE] == "no change" and labels[UNCERTAIN] == "uncertain"
    for code in np.unique(codes[changed]):
        was, now = divmod(int(code) - FIRST_TRANSITION, len(NAMES))
        assert labels[int(code)] == f"{NAMES[was]} → {NAMES[now]}"
    summary = task.result.summary
    assert "→" in summary and summary == reference["SUMMARY"]
    assert dock.run_box.progress_label.toolTip().endswith(f" — {summary}")
    success = " ".join(messages.get_messages(Qgis.Success))
    # the bar shows what fits on one line (the largest change first), the whole text behind "Show more"
    assert "Compared 0.11 MP of two dates in" in success and summary.split("; ")[0] in success


def test_identical_dates_detect_exactly_no_change(dock, pair, tmp_path, messages):
    before, same = load(pair[0], "before"), load(pair[0], "same")
    task = detect(dock, before, same, tmp_path / "none.tif")
    assert task is not None and task.result is not None, task.error
    assert (read_band(tmp_path / "none.tif") == NO_CHANGE).all()
    assert task.result.summary == "No change found."
    assert dock.run_box.progress_label.toolTip().endswith("No change found.")


def test_bad_inputs_are_messages_and_write_nothing(dock, pair, tmp_path, messages):
    before = load(pair[0], "before")
    far = load(write_geotiff(tmp_path / "far.tif", smooth_image(40, 40), 32633,
                             (700000.0, 2.0, 0.0, 5000000.0, 0.0, -2.0)), "far")
    assert detect(dock, before, far, tmp_path / "c.tif") is None  # refused before any work
    assert any("does not overlap" in m for m in messages.get_messages(Qgis.Warning))
    empty = load(write_geotiff(tmp_path / "empty.tif", np.zeros((3, SIZE, SIZE), np.uint8), 32633, UTM, nodata=0),
                 "empty")
    task = detect(dock, before, empty, tmp_path / "c.tif")
    assert task is not None and task.result is None and "after raster has no data over the area" in task.error
    assert any("Change detection failed" in m for m in messages.get_messages(Qgis.Critical))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.tif", "far.tif"]
    assert dock.run_box.segment_button.isEnabled() and not dock.run_box.cancel_button.isEnabled()


def interrupt_a_change(dock, tmp_path, name, interrupt):
    """Start a many-block change job and call ``interrupt()`` on the job's thread right after its first answer."""
    image = smooth_image(900, 900, seed=8)
    before = load(write_geotiff(tmp_path / f"{name}_before.tif", image, 32633, UTM), f"{name} before")
    after = load(write_geotiff(tmp_path / f"{name}_after.tif", image[:, ::-1].copy(), 32633, UTM), f"{name} after")
    settings.save("block_size", 336)
    fired = []

    def once(progress):
        if progress > 0 and not fired:
            fired.append(progress)
            interrupt()

    try:
        prepare(dock, before, after, tmp_path / f"{name}_out.tif")
        task = dock.segment()
        assert isinstance(task, ChangeTask)
        task.progressChanged.connect(once, Qt.DirectConnection)
        wait_until(lambda: dock.task is None)
    finally:
        settings.save("block_size", 1024)
    assert fired and fired[0] < 100, "the job ended before its first block was reported"
    return task


def test_cancel_mid_change_keeps_nothing(dock, tmp_path, messages):
    task = interrupt_a_change(dock, tmp_path, "cancel", dock.cancel)
    assert task.was_cancelled and task.result is None
    assert sorted(os.listdir(tmp_path)) == ["cancel_after.tif", "cancel_before.tif"]
    assert any("Change detection cancelled" in m for m in messages.get_messages(Qgis.Info))
    assert dock.run_box.progress_label.toolTip() == "cancelled"


def test_backend_killed_mid_change_is_an_error_and_keeps_nothing(dock, tmp_path, messages):
    task = interrupt_a_change(dock, tmp_path, "kill", lambda: os.kill(dock.backend.local.process.pid, signal.SIGKILL))
    assert task.result is None and "local backend process stopped while working" in task.error
    assert any("Change detection failed" in m for m in messages.get_messages(Qgis.Critical))
    assert sorted(os.listdir(tmp_path)) == ["kill_after.tif", "kill_before.tif"]
    dock._backend_action("restart")
    wait_until(lambda: "ready" in dock.backend_box.status_label.text())


def test_the_panel_with_compare_with_fits_a_small_screen(dock, pair):
    """On 1366 x 768 a dock gets about 600 px: with "Compare with…" the main button still shows."""
    dock.raster_box.set_layer(load(pair[0], "before"))
    dock.raster_box.set_compare_layer(load(pair[1], "after"))
    dock.resize(360, 600)
    dock.show()
    QCoreApplication.processEvents()
    scroll = dock.widget()
    assert scroll.minimumWidth() <= 0.4 * 1366  # the map keeps most of a 1366 px wide screen
    scroll.ensureWidgetVisible(dock.run_box.segment_button)
    QCoreApplication.processEvents()
    button = dock.run_box.segment_button
    top_left = button.mapTo(scroll.viewport(), button.rect().topLeft())
    assert top_left.y() >= 0 and top_left.y() + button.height() <= scroll.viewport().height()
    assert button.text() == "Detect change"
    dock.hide()
