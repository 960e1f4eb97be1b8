"""`make package` and `make demo` (tools/), run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from osgeo import gdal, ogr

from tests.helpers import ROOT, minimal_env
from tests.plugin.helpers import smooth_image, write_geotiff


def test_package_holds_the_plugin_its_backend_and_a_repository_xml(tmp_path):
    import configparser
    import xml.etree.ElementTree as ElementTree

    temporary = tmp_path / "tmp"
    temporary.mkdir()
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "package.py"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "TMPDIR": str(temporary)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(temporary.iterdir()) == []  # qgis-plugin-ci's .tar went with the package's own temporary folder
    from segearth_backend import __version__

    # The links are placeholders (packaging/project.ini: published = no): a development build, and it says why.
    (archive,) = tmp_path.glob("segearth_qgis.*.zip")
    assert archive.name == f"segearth_qgis.{__version__}-dev.zip"
    assert "development build: packaging/project.ini says the project's links are not published" in result.stdout
    names = zipfile.ZipFile(archive).namelist()
    assert "segearth_qgis/metadata.txt" in names and "segearth_qgis/icon.svg" in names
    assert "segearth_qgis/__init__.py" in names and "segearth_qgis/processing/provider.py" in names
    assert "segearth_qgis/backend/pyproject.toml" in names \
        and "segearth_qgis/backend/segearth_backend/pipeline/segmenter.py" in names \
        and "segearth_qgis/backend/segearth_backend/data/benchmarks.json" in names
    assert all(n.startswith("segearth_qgis/") for n in names)
    assert not [n for n in names if "__pycache__" in n or "/tests/" in n or n.endswith((".pyc", "backend_python.txt",
                                                                                     ".pt", ".ckpt"))]
    metadata = configparser.ConfigParser()
    metadata.read_string(zipfile.ZipFile(archive).read("segearth_qgis/metadata.txt").decode())
    general = metadata["general"]
    assert general["version"] == f"{__version__}-dev" and "Development build" in general["about"]
    assert general["supportsQt6"] == "True" and general["qgisMaximumVersion"] == "4.99"
    plugin = ElementTree.parse(tmp_path / "plugins.xml").getroot().find("pyqgis_plugin")
    assert plugin.get("version") == f"{__version__}-dev" and plugin.findtext("file_name") == archive.name
    assert plugin.findtext("download_url").endswith("/" + archive.name)
    assert plugin.findtext("qgis_maximum_version") == "4.99"


def test_links_and_version_have_one_source():
    """packaging/project.ini holds the links, segearth_backend.__version__ the version; metadata.txt agrees."""
    import configparser

    from segearth_backend import __version__

    project = configparser.ConfigParser()
    project.read(ROOT / "packaging" / "project.ini")
    metadata = configparser.ConfigParser()
    metadata.read(ROOT / "segearth_qgis" / "metadata.txt")
    for key in ("homepage", "tracker", "repository"):
        assert metadata["general"][key] == project["links"][key]
    assert metadata["general"]["version"] == __version__


@pytest.mark.skipif(not Path("/usr/bin/qgis_process.bin").exists() and not Path("/usr/bin/qgis_process").exists(),
                    reason="qgis_process is not installed")
def test_demo_writes_all_outputs(tmp_path, parity_dir):
    env = dict(os.environ, HOME=str(tmp_path / "home"), QT_QPA_PLATFORM="offscreen",
               SEGEARTH_MODEL=str(parity_dir / "tiny-clip.json"),
               SEGEARTH_CLIP_WEIGHTS=str(parity_dir / "tiny-clip.pt"),
               SEGEARTH_UPSAMPLER_WEIGHTS=str(parity_dir / "tiny-simfeatup.ckpt"), SEGEARTH_DEVICE="cpu",
               SEGEARTH_CACHE_DIR=str(tmp_path / "cache"))
    out = tmp_path / "demo_out"
    sample = write_geotiff(tmp_path / "scene.tif", smooth_image(300, 340), 32633,
                           (500000.0, 1.0, 0.0, 5600000.0, 0.0, -1.0))
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), "--out", str(out), "--python",
                             sys.executable, "--sample", str(sample)], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in ("scene_segearth.tif", "scene_segearth.qml", "scene_polygons.gpkg", "scene_polygons.qml",
                 "preview.png"):
        assert (out / name).is_file(), name
    raster = gdal.Open(str(out / "scene_segearth.tif"))
    raster.GetMetadata()
    assert raster.RasterXSize == 340 and raster.GetRasterBand(1).GetCategoryNames()[8] == "building, roof, house"
    polygons = ogr.Open(str(out / "scene_polygons.gpkg"))
    assert polygons.GetLayer(0).GetFeatureCount() > 0
    preview = gdal.Open(str(out / "preview.png"))
    assert preview.RasterXSize > preview.RasterYSize  # the legend sits beside the map
    del polygons, raster, preview


@pytest.mark.skipif(not Path("/usr/bin/qgis_process.bin").exists() and not Path("/usr/bin/qgis_process").exists(),
                    reason="qgis_process is not installed")
def test_demo_offline_without_weights_lists_the_files_then_runs_labelled(tmp_path):
    """Offline and without weights: the list of files to fetch, then the workflow on the tiny test weights,
    labelled as not meaningful in the console, the preview and the output's metadata."""
    env = minimal_env(tmp_path / "home", SEGEARTH_OFFLINE="1", HF_HUB_OFFLINE="1", QT_QPA_PLATFORM="offscreen")
    sample = write_geotiff(tmp_path / "scene.tif", smooth_image(200, 240), 32633,
                           (500000.0, 1.0, 0.0, 5600000.0, 0.0, -1.0))
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), "--out", str(tmp_path / "o"),
                             "--python", sys.executable, "--sample", str(sample)], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "open_clip_pytorch_model.bin" in result.stdout and "xclip_jbu_one_million_aid.ckpt" in result.stdout
    assert str(tmp_path / "home" / ".cache" / "segearth-ov" / "simfeatup") in result.stdout
    assert result.stdout.count("TINY RANDOM TEST WEIGHTS: the classes are NOT meaningful") == 2  # before and after
    raster = gdal.Open(str(tmp_path / "o" / "scene_segearth.tif"))
    assert "NOT meaningful" in raster.GetMetadataItem("SEGEARTH_DEMO")
    preview = gdal.Open(str(tmp_path / "o" / "preview.png")).ReadAsArray()
    red_text = (preview[0, :44] > 150) & (preview[1, :44] < 90) & (preview[2, :44] < 90)  # the note across the top
    assert red_text.sum() > 100 and not ((preview[0, 60:] > 150) & (preview[1, 60:] < 90)).any(axis=1).all()
    assert "Traceback" not in result.stdout + result.stderr
    del raster


