"""Where a job's files go, and putting them there all at once (no QGIS, no GDAL).

Three promises: a job never writes over its own inputs or over a file that
belongs to something else; its outputs appear together, whole and on the disk,
or not at all; and what a dead job left is recognised and removed at the next
run of that target. Files are written under hidden temporary names in the
target folder (:class:`StagedFiles`), each held under an OS lock by the job
that writes it; at the end every file is flushed to the disk and checked, then
moved into place in one step; a move that would replace a file is refused
unless overwriting was asked for, and a failure part-way puts back what was
there before.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Protocol

from ..errors import OutputError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; there a leftover is recognised by its age (STALE_SECONDS)
    fcntl = None  # type: ignore[assignment]

RASTER_SUFFIXES = (".tif", ".tiff")
STYLE_SUFFIX = ".qml"
AUX_SUFFIX = ".aux.xml"
#: GDAL side files named after a raster's whole file name (``out.tif.ovr``): they belong to that file alone.
OWN_SIDE_SUFFIXES = (AUX_SUFFIX, ".ovr", ".msk", ".xml")
#: Side files named after a file's stem (``out.tfw``, ``out.qml``, ``out.prj``): every file of that stem may claim
#: them, so they are never anybody's to remove while another file of that stem exists.
STEM_SIDE_SUFFIXES = (STYLE_SUFFIX, ".qmd", ".wld", ".prj", ".aux", ".tfw", ".tifw", ".tiffw")
#: SQLite's side files of a GeoPackage (``x.gpkg-wal``): they belong to the GeoPackage.
SQLITE_SIDE_SUFFIXES = ("-wal", "-shm", "-journal")


def normalise_output(path: str) -> Path:
    """An absolute GeoTIFF path: ``~`` expanded, ``.tif`` added when the name has no GeoTIFF suffix."""
    text = path.strip()
    if not text:
        raise OutputError("No output file was given: choose a file name, or leave it empty for a new file.")
    target = Path(text).expanduser()
    if target.suffix.lower() not in RASTER_SUFFIXES:
        target = target.with_name(target.name + ".tif")
    return Path(os.path.abspath(target))


def style_path(target: Path) -> Path:
    """The ``.qml`` QGIS loads as the default style of ``target``."""
    return target.with_suffix(STYLE_SUFFIX)


def aux_path(target: Path) -> Path:
    """GDAL's ``.aux.xml`` side file of ``target`` (category names, statistics)."""
    return target.with_name(target.name + AUX_SUFFIX)


def world_files(target: Path) -> list[Path]:
    """The world files GDAL reads for ``target``: ``.tfw`` and ``.tifw`` for ``out.tif``, ``.tfw`` and ``.tiffw``
    for ``out.tiff`` (first and last letter of the suffix + w, the suffix + w), and ``.wld``."""
    suffix = target.suffix.lower().lstrip(".")
    names = [f"{suffix[0]}{suffix[-1]}w", f"{suffix}w"] if suffix else []
    return [target.with_suffix(f".{name}") for name in dict.fromkeys([*names, "wld"])]


def raster_side_files(target: Path) -> list[Path]:
    """Every GDAL side file ``target`` may have (overviews, mask, statistics, metadata, world files), whoever
    else may claim the ones named after its stem (see :func:`owned_side_files`)."""
    return [target.with_name(target.name + suffix) for suffix in OWN_SIDE_SUFFIXES] + world_files(target)


def stem_owners(target: Path) -> list[Path]:
    """Other files in ``target``'s folder with its stem (``scene.tif`` for ``scene.tiff``): they claim the side
    files named after that stem (world files, ``.qml``, ``.prj``) too. Side files and hidden files claim nothing."""
    folder = target.parent
    if not folder.is_dir():
        return []
    owners = []
    for entry in folder.iterdir():
        if entry.stem.lower() != target.stem.lower() or entry.name.startswith(".") or _same_file(entry, target):
            continue
        if entry.suffix.lower() in STEM_SIDE_SUFFIXES or entry.name.lower().endswith(OWN_SIDE_SUFFIXES
                                                                                     + SQLITE_SIDE_SUFFIXES):
            continue
        owners.append(entry)
    return sorted(owners)


def owned_side_files(target: Path, inputs: Iterable[Path] = ()) -> list[Path]:
    """The existing side files that belong to ``target`` alone: those named after its whole name, and those
    named after its stem only while no other file of that stem exists; never one of ``inputs``."""
    protected = list(inputs)
    candidates = [target.with_name(target.name + suffix) for suffix in OWN_SIDE_SUFFIXES]
    if not stem_owners(target):
        candidates += world_files(target)
    return [side for side in candidates if os.path.lexists(side)
            and not any(_same_file(side, source) for source in protected)]


