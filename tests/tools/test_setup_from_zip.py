"""What a new user does, end to end: the zip into a fresh QGIS profile, Set up backend, segment (slow: a real pip).

1. ``tools/package.py`` builds the zip (with the backend inside);
2. it is extracted into an empty QGIS profile's plugin folder;
3. the extracted plugin's ``backend_setup.py`` makes a real virtual environment and pip-installs the bundled
   backend and its dependencies (``--device cpu --weights skip``);
4. QGIS (pytest-qgis, in a separate process whose only Python path is that plugin folder) loads the plugin
   from the profile and segments a raster through the dock's code path, the backend running in the new
   environment with the tiny test weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import pytest

from tests.helpers import PARITY, ROOT

INNER_TEST = textwrap.dedent('''
    import os
    import time
    from pathlib import Path

    import numpy as np
    from osgeo import gdal, osr
    from qgis.core import QgsProject, QgsRasterLayer
    from qgis.PyQt.QtCore import QCoreApplication


    def test_the_installed_plugin_segments(qgis_iface, tmp_path):
        import segearth_qgis

        plugins = Path(os.environ["SEGEARTH_TEST_PLUGINS"]).resolve()
        assert Path(segearth_qgis.__file__).resolve().parent == plugins / "segearth_qgis"
        plugin = segearth_qgis.classFactory(qgis_iface)
        plugin.initGui()
        dock = plugin.dock
        image = np.random.default_rng(0).integers(0, 256, size=(3, 180, 200)).astype(np.uint8)
        path = tmp_path / "scene.tif"
        dataset = gdal.GetDriverByName("GTiff").Create(str(path), 200, 180, 3, gdal.GDT_Byte)
        dataset.SetGeoTransform((500000.0, 2.0, 0.0, 5600000.0, 0.0, -2.0))
        reference = osr.SpatialReference()
        reference.ImportFromEPSG(32633)
        dataset.SetProjection(reference.ExportToWkt())
        for band in range(3):
            dataset.GetRasterBand(band + 1).WriteArray(image[band])
        dataset = None
        layer = QgsRasterLayer(str(path), "scene")
        QgsProject.instance().addMapLayer(layer)
        dock.raster_box.set_layer(layer)
        dock.classes_box.edit.setPlainText("background\\nroad\\nwater")
        dock.options_box.output_widget.setFilePath(str(tmp_path / "result.tif"))
        task = dock.segment()
        assert task is not None
        deadline = time.monotonic() + 600
        while dock.task is not None and time.monotonic() < deadline:
            QCoreApplication.processEvents()
            time.sleep(0.02)
        assert task.result is not None, task.error
        labels = gdal.Open(str(tmp_path / "result.tif")).ReadAsArray()
        assert labels.shape == (180, 200) and (labels < 3).all()
        assert dock.backend.local.process.args[0] == os.environ["SEGEARTH_BACKEND_PYTHON"]
        plugin.unload()
''')


@pytest.mark.setup
def test_from_the_plugin_zip_to_a_first_result(tmp_path):
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, str(ROOT / "tools" / "package.py"), "--out", str(dist)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (archive,) = dist.glob("segearth_qgis.*.zip")
    names = zipfile.ZipFile(archive).namelist()
    assert "segearth_qgis/backend/pyproject.toml" in names and "segearth_qgis/client/backend_setup.py" in names
    assert not [n for n in names if "/tests/" in n or n.endswith((".pt", ".ckpt", ".pyc"))]

    # A fresh QGIS profile (pytest-qgis keeps it in <rootdir>/.qgis-settings) with the plugin extracted into it.
    qgis_root = tmp_path / "qgis"
    plugins = qgis_root / ".qgis-settings" / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    zipfile.ZipFile(archive).extractall(plugins)

    environment = tmp_path / "backend-env"
    clean = {k: v for k, v in os.environ.items()
             if k not in ("PYTHONPATH", "VIRTUAL_ENV", "SEGEARTH_BACKEND_PYTHONPATH")}
    setup = subprocess.run([sys.executable, str(plugins / "segearth_qgis" / "client" / "backend_setup.py"), "--target",
                            str(environment), "--device", "cpu", "--weights", "skip", "--yes"],
                           capture_output=True, text=True, timeout=2400, env=clean)
    assert setup.returncode == 0, setup.stdout[-4000:] + setup.stderr[-4000:]
    assert "SEGEARTH_SETUP_DONE" in setup.stdout
    record = json.loads((environment / "segearth-backend.json").read_text())
    venv_python = record["python"]
    assert venv_python == str(environment / "venv" / "bin" / "python")
    assert record["environment"]["auto_device"] == "cpu" and record["version"] in archive.name
    isolated = subprocess.run([venv_python, "-c", "import qgis"], capture_output=True, text=True)
    assert isolated.returncode != 0  # the backend's environment does not see QGIS's Python

    (qgis_root / "pytest.ini").write_text("[pytest]\naddopts = -p no:randomly -p no:cacheprovider\n")
    (qgis_root / "test_installed_plugin.py").write_text(INNER_TEST)
    env = dict(clean, PYTHONPATH=str(plugins), QT_QPA_PLATFORM="offscreen", SEGEARTH_TEST_PLUGINS=str(plugins),
               SEGEARTH_BACKEND_PYTHON=venv_python, SEGEARTH_MODEL=str(PARITY / "tiny-clip.json"),
               SEGEARTH_CLIP_WEIGHTS=str(PARITY / "tiny-clip.pt"),
               SEGEARTH_UPSAMPLER_WEIGHTS=str(PARITY / "tiny-simfeatup.ckpt"), SEGEARTH_DEVICE="cpu",
               SEGEARTH_CACHE_DIR=str(tmp_path / "cache"), SEGEARTH_OFFLINE="1", HOME=str(tmp_path / "home"))
    inner = subprocess.run([sys.executable, "-m", "pytest", "-q", "-c", str(qgis_root / "pytest.ini"),
                            "--rootdir", str(qgis_root), str(qgis_root / "test_installed_plugin.py")],
                           cwd=qgis_root, capture_output=True, text=True, timeout=900, env=env)
    assert inner.returncode == 0, inner.stdout[-4000:] + inner.stderr[-2000:]
