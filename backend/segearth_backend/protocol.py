"""The wire format between the QGIS plugin and the backend service (version 1).

A *bundle* is an uncompressed ZIP archive (``ZIP_STORED``) of named members:
``.npy`` arrays (read with ``allow_pickle=False``) and ``.json`` documents.
Requests to ``POST /segment`` carry ``params.json``, ``image.npy`` and
optionally ``valid.npy``; responses carry ``meta.json``, ``labels.npy`` and
optionally ``probabilities.npy``. The plugin has its own copy of this codec
(``segearth_qgis/protocol.py``): the two packages never import each other.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np

from .errors import InputError

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
                data = io.BytesIO()
                np.save(data, np.ascontiguousarray(value), allow_pickle=False)
                archive.writestr(name, data.getvalue())
            elif name.endswith(".json"):
                archive.writestr(name, json.dumps(value).encode("utf-8"))
            else:
                raise ValueError(f"bundle member {name!r} must end in .npy or .json")
    return buffer.getvalue()


def read_bundle(body: bytes, allowed: set[str]) -> dict[str, Any]:
    """Unpack a bundle: ``{name: ndarray or JSON value}``.

    Raises:
        ProtocolError: not a ZIP, compressed or unknown members, duplicate
            names, declared sizes that do not add up, pickled or malformed arrays,
            invalid JSON.
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
            data = archive.read(info)
        except (zipfile.BadZipFile, OSError, ValueError) as error:
            raise ProtocolError(f"Bundle member {info.filename} is unreadable: {error}.") from None
        if info.filename.endswith(".npy"):
            try:
                members[info.filename] = np.load(io.BytesIO(data), allow_pickle=False)
            except ValueError as error:
                reason = "it holds Python objects (pickles are refused)" if "pickle" in str(error) else str(error)
                raise ProtocolError(f"{info.filename} is not a plain .npy array: {reason}.") from None
            except (OSError, EOFError) as error:
                raise ProtocolError(f"{info.filename} is not a valid .npy file: {error}.") from None
        else:
            try:
                members[info.filename] = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise ProtocolError(f"{info.filename} is not valid UTF-8 JSON: {error}.") from None
    return members