# ------------------------------------------------------------------ what a dead job left behind

#: Where OS locks are missing (Windows, a file system without them), a leftover older than this is from a job
#: that is certainly not running any more.
STALE_SECONDS = 6 * 3600
TEMPORARY_MARK = "part"
BACKUP_MARK = "old"

_HELD, _BUSY, _UNKNOWN = "held", "busy", "unknown"


def _try_lock(descriptor: int, path: Path) -> str:
    """Take the exclusive lock of ``descriptor`` without waiting, if ``path`` still names that file.

    Returns ``held`` (ours now), ``busy`` (another process holds it, or the name now names another file) or
    ``unknown`` (no locks here).
    """
    if fcntl is None:
        return _UNKNOWN
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _BUSY
    except OSError:  # ENOLCK, EOPNOTSUPP: a file system without locks
        return _UNKNOWN
    try:
        same = os.path.samestat(os.fstat(descriptor), os.stat(path))
    except OSError:
        same = False
    return _HELD if same else _BUSY


def _leftovers(target: Path) -> dict[str, list[tuple[Path, str]]]:
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


def _age(path: Path, now: float) -> float:
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
                states.append(_UNKNOWN)
                continue
            state = _try_lock(descriptor, path)
            if state == _HELD:
                held.append(descriptor)
            else:
                os.close(descriptor)
            states.append(state)
        if _BUSY in states:
            return []  # its job is still writing
        if _UNKNOWN in states and min(_age(path, now) for path in paths) <= STALE_SECONDS:
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
    for entries in _leftovers(target).values():
        for backup in [path for path, kind in entries if kind == BACKUP_MARK]:
            if not os.path.lexists(target):
                with contextlib.suppress(OSError):
                    os.replace(backup, target)
                    done.append(f"{target.name} was restored from the backup an interrupted run left ({backup.name}).")
            elif _age(backup, now) > STALE_SECONDS:
                with contextlib.suppress(OSError):
                    backup.unlink()
                    done.append(f"An interrupted run's backup {backup.name} was removed.")
        temporaries = [path for path, kind in entries if kind == TEMPORARY_MARK]
        if temporaries:
            done += _remove_dead_temporaries(temporaries, now)
    return done


def _same_file(a: Path, b: Path) -> bool:
    if os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b)):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


@dataclass(frozen=True)
class OutputPlan:
    """The files a job will write, checked (see :func:`plan_outputs`).

    Attributes:
        labels: the class GeoTIFF.
        probabilities: the probabilities GeoTIFF, or None.
        style: the ``.qml`` to write beside ``labels``, or None when that name
            is another file's style (see ``warnings``).
        overwrite: whether existing targets may be replaced.
        warnings: things the user should know (a style that was not written...).
        stale: side files of the targets that must go when the targets are written (an old result's
            overviews; an ``.aux.xml`` left without its raster); never an input's or another file's.
        inputs: the files the job reads, which no move may ever replace.
    """

    labels: Path
    probabilities: Optional[Path] = None
    style: Optional[Path] = None
    overwrite: bool = False
    warnings: tuple[str, ...] = field(default_factory=tuple)
    stale: tuple[Path, ...] = field(default_factory=tuple)
    inputs: tuple[Path, ...] = field(default_factory=tuple)

    @property
    def targets(self) -> list[Path]:
        return [p for p in (self.labels, self.probabilities) if p is not None]


