"""The panel's SAR band mapping: one band, units and dB range, a preview, and a real run on the SAR sample."""

from __future__ import annotations

import numpy as np
import pytest
from qgis.core import QgsProject, QgsRasterLayer

from segearth_qgis import settings
from segearth_qgis.core.sar import AMPLITUDE, DECIBELS, IMAGE, LINEAR, SarSettings, fitted_db_range, sar_to_rgb
from segearth_qgis.gui.dock import SegEarthDock
from tests.plugin.helpers import CLASSES, read_band, wait_until


@pytest.fixture(scope="module")
def dock(qgis_iface, backend_environment, tmp_path_factory):
    settings.save("output_folder", str(tmp_path_factory.mktemp("results")))
    panel = SegEarthDock(qgis_iface)
    panel.confirm = lambda question: False
    yield panel
    panel.shutdown()


@pytest.fixture(scope="module")
def sample_layer(sar_sample):
    layer = QgsRasterLayer(str(sar_sample), "sar sample")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    yield layer
    QgsProject.instance().removeMapLayer(layer.id())


def sar_mode(dock, layer, band=1, units=LINEAR, low=-25.0, high=0.0):
    box = dock.raster_box
    box.set_layer(layer)
    box.mode_combo.setCurrentIndex(1)
    box.band_combos[0].setBand(band)
    sar = box.sar_box
    sar.units_combo.setCurrentIndex(sar.units_combo.findData(units))
    sar.low_spin.setValue(low)
    sar.high_spin.setValue(high)
    return box


def test_sar_mode_shows_one_band_and_a_preview_of_what_the_model_sees(sar_sample, dock, sample_layer):
    box = sar_mode(dock, sample_layer)
    assert box.bands() == (1,) and box.sar_settings() == SarSettings(LINEAR, -25.0, 0.0)
    assert box.form.labelForField(box.band_combos[0]).text() == "SAR band"
    assert all(combo.isHidden() for combo in box.band_combos[1:]) and not box.sar_box.isHidden()
    vv = read_band(sar_sample, 1)
    # The sample is 192 px, within the preview size: the preview is the band itself, converted.
    preview = box.sar_box.preview_grey
    assert preview.shape == vv.shape
    np.testing.assert_array_equal(preview, sar_to_rgb(vv, SarSettings(LINEAR), 0.0)[0][..., 0])
    assert not box.sar_box.preview.pixmap().isNull()
    box.sar_box.high_spin.setValue(-10.0)  # the preview follows the range
    np.testing.assert_array_equal(box.sar_box.preview_grey,
                                  sar_to_rgb(vv, SarSettings(LINEAR, -25.0, -10.0), 0.0)[0][..., 0])


def test_fit_to_layer_and_units(sar_sample, dock, sample_layer):
    box = sar_mode(dock, sample_layer, band=2)
    box.sar_box.fit_button.click()
    low, high = fitted_db_range(read_band(sar_sample, 2), LINEAR, 0.0)
    assert box.sar_settings().low_db == pytest.approx(low, abs=0.05)
    assert box.sar_settings().high_db == pytest.approx(high, abs=0.05)
    for units, enabled in ((AMPLITUDE, True), (DECIBELS, True), (IMAGE, False)):
        box.sar_box.units_combo.setCurrentIndex(box.sar_box.units_combo.findData(units))
        assert box.sar_box.low_spin.isEnabled() == enabled and box.sar_settings().units == units
    # A float band is not an 8-bit image: the preview says what to do instead of failing.
    assert "not an 8/16-bit grey image" in box.sar_box.preview.text()
    box.mode_combo.setCurrentIndex(0)
    assert box.sar_settings() is None and len(box.bands()) == 3


def test_segment_the_sar_sample_from_the_panel(sar_sample, dock, sample_layer, tmp_path, tiny_segmenter):
    sar_mode(dock, sample_layer, band=1, low=-24.0, high=-2.0)
    dock.classes_box.edit.setPlainText(CLASSES)
    dock.options_box.threshold_spin.setValue(0.0)
    dock.options_box.lambda_spin.setValue(-0.3)
    dock.options_box.probabilities_check.setChecked(False)
    output = tmp_path / "sar_labels.tif"
    dock.options_box.output_widget.setFilePath(str(output))
    dock.area_box.kind_combo.setCurrentIndex(dock.area_box.kind_combo.findData("layer"))
    task = dock.segment()
    assert task is not None
    wait_until(lambda: dock.task is None, 240)
    assert task.result is not None, task.error
    labels = read_band(output)
    vv = read_band(sar_sample, 1)
    rgb, valid = sar_to_rgb(vv, SarSettings(LINEAR, -24.0, -2.0), 0.0)
    expected = tiny_segmenter.predict(rgb, CLASSES.splitlines(), prob_threshold=0.0, valid=valid).labels
    np.testing.assert_array_equal(labels, expected)
    assert (labels[vv == 0] == 255).all()
    dock.raster_box.mode_combo.setCurrentIndex(0)


def test_sar_starter_preset_has_no_background_class(dock):
    from segearth_qgis.core.classes import PRESETS
    from segearth_qgis.gui.user_presets import UserPreset

    starter = next(p for p in PRESETS if p.key == "sar_starter")
    dock.classes_box.set_background(0)
    dock.classes_box.apply(UserPreset.from_preset(starter))
    assert dock.classes_box.background_index() is None  # water is a class, not the transparent background
    assert dock.classes_box.text().splitlines()[0] == "water"
    dock.classes_box.fill_presets()
    action = next(a for a in dock.classes_box.presets_menu.actions() if a.text() == starter.name)
    assert action.toolTip() == "threshold 0, no background class"
