"""Finding the SimFeatUp checkpoint: a local file, or the authors' file downloaded once."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from ..config import ENV_SIMFEATUP_SHA256, offline
from ..errors import ChecksumError, WeightsNotFoundError

log = logging.getLogger(__name__)

SIMFEATUP_FILENAME = "xclip_jbu_one_million_aid.ckpt"
#: The authors' repository at a fixed commit (the one that added the Köln demo, whose demo.py
#: loads this file), never the moving ``main`` branch.
SIMFEATUP_COMMIT = "fc496f113e06d4fc8cb5ad8c1b8266ae76fc6195"
SIMFEATUP_URL = (
    f"https://github.com/likyoo/SegEarth-OV/raw/{SIMFEATUP_COMMIT}/simfeatup_dev/weights/{SIMFEATUP_FILENAME}"
)
#: sha256 of that file. UNKNOWN: the machines this was built on had no network to fetch it. Until it is
#: filled in, a download is accepted unverified (the log says so and gives the hash it got); set
#: ``SEGEARTH_SIMFEATUP_SHA256`` to require a hash.
SIMFEATUP_SHA256: Optional[str] = None
#: Names that select the authors' checkpoint rather than a file path.
SIMFEATUP_TAGS = ("simfeatup", "default", "xclip_jbu_one_million_aid")
#: Names that select plain bilinear upsampling.
BILINEAR_TAGS = ("none", "bilinear")
#: Anything smaller cannot be the checkpoint (an HTML error page, say).
MIN_CHECKPOINT_BYTES = 64 * 1024

Progress = Callable[[int, Optional[int]], None]


def simfeatup_cache_path(cache_dir: Path) -> Path:
    return cache_dir / "simfeatup" / SIMFEATUP_FILENAME


def download(url: str, target: Path, progress: Optional[Progress] = None,
             timeout: float = 60.0, min_bytes: int = MIN_CHECKPOINT_BYTES, sha256: Optional[str] = None) -> Path:
    """Download ``url`` to ``target`` atomically (temp file, size and hash checks, rename).

    ``progress(done_bytes, total_bytes_or_None)`` is called as data arrives.
    Nothing is left at ``target`` unless the whole file arrived (and, when
    ``sha256`` is given, has that hash; without it the hash is logged).

    Raises:
        OSError / urllib.error.URLError: network or disk failure.
        ValueError: fewer bytes than announced, or fewer than ``min_bytes``.
        ChecksumError: the file's sha256 is not ``sha256``.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            digest = hashlib.sha256()
            while True:
                chunk = response.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        if total is not None and done != total:
            raise ValueError(f"download of {url} stopped after {done} of {total} bytes")
        if done < min_bytes:
            raise ValueError(f"download of {url} gave only {done} bytes; that is not the file")
        got = digest.hexdigest()
        if sha256 is not None and got != sha256.lower():
            raise ChecksumError(
                f"The file downloaded from {url} has sha256 {got}, expected {sha256.lower()}: it was changed or "
                f"corrupted on the way, so it was not kept. Try again, or download it by hand and check it.")
        if sha256 is None:
            log.warning("%s is not verified (no sha256 is pinned); its sha256 is %s. Set %s to that value to "
                        "require it.", target.name, got, ENV_SIMFEATUP_SHA256)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def _log_progress(done: int, total: Optional[int]) -> None:
    if total:
        log.info("downloading SimFeatUp checkpoint: %.1f / %.1f MB", done / 1e6, total / 1e6)


def resolve_upsampler_weights(spec: str, cache_dir: Path, url: str = SIMFEATUP_URL,
                              progress: Optional[Progress] = _log_progress,
                              sha256: Optional[str] = SIMFEATUP_SHA256) -> Optional[Path]:
    """The checkpoint path for ``spec``, or None for bilinear upsampling.

    Args:
        spec: a file path, one of ``SIMFEATUP_TAGS`` (download the authors'
            checkpoint into ``cache_dir`` on first use), or ``"none"``.
        sha256: the hash a download must have (None: accepted unverified, hash logged).

    Raises:
        WeightsNotFoundError: no such file; or the download is impossible
            (offline, network error), with where to put the file by hand.
        ChecksumError: the download does not have the expected hash (not kept).
    """
    text = spec.strip()
    if text.lower() in BILINEAR_TAGS:
        return None
    if text.lower() not in SIMFEATUP_TAGS:
        path = Path(text).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"SimFeatUp checkpoint '{spec}' does not exist: check the path, use 'simfeatup' "
                "to download the authors' checkpoint, or 'none' for bilinear upsampling."
            )
        return path
    target = simfeatup_cache_path(cache_dir)
    if target.is_file():
        return target
    manual = (
        f"Download {url} on a machine with internet and put it at {target} "
        "(or pass its path as the upsampler weights, SEGEARTH_UPSAMPLER_WEIGHTS), "
        "or use 'none' for bilinear upsampling."
    )
    if offline():
        raise WeightsNotFoundError(
            f"The SimFeatUp checkpoint is not cached and downloads are off (offline mode). {manual}")
    log.info("downloading SimFeatUp checkpoint from %s to %s", url, target)
    try:
        return download(url, target, progress=progress, sha256=sha256)
    except (OSError, urllib.error.URLError, ValueError) as error:
        raise WeightsNotFoundError(f"The SimFeatUp checkpoint could not be downloaded ({error}). {manual}") from None

