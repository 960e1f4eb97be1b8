"""The session clean-up leaves alone what another test session running beside this one still uses."""

import os
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


def test_only_the_profiles_of_ended_sessions_are_stale(tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = tmp_path / f"segearth-qgis-profile-{ended.stdout.strip()}-abc123"
    running = tmp_path / f"segearth-qgis-profile-{os.getpid()}-def456"
    unnamed = tmp_path / "segearth-qgis-profile-x1y2z3"  # an older name without a process: left alone
    other = tmp_path / "segearth-backend-777-abc"
    for folder in (gone, running, unnamed, other):
        (folder / "QGIS").mkdir(parents=True)
    assert qgis_profile.stale_profiles(tmp_path) == [gone]
