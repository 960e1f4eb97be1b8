"""The change job between two dates with a real backend process, on real GeoTIFFs read back with GDAL."""

from __future__ import annotations

import numpy as np
import pytest

from segearth_qgis.client.backend_client import BackendClient, BackendError
from segearth_qgis.core.blocks import context_span
from segearth_qgis.core.change import FIRST_TRANSITION, NO_CHANGE, NODATA_CHANGE, UNCERTAIN, ChangeRule
from segearth_qgis.errors import InputError, JobCancelledError
from tests.plugin.helpers import (
    PAIR_SIZE,
    PASTED,
    PASTED_FROM,
    UTM,
    CountingClient,
    FlakyProxy,
    read_band,
    run_pair_job,
    run_scene_job,
    smooth_image,
    write_geotiff,
    write_pasted_pair,
)

#: The pasted region (rows and columns) of the after date, and where it was copied from.
REGION, SOURCE, SIZE = PASTED, PASTED_FROM, PAIR_SIZE


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Before: 336 x 336 px of blocky 'land cover'; after: the same with a 64 x 64 region pasted from elsewhere."""
    before, after, _ = write_pasted_pair(tmp_path_factory.mktemp("pair"))
    return before, after


@pytest.fixture(scope="module")
def pasted(change_backend, pair, tmp_path_factory):
    """The change job on the pasted pair, with both dates' segmentations."""
    folder = tmp_path_factory.mktemp("pasted")
    seen: list[float] = []
    result = run_pair_job(change_backend.client(), *pair, folder / "change.tif", before_output=folder / "before.tif",
                          after_output=folder / "after.tif", report=folder / "report.html", progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(100.0)
    assert sorted(p.name for p in folder.iterdir()) == ["after.tif", "after.tif.aux.xml", "before.tif",
                                                         "before.tif.aux.xml", "change.tif", "change.tif.aux.xml",
                                                         "report.html"]
    return result, read_band(folder / "change.tif"), read_band(folder / "before.tif"), read_band(folder / "after.tif")


def test_identical_dates_give_exactly_no_change(change_backend, pair, pasted, tmp_path):
    before, _ = pair  # (after the pasted pair's run: its before date's windows come from the backend's cache)
    result = run_pair_job(change_backend.client(), before, before, tmp_path / "change.tif", rule=ChangeRule(0.0, 0.0))
    codes = read_band(tmp_path / "change.tif")
    assert codes.shape == (SIZE, SIZE) and (codes == NO_CHANGE).all()
    assert result.tally.changed.sum() == 0 and result.tally.uncertain.sum() == 0
    assert result.summary == "No change found."


def test_a_pasted_region_is_change_inside_and_nothing_beyond_one_windows_reach(pasted):
    result, codes, before, after = pasted
    inside = np.zeros(codes.shape, bool)
    inside[REGION[0]:REGION[1], REGION[0]:REGION[1]] = True
    reach = np.zeros(codes.shape, bool)
    start, stop = context_span(*REGION, SIZE)  # every pixel a window covering the region reads
    reach[start:stop, start:stop] = True
    changed = codes >= FIRST_TRANSITION
    assert changed[inside].sum() > 0.05 * inside.sum()
    assert (codes[~reach] == NO_CHANGE).all() and (before[~reach] == after[~reach]).all()
    # Every change names the two dates' own labels.
    from_class, to_class = divmod(codes[changed].astype(int) - FIRST_TRANSITION, len(result.names))
    np.testing.assert_array_equal(from_class, before[changed])
    np.testing.assert_array_equal(to_class, after[changed])
    assert ((before != after) == (codes != NO_CHANGE)).all()  # the rest of the differences are uncertain


def test_the_dates_are_the_single_date_segmentations(change_backend, pair, pasted, tmp_path):
    _, _, before, after = pasted
    for path, labels in zip(pair, (before, after)):
        run_scene_job(change_backend.client(), path, tmp_path / f"single_{path.name}")
        np.testing.assert_array_equal(read_band(tmp_path / f"single_{path.name}"), labels)


def test_the_matrix_totals_are_each_dates_class_areas(pasted, pair):
    result, codes, before, after = pasted
    tally, pixel = result.tally, 2.0 * 2.0  # m²
    for k in range(len(result.names)):
        assert tally.before_totals[k] == pytest.approx((before == k).sum() * pixel)
        assert tally.after_totals[k] == pytest.approx((after == k).sum() * pixel)
    assert tally.changed.sum() == pytest.approx((codes >= FIRST_TRANSITION).sum() * pixel)
    assert tally.uncertain.sum() == pytest.approx((codes == UNCERTAIN).sum() * pixel)
    report = result.report_path.read_text(encoding="utf-8")
    first = result.tally.present_codes()[0]
    before_class, after_class = divmod(first - FIRST_TRANSITION, len(result.names))
    assert f"{result.names[before_class]} → {result.names[after_class]}" in report and "Transition matrix" in report
    assert result.summary.startswith(f"{(codes == first).sum() * pixel:.0f} m² ")


def _patches(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected patches of ``mask``, numbered from 1 (a plain flood fill)."""
    labels = np.zeros(mask.shape, np.int64)
    count = 0
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        count += 1
        stack = [start]
        labels[start] = count
        while stack:
            y, x = stack.pop()
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = count
                    stack.append((ny, nx))
    return labels, count


def test_small_change_patches_become_uncertain(change_backend, pair, pasted, tmp_path):
    _, codes, _, _ = pasted
    changed = codes >= FIRST_TRANSITION
    patches, count = _patches(changed)
    sizes = np.bincount(patches.ravel())
    minimum = int(np.median(sizes[1:])) + 1
    assert 0 < (sizes[1:] < minimum).sum() < count  # some patches go, some stay
    result = run_pair_job(change_backend.client(), *pair, tmp_path / "sieved.tif", min_pixels=minimum)
    sieved = read_band(tmp_path / "sieved.tif")
    small = changed & (sizes[patches] < minimum)
    assert (sieved[small] == UNCERTAIN).all() and result.sieved_pixels == small.sum()
    np.testing.assert_array_equal(sieved[~small], codes[~small])
    assert result.tally.changed.sum() == pytest.approx((sieved >= FIRST_TRANSITION).sum() * 4.0)
    assert result.tally.uncertain.sum() == pytest.approx((sieved == UNCERTAIN).sum() * 4.0)


def test_nodata_of_either_date_is_nodata_and_moves_no_change(change_backend, tmp_path):
    image = smooth_image(SIZE, SIZE, seed=5)  # the pair's before date: windows away from the strips are cached
    image[image == 0] = 1
    before, after = image.copy(), image.copy()
    before[:, :, :20] = 0  # nodata strips in different places
    after[:, 200:230, :] = 0
    before_path = write_geotiff(tmp_path / "b.tif", before, 32633, UTM, nodata=0)
    after_path = write_geotiff(tmp_path / "a.tif", after, 32633, UTM, nodata=0)
    result = run_pair_job(change_backend.client(), before_path, after_path, tmp_path / "change.tif", nodata=0,
                          after_nodata=0, rule=ChangeRule(0.0, 0.0))
    codes = read_band(tmp_path / "change.tif")
    nodata = np.zeros(codes.shape, bool)
    nodata[:, :20] = nodata[200:230, :] = True
    np.testing.assert_array_equal(codes == NODATA_CHANGE, nodata)
    assert (codes[~nodata] == NO_CHANGE).all()  # both dates got the same mask: identical pixels, no change
    assert result.tally.nodata_pixels == nodata.sum()


def test_a_date_without_data_is_a_clear_error_and_writes_nothing(change_backend, pair, tmp_path):
    empty = write_geotiff(tmp_path / "empty.tif", np.zeros((3, SIZE, SIZE), np.uint8), 32633, UTM, nodata=0)
    client = CountingClient(change_backend.client())
    with pytest.raises(InputError, match="after raster has no data over the area"):
        run_pair_job(client, pair[0], empty, tmp_path / "change.tif", after_nodata=0)
    assert client.segmented == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["empty.tif"]


@pytest.fixture(scope="module")
def wide_pair(pair, tmp_path_factory):
    """448 x 336 px (two blocks at block size 336), the pasted region across the blocks' edge."""
    folder = tmp_path_factory.mktemp("wide")
    image = smooth_image(448, 336, seed=9)
    after = image.copy()
    after[:, 200:260, 190:250] = image[:, 380:440, 20:80]
    return (write_geotiff(folder / "before.tif", image, 32633, UTM),
            write_geotiff(folder / "after.tif", after, 32633, UTM))


def test_blocks_in_flight_and_retries_give_the_single_block_result(change_backend, wide_pair, tmp_path):
    whole = run_pair_job(change_backend.client(), *wide_pair, tmp_path / "whole.tif", block_size=1024)
    assert whole.blocks == 1
    proxy = FlakyProxy(change_backend.url, [None, ("status", 503, "replica_lost", None)])
    lines: list[str] = []
    try:
        client = CountingClient(BackendClient(proxy.url, change_backend.token))
        result = run_pair_job(client, *wide_pair, tmp_path / "blocks.tif", concurrency=3, log=lines.append)
    finally:
        proxy.close()
    assert result.blocks == 2 and client.most_in_flight == 3 and proxy.segments == 5  # 2 blocks x 2 dates + 1 retry
    assert len(lines) == 1 and "503 replica_lost" in lines[0] and "(retry 1 of 3)" in lines[0]
    np.testing.assert_array_equal(read_band(tmp_path / "blocks.tif"), read_band(tmp_path / "whole.tif"))
    np.testing.assert_array_equal(result.tally.crosstab, whole.tally.crosstab)


def test_cancel_and_refusals_leave_nothing(change_backend, wide_pair, tmp_path):
    client = CountingClient(change_backend.client())
    with pytest.raises(JobCancelledError):
        run_pair_job(client, *wide_pair, tmp_path / "c.tif", progress=lambda value: None,
                     cancelled=lambda: client.segmented >= 2)
    assert client.segmented <= 3
    proxy = FlakyProxy(change_backend.url, [("status", 422, "bad_parameter", None)])
    try:
        with pytest.raises(BackendError) as caught:
            run_pair_job(BackendClient(proxy.url, change_backend.token), *wide_pair, tmp_path / "c.tif")
    finally:
        proxy.close()
    assert caught.value.status == 422 and proxy.segments == 1
    assert list(tmp_path.iterdir()) == []
