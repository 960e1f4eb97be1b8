"""The job engine (job.run_job) with a real backend process: what reaches the engine, what reaches the disk."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from segearth_qgis.client.backend_client import BackendError
from segearth_qgis.errors import OutputError
from segearth_qgis.job.engine import JobCancelledError
from tests.plugin.helpers import LINES, UTM, CountingClient, read_band, run_scene_job, smooth_image, write_geotiff


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 700 x 650 scene: several blocks at block size 336."""
    folder = tmp_path_factory.mktemp("scene")
    image = smooth_image(700, 650, seed=21)
    return write_geotiff(folder / "scene.tif", image, 32633, UTM), image


def run(local_backend, scene_path, output, **options):
    client = options.pop("client", None) or CountingClient(local_backend.client())
    return run_scene_job(client, scene_path, output, **options), client


def test_threshold_and_background_index_are_sent(local_backend, scene, tmp_path, tiny_segmenter):
    path, image = scene
    result, _ = run(local_backend, path, tmp_path / "out.tif", threshold=0.4, background_index=3, block_size=4096)
    rgb = np.ascontiguousarray(image.transpose(1, 2, 0))
    expected = tiny_segmenter.predict(rgb, list(LINES), prob_threshold=0.4, background_index=3).labels
    np.testing.assert_array_equal(read_band(result.output_path), expected)
    assert (expected == 3).mean() > (tiny_segmenter.predict(rgb, list(LINES)).labels == 3).mean()


def test_no_background_class_is_not_class_zero(local_backend, scene, tmp_path, tiny_segmenter):
    """background_index None: every pixel keeps its best class, the threshold has nothing to fall back on."""
    path, image = scene
    result, _ = run(local_backend, path, tmp_path / "out.tif", threshold=0.6, background_index=None,
                    block_size=4096)
    rgb = np.ascontiguousarray(image.transpose(1, 2, 0))
    np.testing.assert_array_equal(read_band(result.output_path), tiny_segmenter.predict(rgb, list(LINES)).labels)
    assert result.colours[0][3] == 255  # no class is drawn as transparent background


def test_the_target_does_not_exist_until_the_job_is_complete(local_backend, scene, tmp_path):
    path, _ = scene
    output = tmp_path / "result.tif"
    seen = []
    result, client = run(local_backend, path, output, progress=lambda p: seen.append((p, output.exists())))
    assert client.segmented > 2 and len(seen) >= client.segmented  # blocks, and windows within blocks
    assert not any(exists for _, exists in seen)
    assert output.is_file() and result.output_path == output


def test_cancel_between_blocks_stops_asking_the_backend(local_backend, scene, tmp_path):
    path, _ = scene
    output = tmp_path / "cancelled.tif"
    flag = []
    client = CountingClient(local_backend.client())
    with pytest.raises(JobCancelledError):
        run(local_backend, path, output, progress=lambda p: flag.append(p), cancelled=lambda: bool(flag),
            client=client)
    assert flag and client.segmented == 1  # no block after the one during which cancel was asked
    assert sorted(os.listdir(tmp_path)) == []


def test_a_failed_overwrite_keeps_the_old_file(local_backend, scene, tmp_path):
    path, _ = scene
    output = tmp_path / "precious.tif"
    output.write_bytes(b"the user's earlier result")

    def fail_on_third(count):
        if count >= 2:  # and stays away: the retries fail too
            raise BackendError("the backend went away (simulated at block 3)", "unreachable")

    client = CountingClient(local_backend.client(), before_segment=fail_on_third)
    with pytest.raises(BackendError, match="went away"):
        run(local_backend, path, output, overwrite=True, client=client)
    assert output.read_bytes() == b"the user's earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.tif"]


def test_an_existing_target_is_refused_without_overwrite(local_backend, scene, tmp_path):
    path, _ = scene
    output = tmp_path / "exists.tif"
    output.write_bytes(b"mine")
    with pytest.raises(OutputError, match="already exists"):
        run(local_backend, path, output)
    assert output.read_bytes() == b"mine"


def test_all_nodata_blocks_are_not_sent(local_backend, tmp_path, tiny_segmenter):
    image = smooth_image(700, 300, seed=5)
    image[:, :450, :] = 0  # the first rows of blocks hold nothing valid
    path = write_geotiff(tmp_path / "holes.tif", image, 32633, UTM, nodata=0)
    result, client = run(local_backend, path, tmp_path / "holes_out.tif", nodata=0)
    labels = read_band(result.output_path)
    assert (labels[:450] == 255).all() and (result.blocks, client.segmented) == (4, 2)
    rgb = np.ascontiguousarray(image.transpose(1, 2, 0))
    valid = (image != 0).all(axis=0)
    expected = tiny_segmenter.predict(rgb, list(LINES), valid=valid).labels
    np.testing.assert_array_equal(labels, expected)
    assert result.class_pixels.get(255) == int((~valid).sum())


