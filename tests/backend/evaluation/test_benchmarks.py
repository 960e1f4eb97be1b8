"""The benchmark class sets: the authors' configs as data, one source for the backend and the plugin."""

import pytest

from segearth_backend.errors import DatasetError
from segearth_backend.evaluation.benchmarks import find_benchmark, load_benchmarks
from segearth_backend.pipeline.classes import parse_classes

#: (key, threshold, background index, lambda) from the authors' configs/cfg_*.py.
CONFIG_FACTS = [
    ("openearthmap", 0.1, 0, -0.3), ("loveda", 0.3, 0, -0.3), ("isaid", 0.4, 0, -0.3), ("potsdam", 0.1, 5, -0.3),
    ("vaihingen", 0.1, 5, -0.3), ("uavid", 0.3, 0, -0.3), ("udd5", 0.4, 4, -0.3), ("vdd", 0.3, 0, -0.3),
    ("whu_aerial", 0.6, 0, -0.3), ("whu_sat_ii", 0.7, 0, -0.3), ("inria", 0.6, 0, -0.3), ("xbd", 0.0, 0, 0.0),
    ("chn6_cug", 0.8, 0, -0.3), ("deepglobe", 0.7, 0, -0.3), ("massachusetts", 0.7, 0, -0.3),
    ("spacenet", 0.7, 0, -0.3), ("wbs_si", 0.6, 0, -0.3),
]


#: (key, threshold, background index, resize side, whole-image pass) from SegEarth-OV-2's configs/cfg_*_sar.py.
SAR_CONFIG_FACTS = [
    ("openearthmap_sar", 0.0, 0, 448, False), ("fusar", 0.0, 0, 448, False), ("pie_sar", 0.0, 0, 224, True),
    ("whu_sar", 0.0, 6, 224, True), ("yeseg_sar", 0.3, 0, 224, True), ("ddhrnet_korea_sar", 0.0, 0, 224, True),
    ("ddhrnet_shandong_sar", 0.0, 0, 224, True), ("ddhrnet_xian_sar", 0.0, 0, 224, True),
]


def test_seventeen_benchmarks_then_the_sar_ones_then_generic_sets():
    presets = load_benchmarks()
    assert [p.key for p in presets if p.dataset is not None] == (
        [key for key, *_ in CONFIG_FACTS] + [key for key, *_ in SAR_CONFIG_FACTS])
    assert [p.name for p in presets if p.dataset is None] == [
        "HRSID ships (SAR)", "Buildings", "Roads", "Water", "SAR land and water"]
    assert len({p.key for p in presets}) == len({p.name for p in presets}) == len(presets) == 30


@pytest.mark.parametrize("key, threshold, background, scale, whole", SAR_CONFIG_FACTS)
def test_sar_settings_follow_the_configs(key, threshold, background, scale, whole):
    preset = find_benchmark(key)
    assert (preset.prob_threshold, preset.background_index, preset.bias_lambda) == (threshold, background, -0.3)
    assert (preset.dataset.scale, not preset.dataset.slide) == (scale, whole)
    assert (preset.imagery, preset.model) == ("sar", "alignearth-sar-vit-b16")
    assert parse_classes(list(preset.classes)).num_classes == len(preset.dataset.class_names)
    assert preset.config.startswith("cfg_") and preset.config.endswith(".py")
    assert all(p.dataset.scale == 448 and p.dataset.slide for p in load_benchmarks()
               if p.dataset is not None and p.imagery == "optical")


def test_sar_class_lists_and_layouts():
    assert find_benchmark("whu_sar").classes[6] == "others" and find_benchmark("whu_sar").dataset.reduce_zero_label
    assert find_benchmark("fusar").classes == ("others", "water", "road", "building", "grass")
    assert find_benchmark("fusar").dataset.class_names[0] == "background"
    assert find_benchmark("yeseg_sar").classes[2] == "dense tree cover"
    assert find_benchmark("ddhrnet_korea_sar").dataset.img_suffix == ".jpg"
    hrsid = next(p for p in load_benchmarks() if p.key == "hrsid")
    assert (hrsid.prob_threshold, hrsid.model, hrsid.dataset) == (0.6, "clip-vit-b16", None)
    starter = next(p for p in load_benchmarks() if p.key == "sar_starter")
    assert starter.classes[:2] == ("water", "flooded area,flood water") and starter.prob_threshold == 0.0
    assert starter.background_index == -1  # no background class: water is a class, not transparent background


def test_inria_xbd_chn6_follow_the_authors_class_files():
    """cls_inria.txt is background / building (no synonyms); the three files exist in the authors' repository."""
    assert find_benchmark("inria").classes == ("background", "building")
    assert find_benchmark("xbd").classes == ("background", "building")
    assert find_benchmark("chn6_cug").classes == ("background", "road")
    for key in ("inria", "xbd", "chn6_cug"):
        assert "missing" not in (find_benchmark(key).note or "")


@pytest.mark.parametrize("key, threshold, background, lam", CONFIG_FACTS)
def test_settings_follow_the_configs(key, threshold, background, lam):
    preset = find_benchmark(key)
    assert (preset.prob_threshold, preset.background_index, preset.bias_lambda) == (threshold, background, lam)
    classes = parse_classes(list(preset.classes))
    assert classes.num_classes == len(preset.dataset.class_names)  # one class line per dataset label
    assert 0 <= preset.background_index < classes.num_classes
    assert preset.config.startswith("cfg_") and preset.class_file.startswith("cls_")


def test_class_lists_and_layouts_of_some_sets():
    assert find_benchmark("OpenEarthMap").classes[-1] == "building,roof,house"
    potsdam = find_benchmark("potsdam")
    assert potsdam.classes[5] == "clutter,background" and potsdam.dataset.reduce_zero_label
    assert find_benchmark("isaid").dataset.seg_map_suffix == "_instance_color_RGB.png"
    assert find_benchmark("udd5").dataset.img_suffix == ".JPG" and find_benchmark("loveda").dataset.reduce_zero_label
    assert find_benchmark("wbs_si").dataset.ann_file == "wbs-si_val.txt"
    assert find_benchmark("wbs_si").dataset.ann_file_sha256.startswith("5d21c6c0")
    assert not find_benchmark("openearthmap").dataset.reduce_zero_label


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(DatasetError, match="Known datasets: openearthmap, loveda"):
        find_benchmark("cityscapes")
