"""Where a job's files go, checked before it starts (no QGIS, no GDAL).

Two promises: a job never writes over its own inputs or over a file that
belongs to something else, and its outputs appear together or not at all.
Planning (:func:`plan_outputs`) only looks at the disk; the run changes it
(:mod:`.staging`: the default folder, an interrupted run's leftovers, then
the files written under hidden temporary names and moved into place at once).
"""

from __future__ import annotations

import contextlib
import os
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
