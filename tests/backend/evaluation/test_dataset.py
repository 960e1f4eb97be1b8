"""Miniature datasets in each layout of the benchmarks: listing order, pairing, reading, label rules."""

import numpy as np
import pytest

from segearth_backend.errors import DatasetError
from segearth_backend.evaluation.benchmarks import find_benchmark
from segearth_backend.evaluation.dataset import list_samples, read_image, read_label
from tests.backend.helpers import blocky_label, write_sample

#: One benchmark per distinct layout (suffixes, folders, zero-label rule, split file).
LAYOUTS = ["openearthmap", "loveda", "isaid", "udd5", "chn6_cug", "whu_sat_ii", "wbs_si"]


@pytest.mark.parametrize("key", LAYOUTS)
def test_listing_pairs_and_reading(key, tmp_path, rng):
    layout = find_benchmark(key).dataset
    stems = ["b_2", "a_10", "sub/c"] if layout.ann_file is None else ["water_body_9", "water_body_10"]
    written = {}
    for stem in stems:
        image = np.stack([blocky_label(rng, 40, 56, 256) for _ in range(3)], axis=-1)  # smooth: JPEG keeps it
        label = blocky_label(rng, 40, 56, len(layout.class_names) + int(layout.reduce_zero_label))
        write_sample(tmp_path, layout, stem, image, label)
        written[stem] = (image, label)
    if layout.ann_file is not None:
        (tmp_path / layout.ann_file).write_text("water_body_10\nwater_body_9\n\n")
        write_sample(tmp_path, layout, "water_body_11", written[stems[0]][0], written[stems[0]][1])  # not listed
    samples = list_samples(tmp_path, layout, tmp_path / layout.ann_file if layout.ann_file else None)
    expected = ["water_body_10", "water_body_9"] if layout.ann_file else sorted(stems)
    assert [str(s.image.relative_to(tmp_path / layout.img_dir))[:-len(layout.img_suffix)] for s in samples] == expected
    for sample, stem in zip(samples, expected):
        assert sample.label == tmp_path / layout.ann_dir / (stem + layout.seg_map_suffix)
        image, label = written[stem]
        read = read_image(sample.image)
        if layout.img_suffix.lower().endswith(".jpg"):
            assert np.abs(read.astype(int) - image.astype(int)).mean() < 8  # lossy
        else:
            np.testing.assert_array_equal(read, image)
        values = read_label(sample.label, layout)
        if layout.seg_map_suffix.endswith(".jpg"):
            continue  # JPEG labels are read as decoded (WBS-SI's masks are JPEG)
        if layout.reduce_zero_label:
            np.testing.assert_array_equal(values, np.where(label == 0, 255, label.astype(int) - 1))
        else:
            np.testing.assert_array_equal(values, label)


def test_suffix_match_is_case_sensitive_and_hidden_files_skipped(tmp_path, rng):
    layout = find_benchmark("udd5").dataset  # .JPG images, .png labels
    image, label = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8), np.zeros((20, 20), np.uint8)
    write_sample(tmp_path, layout, "DJI_0001", image, label)
    (tmp_path / layout.img_dir / "lower.jpg").write_bytes((tmp_path / layout.img_dir / "DJI_0001.JPG").read_bytes())
    (tmp_path / layout.img_dir / ".hidden.JPG").write_bytes(b"x")
    assert [s.image.name for s in list_samples(tmp_path, layout)] == ["DJI_0001.JPG"]


def test_layout_problems_say_what_to_do(tmp_path, rng):
    layout = find_benchmark("loveda").dataset
    with pytest.raises(DatasetError, match="--root should be the folder the authors' config calls data/LoveDA"):
        list_samples(tmp_path, layout)
    write_sample(tmp_path, layout, "1", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), np.zeros((8, 8), np.uint8))
    (tmp_path / layout.ann_dir / "1.png").unlink()
    with pytest.raises(DatasetError, match="every image needs its label"):
        list_samples(tmp_path, layout)
    wbs = find_benchmark("wbs_si").dataset
    (tmp_path / wbs.img_dir).mkdir(parents=True)
    (tmp_path / wbs.ann_dir).mkdir(parents=True)
    with pytest.raises(DatasetError, match="wbs-si_val.txt"):
        list_samples(tmp_path, wbs)


def test_a_split_file_other_than_the_authors_is_refused(tmp_path, rng):
    """The WBS-SI split must be the authors' 499-image list (its SHA-256 is recorded), not any list."""
    wbs = find_benchmark("wbs_si").dataset
    write_sample(tmp_path, wbs, "water_body_1", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
                 np.zeros((8, 8), np.uint8))
    (tmp_path / "wbs-si_val.txt").write_text("water_body_1\n")
    with pytest.raises(DatasetError, match="is not the authors' wbs-si_val.txt"):
        list_samples(tmp_path, wbs)
    # Given explicitly (--ann-file), another split is the user's choice.
    assert len(list_samples(tmp_path, wbs, tmp_path / "wbs-si_val.txt")) == 1
    # Layouts without a recorded checksum take any split file.
    fusar = find_benchmark("fusar").dataset
    write_sample(tmp_path / "fusar", fusar, "t1", rng.integers(0, 256, (8, 8), dtype=np.uint8),
                 np.zeros((8, 8), np.uint8))
    (tmp_path / "fusar" / "test.txt").write_text("t1\n")
    assert [s.image.name for s in list_samples(tmp_path / "fusar", fusar)] == ["t1.tif"]


def test_unsupported_pixels_are_clear_errors(tmp_path):
    from PIL import Image

    deep = tmp_path / "deep.png"
    Image.fromarray(np.zeros((4, 4), np.uint16) + 1000).save(deep)
    with pytest.raises(DatasetError, match="only 8-bit images"):
        read_image(deep)
    colour = tmp_path / "colour.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(colour)
    with pytest.raises(DatasetError, match="3 channels"):
        read_label(colour, find_benchmark("openearthmap").dataset)
    grey = tmp_path / "grey.png"
    Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4)).save(grey)
    assert read_image(grey).shape == (4, 4, 3) and (read_image(grey)[..., 0] == read_image(grey)[..., 2]).all()
