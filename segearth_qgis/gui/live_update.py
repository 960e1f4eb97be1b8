"""Update while typing: the dock's last result, and what the next re-segmentation replaces.

The backend keeps each window's image features (``SEGEARTH_FEATURE_CACHE_MB``),
so a new class list on the same area is a re-query, not a new run. The dock
re-segments the last area a moment after the classes, threshold, background or
lambda stop changing; the new result layer takes the previous one's place
unless the user kept (pinned) it. Files written by a live update are the
dock's own and are deleted with their layer; a result the user asked for with
Segment stays on disk (only its layer leaves the map).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from qgis.core import QgsProject

from ..job.engine import JobResult
from ..job.request import JobInputs

#: Quiet time after the last edit before the area is re-segmented (milliseconds).
LIVE_DELAY_MS = 1000

#: A file as it was written: (device, inode, modification time in ns).
Identity = tuple[int, int, int]


def identities(paths: Sequence[Path]) -> dict[Path, Identity]:
    """The identity of each of ``paths`` that exists (what :meth:`LiveResults.replace_with` may delete)."""
    found: dict[Path, Identity] = {}
    for path in paths:
        try:
            status = path.stat()
        except OSError:
            continue
        found[path] = (status.st_dev, status.st_ino, status.st_mtime_ns)
    return found


@dataclass
class LastResult:
    """One result on the map: the inputs that made it, its layers, and the files the dock may delete."""

    inputs: JobInputs
    layer_ids: list[str] = field(default_factory=list)
    #: The files this update wrote, as written: one replaced since (same name) is not the dock's to delete.
    owned_files: dict[Path, Identity] = field(default_factory=dict)
    pinned: bool = False


def result_files(result: JobResult) -> list[Path]:
    """Every file a job wrote (the classes, their style, the probabilities, their GDAL side files), and only those:
    never a file beside them that belongs to something else (the input's world file)."""
    return list(result.written)


class LiveResults:
    """The last result; ``replace_with`` swaps it for a new one (removing the old unless pinned)."""

    def __init__(self) -> None:
        self.last: Optional[LastResult] = None

    def can_update(self) -> bool:
        return self.last is not None

    def pin(self) -> None:
        """Keep the last result: the next update adds a layer beside it."""
        if self.last is not None:
            self.last.pinned = True

    def replace_with(self, new: LastResult, live: bool) -> Optional[str]:
        """Record ``new`` as the last result. When ``live``, the previous unpinned one leaves the map (and its
        own files the disk). Returns a line for the user saying what was replaced, or None."""
        previous, self.last = self.last, new
        if not live or previous is None or previous.pinned:
            return None
        project = QgsProject.instance()
        present = [layer_id for layer_id in previous.layer_ids if project.mapLayer(layer_id) is not None]
        if present:
            project.removeMapLayers(present)
        for path, identity in previous.owned_files.items():
            if identities([path]).get(path) != identity:
                continue  # gone, or written again since (by the user): not ours any more
            with contextlib.suppress(OSError):  # a file QGIS still holds (Windows) stays; it is named uniquely
                path.unlink()
        return "replaced the previous result" if present else None