def plan_outputs(labels: str, probabilities: Optional[str] = None, inputs: Iterable[str] = (),
                 overwrite: bool = False) -> OutputPlan:
    """Check where a job will write, before it starts.

    Args:
        labels: the class GeoTIFF's path (``.tif`` added if missing).
        probabilities: the probabilities GeoTIFF's path, or None.
        inputs: files the job reads (the raster and its side files, a mask
            layer's file); no output may be one of them.
        overwrite: replace existing targets (the dock asks first; Processing's
            convention is to replace).

    Raises:
        OutputError: an output is an input, two outputs are the same file, a
            target exists (without ``overwrite``), or the folder is missing or
            not writable. The message names the file and what to do.
    """
    label_path = normalise_output(labels)
    prob_path = normalise_output(probabilities) if probabilities else None
    input_paths = [Path(p) for p in inputs if p]
    warnings: list[str] = []
    stale: list[Path] = []
    for target in (label_path, prob_path):
        if target is None:
            continue
        warnings += recover_leftovers(target)
        for candidate in (target, aux_path(target), style_path(target) if target == label_path else None):
            if candidate is None:
                continue
            for source in input_paths:
                if _same_file(candidate, source):
                    raise OutputError(
                        f"The output {target} would overwrite the input {source}: choose another output file name "
                        "(an input is never overwritten).")
        if target.exists() and not overwrite:
            raise OutputError(f"{target} already exists: choose another file name, or confirm overwriting it.")
        if target.exists() and not target.is_file():
            raise OutputError(f"{target} is a folder, not a file: choose a file name inside it.")
        check_folder(target)
        # An old result's side files go with it; a side file whose raster is gone belongs to nothing. Side files
        # another file of this stem may claim (the input's world file beside out.tiff) are never touched.
        stale += [side for side in owned_side_files(target, input_paths)
                  if target.exists() or side.name.endswith(AUX_SUFFIX)]
    if prob_path is not None and (_same_file(prob_path, label_path) or aux_path(prob_path) == aux_path(label_path)):
        raise OutputError(f"The segmentation and the probabilities would both be written to {label_path}: give them "
                          "different file names.")
    style: Optional[Path] = style_path(label_path)
    warnings += recover_leftovers(style_path(label_path))
    owners = stem_owners(label_path)
    if prob_path is not None and style_path(prob_path) == style:
        owners.append(prob_path)
    if owners:
        warnings.append(f"The style {style} was not written: that name is the style of {owners[0].name}. The result "
                        "is styled in this project; save it under another name to get a .qml beside it.")
        style = None
    elif style is not None and style.exists() and not label_path.exists():
        warnings.append(f"The style {style} was not written: that file exists and does not belong to an earlier "
                        "result of this name.")
        style = None
    return OutputPlan(label_path, prob_path, style, overwrite, tuple(warnings), tuple(dict.fromkeys(stale)),
                      tuple(input_paths))


def check_folder(target: Path) -> None:
    """Raise OutputError unless ``target``'s folder exists and this user may write in it."""
    folder = target.parent
    if not folder.is_dir():
        raise OutputError(f"The folder {folder} does not exist: create it or choose another folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"The folder {folder} is not writable (permission denied): choose another folder.")


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file: the same real path (links, ``..``, case where the OS ignores it), or
    the same file by its identity (hard links)."""
    return _same_file(a, b)


#: A write that fails with less than this free on the disk failed because the disk is full, whatever the writer
#: said: GDAL says so in no one wording ("No space left on device", "TIFFAppendToStrip: Write error"...), and a
#: GeoTIFF is written a tile (at most a few hundred KB) at a time.
FULL_DISK_MARGIN = 1 << 20


def disk_nearly_full(folder: Path) -> bool:
    """Whether the disk holding ``folder`` has less than :data:`FULL_DISK_MARGIN` bytes free for this user."""
    try:
        return shutil.disk_usage(folder).free < FULL_DISK_MARGIN
    except OSError:
        return False


def output_error(folder: Path, error: BaseException) -> OutputError:
    """An OutputError that names the folder and the cause (full disk, permissions...).

    The cause comes from the error's ``errno``; an error without one (GDAL's) is a full disk when the disk
    holding ``folder`` has (almost) no space left, whatever its text says.
    """
    code = getattr(error, "errno", None)
    reason = os.strerror(code) if isinstance(code, int) else str(error)
    if code in (errno.ENOSPC, errno.EDQUOT) or (code is None and disk_nearly_full(folder)):
        return OutputError(f"The disk holding {folder} is full (no space left on device): free some space or choose "
                           "another folder. Nothing was written.")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"Cannot write in {folder} ({reason}): choose another folder. Nothing was written.")
    return OutputError(f"Cannot write in {folder}: {reason}. Nothing was written.")


# ------------------------------------------------------------------ staged, verified, all-or-nothing

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
        state = _try_lock(descriptor, candidate)
        if state == _HELD:
            return candidate, descriptor
        os.close(descriptor)
        if state == _UNKNOWN:
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

    ``stage(target)`` reserves a hidden temporary file beside ``target``, held
    under an OS lock until the end (so another run can tell a live job's file
    from a dead one's); ``write(target, data)`` stages data written whole;
    ``stage_folder(target)`` a hidden folder for a writer that makes several
    files (a vector format), whose files ``attach_folder`` adds;
    ``attach(temporary, target)`` adds a file made by someone else (a GDAL
    side file); ``add_step`` a change made in the same commit. ``commit()``
    checks every file (flushed to the disk, not empty) and moves everything;
    ``abort()`` removes the temporary files. Either way nothing half-written is
    left. No target may be one of ``protected`` (the job's inputs).
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
