"""Where a job's files go, and putting them there all at once (no QGIS, no GDAL).

Two promises: a job never writes over its own inputs or over a file that
belongs to something else, and its outputs appear together or not at all.
Planning (:func:`plan_outputs`) only looks at the disk; the run changes it
(:func:`prepare_targets`: the default folder, an interrupted run's leftovers).
Files are written under hidden temporary names in the target folder
(:class:`StagedFiles`), then moved into place in one step at the end; a move
that would replace a file is refused unless overwriting was asked for, and a
failure part-way puts back what was there before.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from ..errors import OutputError

RASTER_SUFFIXES = (".tif", ".tiff")
#: Sidecars QGIS / GDAL keep beside a raster: a sidecar belongs to the file it is named after.
STYLE_SUFFIX = ".qml"
AUX_SUFFIX = ".aux.xml"


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


#: GDAL side files that belong to a raster: removed when the raster is replaced, so an old result's
#: overviews, mask or statistics never describe a new one.
def raster_side_files(target: Path) -> list[Path]:
    """``target``'s GDAL side files (overviews, mask, statistics, world file, metadata) named after it."""
    return [target.with_name(target.name + ext) for ext in (".aux.xml", ".ovr", ".msk", ".xml")] + \
        [target.with_suffix(".tfw"), target.with_suffix(".tifw")]


def _leftovers(target: Path) -> list[Path]:
    """Hidden temporary files and backups of ``target`` that a crashed job left (see StagedFiles)."""
    folder = target.parent
    if not folder.is_dir():
        return []
    prefix = f".{target.name}."
    return [entry for entry in folder.iterdir() if entry.name.startswith(prefix)
            and (".part" in entry.name or entry.name.endswith(".old"))]


#: A leftover older than this is from a job that is certainly not running any more.
STALE_SECONDS = 6 * 3600


def recover_leftovers(target: Path, now: Optional[float] = None) -> list[str]:
    """Put back a user's file that a crash left only as its hidden backup; remove old temporary files.

    Returns what was done, for the job's messages.
    """
    import time

    done = []
    now = time.time() if now is None else now
    for leftover in sorted(_leftovers(target)):
        try:
            age = now - leftover.stat().st_mtime
        except OSError:
            continue
        if leftover.name.endswith(".old") and not os.path.lexists(target):
            with contextlib.suppress(OSError):
                os.replace(leftover, target)
                done.append(f"{target.name} was restored from the backup an interrupted run left ({leftover.name}).")
        elif age > STALE_SECONDS:
            with contextlib.suppress(OSError):
                leftover.unlink()
                done.append(f"An interrupted run's temporary file {leftover.name} was removed.")
    return done


def _same_file(a: Path, b: Path) -> bool:
    if os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b)):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _style_owners(target: Path) -> list[Path]:
    """Other files that ``target``'s ``.qml`` would also be the default style of (same folder, same stem)."""
    folder = target.parent
    if not folder.is_dir():
        return []
    owners = []
    for entry in folder.iterdir():
        if entry.stem.lower() != target.stem.lower() or _same_file(entry, target):
            continue
        if entry.name.lower().endswith((STYLE_SUFFIX, AUX_SUFFIX)) or entry.name.startswith("."):
            continue
        owners.append(entry)
    return sorted(owners)


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
            overviews; an ``.aux.xml`` left without its raster).
        create_folder: the targets' folder does not exist yet and the run creates it (the default
            results folder).
    """

    labels: Path
    probabilities: Optional[Path] = None
    style: Optional[Path] = None
    overwrite: bool = False
    warnings: tuple[str, ...] = field(default_factory=tuple)
    stale: tuple[Path, ...] = field(default_factory=tuple)
    create_folder: bool = False

    @property
    def targets(self) -> list[Path]:
        return [p for p in (self.labels, self.probabilities) if p is not None]


def plan_outputs(labels: str, probabilities: Optional[str] = None, inputs: Iterable[str] = (),
                 overwrite: bool = False, create_folder: bool = False) -> OutputPlan:
    """Check where a job will write, before it starts, changing nothing on disk.

    Args:
        labels: the class GeoTIFF's path (``.tif`` added if missing).
        probabilities: the probabilities GeoTIFF's path, or None.
        inputs: files the job reads (the raster and its side files, a mask
            layer's file); no output may be one of them.
        overwrite: replace existing targets (the dock asks first; Processing's
            convention is to replace).
        create_folder: a missing folder is created by the run (the default results folder), provided
            its nearest existing parent is a writable folder.

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
        for candidate in (target, aux_path(target), style_path(target) if target == label_path else None):
            if candidate is None:
                continue
            for source in input_paths:
                if _same_file(candidate, source):
                    raise OutputError(
                        f"The output {target} would overwrite the input {source}: choose another output file name "
                        "(an input is never overwritten).")
        hidden = _hidden_backup(target)  # an interrupted run's backup, which the run puts back first
        if (target.exists() or hidden is not None) and not overwrite:
            where = f" (as {hidden.name}, the backup an interrupted run left: a run puts it back)" if hidden else ""
            raise OutputError(f"{target} already exists{where}: choose another file name, or confirm overwriting it.")
        if target.exists() and not target.is_file():
            raise OutputError(f"{target} is a folder, not a file: choose a file name inside it.")
        _check_folder(target.parent, create_folder)
        # An old result's side files go with it; a side file whose raster is gone belongs to nothing.
        stale += [side for side in raster_side_files(target) if os.path.lexists(side)
                  and (target.exists() or side.name.endswith(".aux.xml"))]
    if prob_path is not None and (_same_file(prob_path, label_path) or aux_path(prob_path) == aux_path(label_path)):
        raise OutputError(f"The segmentation and the probabilities would both be written to {label_path}: give them "
                          "different file names.")
    style: Optional[Path] = style_path(label_path)
    owners = _style_owners(label_path)
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
                      create_folder and not label_path.parent.is_dir())


def _hidden_backup(target: Path) -> Optional[Path]:
    """The backup of ``target`` that :func:`recover_leftovers` would put back (``target`` is missing), or None."""
    if os.path.lexists(target):
        return None
    backups = [leftover for leftover in _leftovers(target) if leftover.name.endswith(".old")]
    return sorted(backups)[0] if backups else None


def _check_folder(folder: Path, create: bool) -> None:
    """Raise OutputError unless ``folder`` is a writable folder (or, with ``create``, can be made as one)."""
    if not folder.is_dir():
        if not create:
            raise OutputError(f"The folder {folder} does not exist: create it or choose another folder.")
        parent = next((p for p in folder.parents if p.exists()), None)
        if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"The default output folder {folder} cannot be created ({parent} is not a writable "
                              "folder): choose another one in the panel's options.")
        return
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"The folder {folder} is not writable (permission denied): choose another folder.")


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