def test_sar_demo_without_the_sar_weights_says_where_to_get_them_then_runs_labelled(tmp_path):
    """`make demo-sar`: the synthetic SAR sample through Processing's SAR input, with the SAR model's settings."""
    env = minimal_env(tmp_path / "home", SEGEARTH_OFFLINE="1", HF_HUB_OFFLINE="1", QT_QPA_PLATFORM="offscreen")
    out = tmp_path / "sar"
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), "--sar", "--out", str(out),
                             "--python", sys.executable], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "https://huggingface.co/likyoo/AlignEarth-SAR-ViT-B-16" in result.stdout
    assert "AlignEarth-SAR-ViT-B-16.pt" in result.stdout and "NOT meaningful" in result.stdout
    raster = gdal.Open(str(out / "sar_sample_segearth.tif"))
    raster.GetMetadata()
    assert raster.GetRasterBand(1).GetCategoryNames()[:2] == ["water", "flooded area, flood water"]
    labels = raster.GetRasterBand(1).ReadAsArray()
    sample = gdal.Open(str(ROOT / "tests" / "data" / "sar_sample.tif"))
    vv = sample.GetRasterBand(1).ReadAsArray()
    assert ((labels == 255) == (vv == 0)).all()  # the swath edge is nodata, everything else has a class
    assert (out / "preview.png").is_file() and (out / "sar_sample_polygons.gpkg").is_file()
    assert "Traceback" not in result.stdout + result.stderr
    del raster, sample


@pytest.mark.skipif(not Path("/usr/bin/qgis_process.bin").exists() and not Path("/usr/bin/qgis_process").exists(),
                    reason="qgis_process is not installed")
def test_demo_change_makes_a_pair_and_writes_all_outputs(tmp_path, parity_dir):
    """`make demo-change` on a small sample: the seeded pair, the change through qgis_process, a re-query."""
    env = dict(os.environ, HOME=str(tmp_path / "home"), QT_QPA_PLATFORM="offscreen",
               SEGEARTH_MODEL=str(parity_dir / "tiny-clip.json"),
               SEGEARTH_CLIP_WEIGHTS=str(parity_dir / "tiny-clip.pt"),
               SEGEARTH_UPSAMPLER_WEIGHTS=str(parity_dir / "tiny-simfeatup.ckpt"), SEGEARTH_DEVICE="cpu",
               SEGEARTH_CACHE_DIR=str(tmp_path / "cache"))
    sample = write_geotiff(tmp_path / "scene.tif", smooth_image(260, 300), 32633,
                           (500000.0, 0.5, 0.0, 5600000.0, 0.0, -0.5))
    out = tmp_path / "demo_out"
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "demo_change.py"), "--out", str(out), "--python",
                             sys.executable, "--sample", str(sample)], env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folder = out / "change"
    for name in ("koeln_change.tif", "koeln_change.qml", "koeln_before.tif", "koeln_after.tif", "koeln_matrix.gpkg",
                 "koeln_report.html", "koeln_change_polygons.gpkg", "preview.png", "timings.json"):
        assert (folder / name).is_file(), name
    after = gdal.Open(str(out / "change_sample" / "after_epsg3035.tif"))
    assert "3035" in after.GetProjection() and after.GetGeoTransform()[1] == pytest.approx(0.6)
    timings = json.loads((folder / "timings.json").read_text(encoding="utf-8"))
    assert timings["first_run_job_s"] > 0 and timings["requery_job_s"] > 0 and len(timings["regions"]) == 3
    assert "re-query with other classes" in result.stdout
    del after