def test_backend_killed_mid_job_leaves_nothing(tiny_backend_args, scene, tmp_path):
    import sys

    from segearth_qgis.client.local_backend import start_local_backend

    backend = start_local_backend(sys.executable, tiny_backend_args, timeout=120)
    try:
        path, _ = scene

        def kill_on_second(count):
            if count == 1:
                os.kill(backend.process.pid, signal.SIGKILL)
                backend.process.wait(30)

        client = CountingClient(backend.client(), before_segment=kill_on_second)
        with pytest.raises(BackendError):
            run(backend, path, tmp_path / "out.tif", client=client)
        assert list(tmp_path.iterdir()) == []
    finally:
        backend.stop()


def test_a_full_disk_is_an_output_error_and_leaves_nothing(local_backend, scene, small_filesystem):
    """The probabilities (9 MB) do not fit on a 400 KB file system: the job fails cleanly, naming the folder."""
    path, _ = scene
    folder = small_filesystem(400)
    keep = folder / "keep.tif"
    keep.write_bytes(b"x" * 1000)
    with pytest.raises(OutputError, match=f"The disk holding {folder} is full") as caught:
        run(local_backend, path, folder / "labels.tif", probabilities=str(folder / "probabilities.tif"))
    assert "Nothing was written" in str(caught.value)
    assert sorted(p.name for p in folder.iterdir()) == ["keep.tif"] and keep.read_bytes() == b"x" * 1000


def test_a_nearly_full_disk_never_gets_an_empty_style(local_backend, tmp_path, small_filesystem):
    """Found by the second safety probe: with 8 KB free the job committed a 0-byte .qml and said nothing."""
    from segearth_qgis.map.styling import class_style_text
    from tests.plugin.helpers import fill_filesystem, folder_digests

    scene = write_geotiff(tmp_path / "small.tif", smooth_image(60, 70, seed=8), 32633, UTM)
    folder = small_filesystem(256)
    (folder / "labels.qml").write_text("<qgis>an earlier result's style</qgis>")
    (folder / "labels.tif").write_bytes(b"an earlier result")
    fill_filesystem(folder, 8 * 1024)  # the class GeoTIFF and its .aux.xml fit, the style does not
    before = folder_digests(folder)
    with pytest.raises(OutputError, match=f"The disk holding {folder} is full") as caught:
        run(local_backend, scene, folder / "labels.tif", overwrite=True, make_style=class_style_text)
    assert "Nothing was written" in str(caught.value)
    assert folder_digests(folder) == before


def test_a_default_name_is_free_for_the_probabilities_too(tmp_path):
    from segearth_qgis.job.request import default_output_path

    (tmp_path / "scene_segearth_probabilities.tif").write_bytes(b"an earlier run's")
    assert default_output_path(str(tmp_path), "scene").endswith("/scene_segearth.tif")  # the first: no number
    assert default_output_path(str(tmp_path), "scene", probabilities=True).endswith("scene_segearth_2.tif")


def test_blocks_are_planned_for_the_window_the_backend_names(local_backend, scene, tmp_path):
    """execute() asks /health for the sliding window and plans the blocks with it, not with its own numbers."""
    from types import SimpleNamespace

    from segearth_qgis.core.blocks import CROP, STRIDE, plan_grid_blocks
    from segearth_qgis.job.engine import JobParams, execute
    from segearth_qgis.job.outputs import plan_outputs
    from tests.plugin.helpers import source_for

    path, _ = scene
    shapes = []

    class WiderWindow(CountingClient):
        def health(self):
            return {**self.client.health(), "window": {"size": 2 * CROP, "stride": 2 * STRIDE}}

        def segment(self, image, *args, **kwargs):
            shapes.append(image.shape[:2])
            return super().segment(image, *args, **kwargs)

    grid, crs, source = source_for(path)
    plan = SimpleNamespace(grid=grid, crs_wkt=crs, open=lambda: source)
    params = JobParams(LINES, plan_outputs(str(tmp_path / "out.tif"), None, [str(path)]), block_size=336)
    assert local_backend.client().health()["window"] == {"size": CROP, "stride": STRIDE}
    execute(plan, params, WiderWindow(local_backend.client()))
    wide = [(block.height, block.width) for block in plan_grid_blocks(grid, 336, 2 * CROP, 2 * STRIDE)]
    assert sorted(shapes) == sorted(wide)
    assert len(wide) < len(plan_grid_blocks(grid, 336))  # the default window would cut more blocks
