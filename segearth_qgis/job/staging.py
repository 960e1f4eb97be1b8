"""Putting a job's files in place all at once: the staged writer (no QGIS, no GDAL).

Files are written under hidden temporary names in the target folder (:class:`StagedFiles`), each held under
an OS lock by the job that writes it (:mod:`.leftovers` tells a dead job's files by it); at the end every file
is flushed to the disk and checked, then moved into place in one step; a move that would replace a file is
refused unless overwriting was asked for, and a failure part-way puts back what was there before. Before it
writes, the run does the disk work the plan left to it (:func:`prepare_targets`). Where the files go is
:mod:`.outputs`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterable, Optional, Protocol

from ..errors import OutputError
from .leftovers import BACKUP_MARK, HELD, TEMPORARY_MARK, UNKNOWN, fcntl, recover_leftovers, try_lock
from .outputs import OutputPlan, _same_file, aux_path, output_error, style_path


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
    targets = [*plan.targets, style_path(plan.labels)]
    return [message for target in targets for message in recover_leftovers(target)]


def _reserve(target: Path, suffix: str, folder: bool = False) -> tuple[Path, Optional[int]]:
    """Create a hidden, uniquely named file (or folder) beside ``target`` (normal permissions) and hold its lock.

    Returns its path and the descriptor that holds the lock (None where there are no locks: then nothing stays
    open, so the file can be moved on every OS).
    """
    for _ in range(100):
        candidate = target.with_name(f".{target.name}.{secrets.token_hex(4)}.{TEMPORARY_MARK}{suffix}")
        try:
            if folder:
                os.mkdir(candidate)
                if fcntl is None:  # no locks, and Windows cannot open a folder as a file
                    return candidate, None
                descriptor = os.open(candidate, os.O_RDONLY)
            else:
                descriptor = os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        except OSError as error:
            raise output_error(target.parent, error) from None
        state = try_lock(descriptor, candidate)
        if state == HELD:
            return candidate, descriptor
        os.close(descriptor)
        if state == UNKNOWN:
            return candidate, None
        # Another run's clean-up took it in the instant before our lock (and removes it): take another name.
    raise OutputError(f"Could not create a temporary file in {target.parent}.")


def verify_file(path: Path, folder: Path) -> int:
    """Flush ``path`` to the disk (fsync) and check that it holds data; returns its size.

    A full disk can leave a file short or empty while every write seemed to succeed (the data waits in memory):
    fsync reports it, and an empty file is refused.

    Raises:
        OutputError: naming ``folder`` and the cause.
    """
    try:
        descriptor = os.open(path, os.O_RDWR)
        try:
            os.fsync(descriptor)
            size = os.fstat(descriptor).st_size
        finally:
            os.close(descriptor)
    except OSError as error:
        raise output_error(folder, error) from None
    if size == 0:
        raise OutputError(f"The disk holding {folder} is full or failing: {path.name} came out empty. Free some "
                          "space or choose another folder. Nothing was written.")
    return size


def write_bytes(path: Path, data: bytes, folder: Path, descriptor: Optional[int] = None) -> None:
    """Write ``data`` to ``path`` (or its open ``descriptor``) whole: every byte written, fsync'd, size checked.

    Raises:
        OutputError: naming ``folder`` and the cause (a full disk...).
    """
    try:
        handle = os.open(path, os.O_WRONLY | os.O_TRUNC) if descriptor is None else descriptor
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(handle, view):]
            os.fsync(handle)
            size = os.fstat(handle).st_size
        finally:
            if descriptor is None:
                os.close(handle)
    except OSError as error:
        raise output_error(folder, error) from None
    if size != len(data):
        raise OutputError(f"The disk holding {folder} is full or failing: {path.name} holds {size} of {len(data)} "
                          "bytes. Free some space or choose another folder. Nothing was written.")


def _sync_folder(folder: Path) -> None:
    """Make the names just moved into ``folder`` durable (where the OS can)."""
    with contextlib.suppress(OSError, AttributeError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


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
    backup = target.with_name(f".{target.name}.{secrets.token_hex(4)}.{BACKUP_MARK}")
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


class CommitStep(Protocol):
    """A change made together with the moves of :meth:`StagedFiles.commit` (a layer written into a GeoPackage in
    one transaction): ``prepare`` does it so that it can still be undone, ``finish`` makes it final, ``undo``
    takes a prepared change back (and never raises)."""

    def prepare(self) -> None: ...

    def finish(self) -> None: ...

    def undo(self) -> None: ...


class StagedFiles:
    """Files written under temporary names, moved to their targets together by :meth:`commit`.

    ``stage(target)`` reserves a hidden temporary file beside ``target``, held under an OS lock until the end (so
    another run can tell a live job's file from a dead one's); ``write(target, data)`` stages data written whole;
    ``stage_folder(target)`` a hidden folder for a writer that makes several files (a vector format), whose files
    ``attach_folder`` adds; ``attach(temporary, target)`` adds a file made by someone else (a GDAL side file);
    ``add_step`` a change made in the same commit; ``adopt`` what another one staged. ``commit()`` checks every
    file (flushed to the disk, not empty) and moves everything; ``abort()`` removes the temporary files. Either
    way nothing half-written is left. No target may be one of ``protected`` (the job's inputs).
    """

    def __init__(self, overwrite: bool = False, protected: Iterable[Path] = ()) -> None:
        self.overwrite = overwrite
        self.protected = list(protected)
        self.items: list[tuple[Path, Path]] = []
        self.replaced: list[Path] = []  # targets whose existing file is removed even if nothing replaces it
        self.steps: list[CommitStep] = []
        self.folders: list[Path] = []  # staged folders, removed at the end
        self.locks: dict[Path, int] = {}  # temporary -> the descriptor holding its lock
        self.new_only: set[Path] = set()  # targets that must not exist when the files move, even with overwrite

    def stage(self, target: Path, suffix: str = ".tif") -> Path:
        temporary, descriptor = _reserve(target, suffix)
        if descriptor is not None:
            self.locks[temporary] = descriptor
        self.items.append((temporary, target))
        return temporary

    def write(self, target: Path, data: bytes, suffix: str) -> Path:
        """Stage ``data`` for ``target``, written whole and checked (a full disk raises OutputError now)."""
        temporary = self.stage(target, suffix)
        write_bytes(temporary, data, target.parent, self.locks.get(temporary))
        return temporary

    def stage_folder(self, target: Path) -> Path:
        """A hidden, locked folder beside ``target`` for a writer that makes several files; removed at the end."""
        folder, descriptor = _reserve(target, "", folder=True)
        if descriptor is not None:
            self.locks[folder] = descriptor
        self.folders.append(folder)
        return folder

    def attach_folder(self, folder: Path, destination: Path, new_only: bool = False) -> list[Path]:
        """Add every file a writer made in the staged ``folder``, each to ``destination`` under its own name
        (``new_only``: refused if the target appeared meanwhile, even with ``overwrite``).

        Raises:
            OutputError: the writer made a folder (formats stored as folders are not supported).
        """
        targets = []
        for entry in sorted(folder.iterdir()):
            if entry.is_dir() or entry.is_symlink():
                raise OutputError(f"The output format stores {entry.name} as a folder, which cannot be written all "
                                  "at once: choose a GeoPackage, CSV or another single-file format.")
            self.attach(entry, destination / entry.name, new_only)
            targets.append(destination / entry.name)
        return targets

    def attach(self, temporary: Path, target: Path, new_only: bool = False) -> None:
        self.items.append((temporary, target))
        if new_only:
            self.new_only.add(target)

    def add_step(self, step: CommitStep) -> None:
        self.steps.append(step)

    def adopt(self, other: StagedFiles) -> None:
        """Take over what ``other`` staged: one :meth:`commit` moves both, or neither; ``other`` is left empty."""
        for name in ("items", "replaced", "steps", "folders"):
            getattr(self, name).extend(getattr(other, name))
            setattr(other, name, [])
        self.locks, other.locks = {**self.locks, **other.locks}, {}
        self.new_only, other.new_only = self.new_only | other.new_only, set()

    def drop(self, temporary: Path) -> None:
        """Forget a staged file and remove it (it will not be moved anywhere)."""
        self.items = [(tmp, target) for tmp, target in self.items if tmp != temporary]
        with contextlib.suppress(OSError):
            temporary.unlink()
        self._release(temporary)

    def target_of(self, temporary: Path) -> Path:
        return next(target for tmp, target in self.items if tmp == temporary)

    def replace_stale(self, target: Path) -> None:
        """On commit, remove ``target`` if it exists and nothing staged replaces it (a stale side file)."""
        self.replaced.append(target)

    def _check(self) -> None:
        """Every target is no input, and every staged file is on the disk and not empty."""
        for _, target in self.items:
            for source in self.protected:
                if _same_file(target, source):
                    raise OutputError(f"The output {target} would overwrite the input {source}: choose another "
                                      "output file name (an input is never overwritten). Nothing was written.")
        for target in self.replaced:
            if any(_same_file(target, source) for source in self.protected):
                raise OutputError(f"{target} belongs to an input and is never removed. Nothing was written.")
        for temporary, target in self.items:
            verify_file(temporary, target.parent)

    def commit(self) -> list[Path]:
        """Check every staged file and move it into place, or none.

        Existing targets may be replaced only with ``overwrite`` (or when
        marked stale); each is first backed up under a hidden name and put
        back if anything fails. The steps are prepared before the moves and
        finished after them. Stale side files without a replacement are
        removed at the end.

        Raises:
            OutputError: a file did not reach the disk whole, a target is an
                input or appeared meanwhile (without ``overwrite``), or a move
                or step failed; every target is as it was before.
        """
        try:
            self._check()
        except BaseException:
            self.abort()
            raise
        stale = set(self.replaced)
        targets = [target for _, target in self.items]
        backups: dict[Path, Path] = {}
        placed: list[Path] = []
        prepared: list[CommitStep] = []
        try:
            for step in self.steps:
                prepared.append(step)
                step.prepare()
            for target in list(dict.fromkeys([*targets, *self.replaced])):
                if os.path.lexists(target):
                    if (not self.overwrite or target in self.new_only) and target not in stale:
                        raise OutputError(f"{target} appeared while the job ran: it was not replaced, and nothing "
                                          "was written. Choose another file name.")
                    backups[target] = _backup(target)
            for temporary, target in self.items:
                placed.append(target)
                if target in backups:
                    os.replace(temporary, target)  # atomic: the target is the old file or the new one
                else:
                    _place(temporary, target)
            for step in self.steps:
                step.finish()
        except BaseException as error:
            folder = Path(error.filename).parent if isinstance(error, OSError) and error.filename else \
                next((target.parent for _, target in self.items), Path.cwd())
            for step in prepared:
                step.undo()
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
                raise output_error(folder, error) from None
            raise
        for target in stale - set(targets):
            with contextlib.suppress(OSError):
                target.unlink()
        for backup in backups.values():
            with contextlib.suppress(OSError):
                backup.unlink()
        for folder in dict.fromkeys(target.parent for target in [*placed, *stale]):
            _sync_folder(folder)
        self.items, self.steps = [], []
        self._remove_folders()
        self._release()
        return placed

    def abort(self) -> None:
        """Remove every temporary file (and GDAL side files of them) and staged folder."""
        for temporary, _ in self.items:
            for leftover in (temporary, aux_path(temporary)):
                with contextlib.suppress(OSError):
                    leftover.unlink()
        self.items, self.steps = [], []
        self._remove_folders()
        self._release()

    def _remove_folders(self) -> None:
        for folder in self.folders:
            with contextlib.suppress(OSError):
                shutil.rmtree(folder)
        self.folders = []

    def _release(self, temporary: Optional[Path] = None) -> None:
        """Let go of the lock of ``temporary`` (None: of every staged file): its job is done with it."""
        for path in [temporary] if temporary is not None else list(self.locks):
            descriptor = self.locks.pop(path, None) if path is not None else None
            if descriptor is not None:
                with contextlib.suppress(OSError):
                    os.close(descriptor)


def write_whole(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` (replacing it) the way a job writes its files: staged, checked, moved."""
    files = StagedFiles(overwrite=True)
    try:
        files.write(target, data, target.suffix)
    except BaseException:
        files.abort()
        raise
    files.commit()
