"""The session clean-up leaves alone what another test session running beside this one still uses."""

import subprocess
import sys

from tests import qgis_profile


def test_a_folder_a_live_process_writes_in_or_works_in_is_in_use(tmp_path):
    log_folder, work_folder, idle_folder = tmp_path / "log", tmp_path / "work", tmp_path / "idle"
    for folder in (log_folder, work_folder, idle_folder):
        folder.mkdir()
    with open(log_folder / "backend.log", "wb") as log:
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                                 stderr=log, cwd=work_folder)
    try:
        used = qgis_profile._paths_in_use()
        assert qgis_profile._in_use(log_folder, used) and qgis_profile._in_use(work_folder, used)
        assert not qgis_profile._in_use(idle_folder, used)
        assert not qgis_profile._in_use(tmp_path / "lo", used)  # a name prefix is not a parent folder
    finally:
        child.communicate(b"")
    assert not qgis_profile._in_use(log_folder, qgis_profile._paths_in_use())
