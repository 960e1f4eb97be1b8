"""The plugin's side of the backend wire format, version 1 (stdlib + numpy only).

A *bundle* is an uncompressed ZIP of ``.npy`` arrays and ``.json`` documents;
``segearth_backend/serve/protocol.py`` is the backend's side. The two packages never
import each other; ``tests/plugin/client/test_backend_client.py`` runs one against
the other over a real socket.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from typing import Any, Optional

import numpy as np

PROTOCOL_VERSION = 1
BUNDLE_TYPE = "application/x-segearth-bundle"
#: The longest side an array in a bundle may declare.
MAX_ARRAY_SIDE = 2**31 - 1
#: ZIP flag bits a bundle member may carry: data descriptor (0x08) and UTF-8 names (0x800); no encryption.
ALLOWED_ZIP_FLAGS = 0x08 | 0x800


def encode(members: dict[str, Any]) -> bytes:
    """Arrays for ``*.npy`` names, JSON-able values for ``*.json`` names -> bundle bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, value in members.items():
            if name.endswith(".npy"):
                array = np.ascontiguousarray(value)
                # Straight into the archive: no intermediate copy of the array's bytes.
                with archive.open(name, "w", force_zip64=array.nbytes > 2**30) as member:
                    np.save(member, array, allow_pickle=False)
            else:
                archive.writestr(name, json.dumps(value).encode("utf-8"))
    return buffer.getvalue()


def decode(body: bytes, allowed: Optional[set[str]] = None) -> dict[str, Any]:
    """Bundle bytes -> ``{name: ndarray or JSON value}``.

    Members must be stored uncompressed (a compressed member could inflate
    without bound) and every array's declared shape and dtype must match its
    size before anything is allocated. Members outside ``allowed`` (when
    given) are not read.

    Raises:
        ValueError: the bundle is malformed, with the reason.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(body))
    except (zipfile.BadZipFile, ValueError):
        raise ValueError("it is not a SegEarth bundle") from None
    infos = [info for info in archive.infolist() if allowed is None or info.filename in allowed]
    if sum(info.file_size for info in infos) > len(body):
        raise ValueError("its members are larger than the bundle (truncated or compressed)")
    members: dict[str, Any] = {}
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(f"member {info.filename} is compressed; bundles are stored uncompressed")
        if info.flag_bits & ~ALLOWED_ZIP_FLAGS:
            raise ValueError(f"member {info.filename} is encrypted or uses ZIP features bundles do not")
        try:
            if info.filename.endswith(".npy"):
                members[info.filename] = _read_npy(archive, info)
            else:
                members[info.filename] = json.loads(archive.read(info).decode("utf-8"))
        except (zipfile.BadZipFile, OSError, EOFError, UnicodeDecodeError, RecursionError, RuntimeError,
                NotImplementedError) as error:
            raise ValueError(f"member {info.filename} is unreadable ({type(error).__name__}: "
                             f"{str(error)[:120]})") from None
    return members


def _read_npy(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One ``.npy`` member; its header is checked against its size before the array is allocated."""
    name = info.filename
    with archive.open(info) as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"{name} has the unsupported .npy version {version}")
        if dtype.hasobject or dtype.itemsize == 0:
            raise ValueError(f"{name} is not a plain numeric array")
        if not all(isinstance(side, int) and 0 <= side <= MAX_ARRAY_SIDE for side in shape):
            raise ValueError(f"{name} declares an impossible shape")
        count = math.prod(shape)
        declared = count * dtype.itemsize
        if declared != info.file_size - stream.tell():
            raise ValueError(f"{name} declares {declared} bytes of data but holds {info.file_size - stream.tell()}")
        data = stream.read(declared)
    if len(data) != declared:
        raise ValueError(f"{name} is truncated")
    return np.frombuffer(data, dtype, count).reshape(shape, order="F" if fortran else "C").copy()
