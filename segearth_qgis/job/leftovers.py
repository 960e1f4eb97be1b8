"""What a dead job left beside its targets, and recognising it (no QGIS, no GDAL).

A job writes its files under hidden temporary names (``.<target>.<token>.part...``) that it holds under an OS
lock while it runs, and backs up a file it replaces as ``.<target>.<token>.old``. A temporary whose lock is free
belongs to a job that is gone and is removed at the next run of that target; a backup left without its target
is put back. Nothing else matches the names, so a user's file is never taken for a leftover.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import Optional

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; there a leftover is recognised by its age (STALE_SECONDS)
    fcntl = None  # type: ignore[assignment]

#: Where OS locks are missing (Windows, a file system without them), a leftover older than this is from a job
#: that is certainly not running any more.
STALE_SECONDS = 6 * 3600
TEMPORARY_MARK = "part"
BACKUP_MARK = "old"

HELD, BUSY, UNKNOWN = "held", "busy", "unknown"


def try_lock(descriptor: int, path: Path) -> str:
    """Take the exclusive lock of ``descriptor`` without waiting, if ``path`` still names that file.

    Returns ``held`` (ours now), ``busy`` (another process holds it, or the name now names another file) or
    ``unknown`` (no locks here).
    """
    if fcntl is None:
        return UNKNOWN
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return BUSY
    except OSError:  # ENOLCK, EOPNOTSUPP: a file system without locks
        return UNKNOWN
    try:
        same = os.path.samestat(os.fstat(descriptor), os.stat(path))
    except OSError:
        same = False
    return HELD if same else BUSY


def leftovers(target: Path) -> dict[str, list[tuple[Path, str]]]:
    """Hidden temporary files and folders and backups of ``target`` that a job made (see StagedFiles), by the
    job's token: ``{token: [(path, 'part' or 'old')]}``. Nothing else matches the pattern."""
    folder = target.parent
    if not folder.is_dir():
        return {}
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?P<token>[0-9a-f]{{8}})\."
                         rf"(?:(?P<part>{TEMPORARY_MARK}(?:\..*)?)|{BACKUP_MARK})", re.DOTALL)
    found: dict[str, list[tuple[Path, str]]] = {}
    for entry in sorted(folder.iterdir()):
        match = pattern.fullmatch(entry.name)
        if match:
            kind = TEMPORARY_MARK if match.group("part") is not None else BACKUP_MARK
            found.setdefault(match.group("token"), []).append((entry, kind))
    return found


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def age(path: Path, now: float) -> float:
    try:
        return now - path.lstat().st_mtime
    except OSError:
        return 0.0


def _remove_dead_temporaries(paths: list[Path], now: float) -> list[str]:
    """Remove one job's temporary files if that job is gone: nobody holds their lock (checked while holding it,
    so a running job never loses a file), or, where there are no locks, they are older than STALE_SECONDS."""
    held: list[int] = []
    states = []
    try:
        for path in paths:
            try:
                descriptor = os.open(path, os.O_RDONLY)
            except OSError:
                states.append(UNKNOWN)
                continue
            state = try_lock(descriptor, path)
            if state == HELD:
                held.append(descriptor)
            else:
                os.close(descriptor)
            states.append(state)
        if BUSY in states:
            return []  # its job is still writing
        if UNKNOWN in states and min(age(path, now) for path in paths) <= STALE_SECONDS:
            return []
        done = []
        for path in paths:
            with contextlib.suppress(OSError):
                _remove(path)
                done.append(f"An interrupted run's temporary file {path.name} was removed.")
        return done
    finally:
        for descriptor in held:
            os.close(descriptor)


def recover_leftovers(target: Path, now: Optional[float] = None) -> list[str]:
    """Put back a user's file that a crash left only as its hidden backup; remove the temporary files of jobs
    that are gone (at once where the OS has locks). Returns what was done, for the job's messages."""
    import time

    done = []
    now = time.time() if now is None else now
    for entries in leftovers(target).values():
        for backup in [path for path, kind in entries if kind == BACKUP_MARK]:
            if not os.path.lexists(target):
                with contextlib.suppress(OSError):
                    os.replace(backup, target)
                    done.append(f"{target.name} was restored from the backup an interrupted run left ({backup.name}).")
            elif age(backup, now) > STALE_SECONDS:
                with contextlib.suppress(OSError):
                    backup.unlink()
                    done.append(f"An interrupted run's backup {backup.name} was removed.")
        temporaries = [path for path, kind in entries if kind == TEMPORARY_MARK]
        if temporaries:
            done += _remove_dead_temporaries(temporaries, now)
    return done




def hidden_backup(target: Path) -> Optional[Path]:
    """The backup of ``target`` that :func:`recover_leftovers` would put back (``target`` is missing), or None."""
    if os.path.lexists(target):
        return None
    backups = [path for entries in leftovers(target).values() for path, kind in entries if kind == BACKUP_MARK]
    return sorted(backups)[0] if backups else None
