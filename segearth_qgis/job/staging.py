"""Putting a job's files in place all at once: the staged writer (no QGIS, no GDAL).

Files are written under hidden temporary names in the target folder (:class:`StagedFiles`), then moved into
place in one step at the end; a move that would replace a file is refused unless overwriting was asked for,
and a failure part-way puts back what was there before. Before it writes, the run does the disk work the plan
left to it (:func:`prepare_targets`). Where the files go is :mod:`.outputs`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path

from ..errors import OutputError
from .outputs import OutputPlan, aux_path, recover_leftovers


def prepare_targets(plan: OutputPlan) -> list[str]:
    """The run's disk work before it writes: create the default folder, put back a user's file an interrupted
    run left as a hidden backup, remove old temporary files. Returns what was done, for the job's messages.

    Raises:
        OutputError: the folder cannot be created.
    """
    if plan.create_folder:
        try:
            plan.labels.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"The default output folder {plan.labels.parent} cannot be created "
                              f"({error.strerror}): choose another one in the panel's options.") from None
    return [message for target in plan.targets for message in recover_leftovers(target)]


def reserve_temporary(target: Path, suffix: str) -> Path:
    """Create an empty, hidden, uniquely named file beside ``target`` (normal permissions) and return its path."""
    for _ in range(100):
        candidate = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part{suffix}")
        try:
            descriptor = os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        except OSError as error:
            raise output_error(target.parent, error) from None
        os.close(descriptor)
        return candidate
    raise OutputError(f"Could not create a temporary file in {target.parent}.")


def output_error(folder: Path, error: BaseException) -> OutputError:
    """An OutputError that names the folder and the cause (full disk, permissions...)."""
    code = getattr(error, "errno", None)
    reason = os.strerror(code) if isinstance(code, int) else str(error)
    if code == errno.ENOSPC or "No space left" in str(error):
        return OutputError(f"The disk holding {folder} is full (no space left on device): free some space or choose "
                           "another folder. Nothing was written.")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"Cannot write in {folder} ({reason}): choose another folder. Nothing was written.")
    return OutputError(f"Cannot write in {folder}: {reason}. Nothing was written.")


def _place(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``, failing if ``target`` exists (link + unlink, or an exclusive placeholder).

    Raises:
        FileExistsError: ``target`` exists; nothing was changed.
        OSError: the move failed; ``target`` is absent again.
    """
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some network or FAT file systems): claim the name exclusively
        descriptor = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        os.close(descriptor)
        try:
            os.replace(source, target)
        except OSError:
            with contextlib.suppress(OSError):
                target.unlink()  # no empty placeholder stays behind
            raise
        return
    with contextlib.suppress(OSError):  # the data is in place; a temporary name that cannot go is harmless
        os.unlink(source)


def _backup(target: Path) -> Path:
    """A hidden copy of ``target`` under another name, the original staying where it is (a hard link where
    possible, so a crash at any moment leaves the user's file in place)."""
    backup = target.with_name(f".{target.name}.{secrets.token_hex(4)}.old")
    try:
        os.link(target, backup)
    except OSError:  # no hard links: a rename (recover_leftovers puts it back after a crash)
        os.replace(target, backup)
    return backup


def _restore(backup: Path, target: Path) -> None:
    """Put ``backup`` back at ``target`` (where ``target`` is still the same file, just drop the backup:
    renaming one hard link onto another of the same file does nothing)."""
    if os.path.lexists(target) and os.path.samefile(backup, target):
        backup.unlink()
    else:
        os.replace(backup, target)


class StagedFiles:
    """Files written under temporary names, moved to their targets together by :meth:`commit`.

    ``stage(target)`` reserves a hidden temporary file beside ``target``;
    ``attach(temporary, target)`` adds a file made by someone else (a style, a
    GDAL side file). ``commit()`` moves everything; ``abort()`` removes the
    temporary files. Either way nothing half-written is left.
    """

    def __init__(self, overwrite: bool = False) -> None:
        self.overwrite = overwrite
        self.items: list[tuple[Path, Path]] = []
        self.replaced: list[Path] = []  # targets whose existing file is removed even if nothing replaces it

    def stage(self, target: Path, suffix: str = ".tif") -> Path:
        temporary = reserve_temporary(target, suffix)
        self.items.append((temporary, target))
        return temporary

    def attach(self, temporary: Path, target: Path) -> None:
        self.items.append((temporary, target))

    def drop(self, temporary: Path) -> None:
        """Forget a staged file and remove it (it will not be moved anywhere)."""
        self.items = [(tmp, target) for tmp, target in self.items if tmp != temporary]
        with contextlib.suppress(OSError):
            temporary.unlink()

    def target_of(self, temporary: Path) -> Path:
        return next(target for tmp, target in self.items if tmp == temporary)

    def replace_stale(self, target: Path) -> None:
        """On commit, remove ``target`` if it exists and nothing staged replaces it (a stale side file)."""
        self.replaced.append(target)

    def commit(self) -> list[Path]:
        """Move every staged file into place, or none.

        Existing targets may be replaced only with ``overwrite`` (or when
        marked stale); each is first backed up under a hidden name and put
        back if anything fails. Stale side files without a replacement are
        removed at the end.

        Raises:
            OutputError: a target appeared meanwhile (without ``overwrite``) or a
                move failed; every target is as it was before.
        """
        stale = set(self.replaced)
        targets = [target for _, target in self.items]
        backups: dict[Path, Path] = {}
        placed: list[Path] = []
        try:
            for target in list(dict.fromkeys([*targets, *self.replaced])):
                if os.path.lexists(target):
                    if not self.overwrite and target not in stale:
                        raise OutputError(f"{target} appeared while the job ran: it was not replaced, and nothing "
                                          "was written. Choose another file name.")
                    backups[target] = _backup(target)
            for temporary, target in self.items:
                placed.append(target)
                if target in backups:
                    os.replace(temporary, target)  # atomic: the target is the old file or the new one
                else:
                    _place(temporary, target)
        except BaseException as error:
            for target in placed:
                if target not in backups:
                    with contextlib.suppress(OSError):
                        target.unlink()
            for target, backup in backups.items():
                with contextlib.suppress(OSError):
                    _restore(backup, target)
            self.abort()
            if isinstance(error, OutputError):
                raise
            if isinstance(error, FileExistsError):
                raise OutputError(f"{error.filename} appeared while the job ran: it was not replaced, and nothing "
                                  "was written. Choose another file name.") from None
            if isinstance(error, OSError):
                folder = Path(error.filename).parent if error.filename else self.items[0][1].parent
                raise output_error(folder, error) from None
            raise
        for target in stale - set(targets):
            with contextlib.suppress(OSError):
                target.unlink()
        for backup in backups.values():
            with contextlib.suppress(OSError):
                backup.unlink()
        self.items = []
        return placed

    def abort(self) -> None:
        """Remove every temporary file (and GDAL side files of them)."""
        for temporary, _ in self.items:
            for leftover in (temporary, aux_path(temporary)):
                with contextlib.suppress(OSError):
                    leftover.unlink()
        self.items = []


