"""`qgis_process run segearth:accuracy` as a subprocess, with the plugin from this checkout."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.plugin.processing.accuracy_helpers import KAPPA, OVERALL_ACCURACY, prescribed_pair

ROOT = Path(__file__).resolve().parents[3]
QGIS_PROCESS = shutil.which("qgis_process.bin") or shutil.which("qgis_process")


@pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process is not installed")
def test_qgis_process_reports_the_prescribed_matrix(tmp_path):
    classified, reference = prescribed_pair(tmp_path)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "QT_QPA_PLATFORM": "offscreen",
           "QGIS_PLUGINPATH": str(ROOT)}
    enable = subprocess.run([QGIS_PROCESS, "plugins", "enable", "segearth_qgis"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert enable.returncode == 0, enable.stdout + enable.stderr
    html, matrix = tmp_path / "report.html", tmp_path / "matrix.csv"
    run = subprocess.run(
        [QGIS_PROCESS, "--json", "run", "segearth:accuracy", "--", f"INPUT={classified}",
         f"REFERENCE_RASTER={reference}", "MAPPING=Clutter=ignore", f"OUTPUT_MATRIX={matrix}",
         f"OUTPUT_METRICS={tmp_path / 'metrics.csv'}", f"OUTPUT_HTML={html}"],
        env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    results = json.loads(run.stdout[run.stdout.index("{"):])["results"]
    assert results["OVERALL_ACCURACY"] == pytest.approx(OVERALL_ACCURACY)
    assert results["KAPPA"] == pytest.approx(KAPPA) and results["PIXELS"] == 80
    rows = list(csv.reader(matrix.read_text().splitlines()))
    assert rows[0][:3] == ["reference_id", "reference", "pred_0"]
    assert rows[1][1:] == ["background", "20", "2", "1", "0", "23"]  # first row of the prescribed matrix
    assert "<td class=diagonal>18</td>" in html.read_text()


@pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process is not installed")
def test_qgis_process_unmatched_classes_is_a_clear_error(tmp_path):
    classified, reference = prescribed_pair(tmp_path)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "QT_QPA_PLATFORM": "offscreen",
           "QGIS_PLUGINPATH": str(ROOT)}
    subprocess.run([QGIS_PROCESS, "plugins", "enable", "segearth_qgis"], env=env, capture_output=True, timeout=120)
    run = subprocess.run([QGIS_PROCESS, "run", "segearth:accuracy", "--", f"INPUT={classified}",
                          f"REFERENCE_RASTER={reference}", f"OUTPUT_MATRIX={tmp_path / 'm.csv'}",
                          f"OUTPUT_METRICS={tmp_path / 'x.csv'}"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "5 (Clutter) match no class" in output and "Traceback" not in output
