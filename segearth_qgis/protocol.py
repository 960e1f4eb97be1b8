"""The plugin's side of the backend wire format, version 1 (stdlib + numpy only).

A *bundle* is an uncompressed ZIP of ``.npy`` arrays and ``.json`` documents;
``segearth_backend/protocol.py`` is the backend's side. The two packages never
import each other; ``tests/plugin/test_backend_client.py`` runs one against
the other over a real socket.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np

PROTOCOL_VERSION = 1
BUNDLE_TYPE = "application/x-segearth-bundle"


def encode(members: dict[str, Any]) -> bytes:
    """Arrays for ``*.npy`` names, JSON-able values for ``*.json`` names -> bundle bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, value in members.items():
            if name.endswith(".npy"):
                array_bytes = io.BytesIO()
                np.save(array_bytes, np.ascontiguousarray(value), allow_pickle=False)
                archive.writestr(name, array_bytes.getvalue())
            else:
                archive.writestr(name, json.dumps(value).encode("utf-8"))
    return buffer.getvalue()


def decode(body: bytes) -> dict[str, Any]:
    """Bundle bytes -> ``{name: ndarray or JSON value}``; ValueError when malformed."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(body))
    except zipfile.BadZipFile:
        raise ValueError("the backend's answer is not a SegEarth bundle") from None
    members: dict[str, Any] = {}
    for info in archive.infolist():
        data = archive.read(info)
        if info.filename.endswith(".npy"):
            members[info.filename] = np.load(io.BytesIO(data), allow_pickle=False)
        else:
            members[info.filename] = json.loads(data.decode("utf-8"))
    return members
