"""The wire format between the QGIS plugin and the backend service (version 1).

A *bundle* is an uncompressed ZIP archive (``ZIP_STORED``) of named members:
``.npy`` arrays (read with ``allow_pickle=False``) and ``.json`` documents.
Requests to ``POST /segment`` carry ``params.json``, ``image.npy`` and
optionally ``valid.npy``; responses carry ``meta.json``, ``labels.npy`` and
optionally ``probabilities.npy``. The plugin has its own copy of this codec
(``segearth_qgis/client/protocol.py``): the two packages never import each other.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from typing import Any

import numpy as np

from ..errors import InputError

PROTOCOL_VERSION = 1
BUNDLE_TYPE = "application/x-segearth-bundle"
JSON_TYPE = "application/json"


class ProtocolError(InputError):
    """A request body that is not a well-formed bundle (HTTP 400)."""

    code = "bad_request"


def write_bundle(members: dict[str, Any]) -> bytes:
    """Pack arrays (``*.npy``) and JSON-able values (``*.json``) into a bundle."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, value in members.items():
            if name.endswith(".npy"):
                array = np.ascontiguousarray(value)
                # Straight into the archive: no intermediate copy of the array's bytes.
                with archive.open(name, "w", force_zip64=array.nbytes > 2**30) as member:
                    np.save(member, array, allow_pickle=False)
            elif name.endswith(".json"):
                archive.writestr(name, json.dumps(value).encode("utf-8"))
            else:
                raise ValueError(f"bundle member {name!r} must end in .npy or .json")
    return buffer.getvalue()


def read_bundle(body: bytes, allowed: set[str]) -> dict[str, Any]:
    """Unpack a bundle: ``{name: ndarray or JSON value}``.

    Arrays are allocated only after their declared shape and dtype are
    checked against the member's size (a header cannot make the server
    allocate more than the body holds).

    Raises:
        ProtocolError: not a ZIP, compressed or unknown members, duplicate
            names, declared sizes that do not add up, pickled or malformed arrays,
            invalid or too deeply nested JSON.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(body))
    except (zipfile.BadZipFile, ValueError):
        raise ProtocolError(
            f"The request body is not a SegEarth bundle (an uncompressed ZIP of .npy and .json "
            f"members, content type {BUNDLE_TYPE}).") from None
    infos = archive.infolist()
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        raise ProtocolError("The bundle has duplicate members.")
    unknown = sorted(set(names) - allowed)
    if unknown:
        raise ProtocolError(f"Unknown bundle member(s) {', '.join(unknown)}; expected {', '.join(sorted(allowed))}.")
    if sum(info.file_size for info in infos) > len(body):
        raise ProtocolError("The bundle's members are larger than the body: it is truncated or compressed.")
    members: dict[str, Any] = {}
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise ProtocolError(f"Bundle member {info.filename} is compressed; store members uncompressed.")
        try:
            if info.filename.endswith(".npy"):
                members[info.filename] = _read_npy(archive, info)
            else:
                members[info.filename] = _read_json(archive.read(info), info.filename)
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise ProtocolError(f"Bundle member {info.filename} is unreadable: {error}.") from None
    return members


def _read_json(data: bytes, name: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"{name} is not valid UTF-8 JSON: {error}.") from None
    except RecursionError:
        raise ProtocolError(f"{name} is nested too deeply; send a flat JSON object.") from None


def _read_npy(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """Read one ``.npy`` member, checking its declared shape and dtype against its size before allocating."""
    name = info.filename
    with archive.open(info) as stream:
        try:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
            else:
                raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
        except ValueError as error:
            reason = "it holds Python objects (pickles are refused)" if "pickle" in str(error) else str(error)
            raise ProtocolError(f"{name} is not a plain .npy array: {reason}.") from None
        if dtype.hasobject:
            raise ProtocolError(f"{name} is not a plain .npy array: it holds Python objects (pickles are refused).")
        if dtype.itemsize == 0:
            raise ProtocolError(f"{name} has an empty dtype ({dtype}); send numbers.")
        count = math.prod(shape)
        declared = count * dtype.itemsize
        present = info.file_size - stream.tell()
        if declared != present:
            raise ProtocolError(
                f"{name} declares a {' x '.join(map(str, shape)) or 'scalar'} {dtype} array ({declared} bytes) "
                f"but holds {present} bytes of data: send the array as np.save writes it.")
        flat = np.empty(count, dtype)
        view = flat.view(np.uint8).data
        done = 0
        while done < declared:
            chunk = stream.read(min(declared - done, 1 << 20))
            if not chunk:
                raise ProtocolError(f"{name} ends after {done} of {declared} bytes.")
            view[done:done + len(chunk)] = chunk
            done += len(chunk)
    return flat.reshape(shape, order="F" if fortran else "C")
