"""A pytest plugin (``-p tests.qgis_profile``): QGIS runs the tests in a throwaway profile.

pytest-qgis keeps its QGIS profile in ``<rootdir>/.qgis-settings``, so every
run rewrote a profile inside the checkout (an auth database included) and one
run's settings leaked into the next. This plugin points it at a fresh
temporary folder, removed when the session ends. It must run before
pytest-qgis starts QGIS, which happens before any conftest is imported:
hence a plugin named on the command line (pytest.ini's ``addopts``).

It also takes away what the session left in the temporary folder: the
working folders of local backends (a failed backend keeps its log there for
the user: many tests make backends fail on purpose) and the empty
``QGIS3-*`` folders QGIS leaves behind, and the session folders (logs) of the
local Ray instances the Ray tests start. Only folders that appeared during
the session and that no live process uses are touched: another test session
running beside this one (another worktree, `make test-qgis`) keeps its own.

A session that is killed or aborts (QGIS without a display aborts before any
test) never removes its profile: each profile folder is named after its
session's process, and a session starting removes the profiles of sessions
whose process has ended.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Generator

import pytest

_PROFILE: dict[str, Path] = {}
#: Temporary folders a session leaves: (pattern under the temporary folder, removed only when empty).
#: Ray's ``session_latest`` link is not matched (session folders are named after their date).
_LEFTOVERS = (("segearth-backend-*", False), ("QGIS3-*", True), ("ray/session_2*", False))
_BEFORE: set[Path] = set()
_PROFILE_PREFIX = "segearth-qgis-profile-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stale_profiles(folder: Path) -> list[Path]:
    """Profile folders in ``folder`` left by test sessions whose process has ended (named ``<prefix><pid>-*``)."""
    stale = []
    for entry in folder.glob(f"{_PROFILE_PREFIX}*"):
        pid = entry.name[len(_PROFILE_PREFIX):].split("-", 1)[0]
        if entry.is_dir() and not entry.is_symlink() and pid.isdigit() and not _alive(int(pid)):
            stale.append(entry)
    return stale


def _leftover_candidates() -> dict[Path, bool]:
    """Each candidate folder, and whether it may only be removed when empty."""
    folder = Path(tempfile.gettempdir())
    return {entry: empty for pattern, empty in _LEFTOVERS for entry in folder.glob(pattern)
            if entry.is_dir() and not entry.is_symlink()}


class _ConfigWithRoot:
    """The pytest config as pytest-qgis sees it, with the profile root moved elsewhere."""

    def __init__(self, config: pytest.Config, root: Path) -> None:
        self._config, self.rootpath = config, root

    def __getattr__(self, name: str) -> Any:
        return getattr(self._config, name)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> Generator[None, None, None]:
    _BEFORE.update(_leftover_candidates())
    try:
        from pytest_qgis import plugin as pytest_qgis
    except ImportError:  # pytest-qgis absent: nothing to redirect
        return (yield)
    for stale in stale_profiles(Path(tempfile.gettempdir())):
        shutil.rmtree(stale, ignore_errors=True)
    root = Path(tempfile.mkdtemp(prefix=f"{_PROFILE_PREFIX}{os.getpid()}-"))
    _PROFILE["root"] = root
    load = pytest_qgis._load_qgis_settings
    pytest_qgis._load_qgis_settings = lambda config: load(_ConfigWithRoot(config, root))
    try:
        return (yield)
    finally:
        pytest_qgis._load_qgis_settings = load


def pytest_report_header(config: pytest.Config) -> str:
    return f"QGIS profile: {_PROFILE.get('root', 'pytest-qgis default')}"


def _paths_in_use() -> set[str]:
    """Every path a live process has open or works in (Linux ``/proc``; empty elsewhere).

    Another test session running at the same time (a second worktree, a chroot run) starts backends
    and Ray in the same temporary folder: their folders are new to this session too, but alive.
    """
    used: set[str] = set()
    for process in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            used.add(os.readlink(process / "cwd"))
            for handle in (process / "fd").iterdir():
                with contextlib.suppress(OSError):
                    used.add(os.readlink(handle))
    return used


def _in_use(folder: Path, used: set[str]) -> bool:
    prefix = f"{folder}{os.sep}"
    return any(path == str(folder) or path.startswith(prefix) for path in used)


def pytest_unconfigure(config: pytest.Config) -> None:
    root = _PROFILE.pop("root", None)
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)
    used = _paths_in_use()
    for entry, only_if_empty in _leftover_candidates().items():
        if entry in _BEFORE or _in_use(entry, used):  # older than this session, or another session's, alive
            continue
        if only_if_empty:
            with contextlib.suppress(OSError):  # not empty: in use by a QGIS outside the tests
                entry.rmdir()
        else:
            shutil.rmtree(entry, ignore_errors=True)
