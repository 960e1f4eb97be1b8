"""Where a job's files go, checked before it starts (no QGIS, no GDAL).

A job never writes over its own inputs or over a file that belongs to something else. Planning
(:func:`plan_outputs`) only looks at the disk; the run changes it (:mod:`.staging`: the default folder, an
interrupted run's leftovers (:mod:`.leftovers`), then the files written under hidden temporary names, checked,
and moved into place at once).
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from ..errors import OutputError
from .leftovers import hidden_backup

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
        create_folder: the targets' folder does not exist yet and the run creates it (the default
            results folder).
    """

    labels: Path
    probabilities: Optional[Path] = None
    style: Optional[Path] = None
    overwrite: bool = False
    warnings: tuple[str, ...] = field(default_factory=tuple)
    stale: tuple[Path, ...] = field(default_factory=tuple)
    inputs: tuple[Path, ...] = field(default_factory=tuple)
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
        hidden = hidden_backup(target)  # an interrupted run's backup, which the run puts back first
        if (target.exists() or hidden is not None) and not overwrite:
            where = f" (as {hidden.name}, the backup an interrupted run left: a run puts it back)" if hidden else ""
            raise OutputError(f"{target} already exists{where}: choose another file name, or confirm overwriting it.")
        if target.exists() and not target.is_file():
            raise OutputError(f"{target} is a folder, not a file: choose a file name inside it.")
        check_folder(target, create_folder)
        # An old result's side files go with it; a side file whose raster is gone belongs to nothing. Side files
        # another file of this stem may claim (the input's world file beside out.tiff) are never touched.
        stale += [side for side in owned_side_files(target, input_paths)
                  if target.exists() or side.name.endswith(AUX_SUFFIX)]
    if prob_path is not None and (_same_file(prob_path, label_path) or aux_path(prob_path) == aux_path(label_path)):
        raise OutputError(f"The segmentation and the probabilities would both be written to {label_path}: give them "
                          "different file names.")
    style: Optional[Path] = style_path(label_path)
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
                      tuple(input_paths), create_folder and not label_path.parent.is_dir())


def check_folder(target: Path, create: bool = False) -> None:
    """Raise OutputError unless ``target``'s folder is a folder this user may write in (or, with ``create``,
    one the run can make: its nearest existing parent is a writable folder)."""
    folder = target.parent
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
