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
import struct
import zipfile
from typing import Any

import numpy as np

from ..errors import InputError, quote

PROTOCOL_VERSION = 1
BUNDLE_TYPE = "application/x-segearth-bundle"
JSON_TYPE = "application/json"
#: The largest JSON document a request may hold (``params.json``, the ``/classes/embed`` body): a class list
#: at the limits of :mod:`.classes` in plain text with the options is a few hundred kilobytes at most.
MAX_JSON_BYTES = 512 * 1024
#: Integers in a request's JSON have at most this many digits (Python would spend seconds on millions).
MAX_INT_DIGITS = 30
#: The longest side an array in a bundle may declare.
MAX_ARRAY_SIDE = 2**31 - 1
#: ZIP flag bits a bundle member may carry: data descriptor (0x08) and UTF-8 names (0x800). Encryption
#: (0x01, 0x40) and patched data (0x20) are refused.
ALLOWED_ZIP_FLAGS = 0x08 | 0x800
_END_OF_DIRECTORY = b"PK\x05\x06"


class ProtocolError(InputError):
    """A request body that is not a well-formed bundle (HTTP 400)."""

    code = "bad_request"


class TooLargeError(ProtocolError):
    """A part of the request is larger than any valid request needs (HTTP 413)."""

    code = "too_large"


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
        ProtocolError: not a ZIP, more entries than ``allowed`` names, encrypted, compressed or unknown members,
            duplicate names, declared sizes that do not add up, pickled or malformed arrays, invalid or too
            deeply nested JSON, integers of more than ``MAX_INT_DIGITS`` digits.
        TooLargeError: a JSON member larger than ``MAX_JSON_BYTES`` (refused before it is parsed).
    """
    not_a_bundle = ProtocolError(f"The request body is not a SegEarth bundle (an uncompressed ZIP of .npy and "
                                 f".json members, content type {BUNDLE_TYPE}).")
    entries = _directory_entries(body)
    if entries is None:
        raise not_a_bundle
    if entries > len(allowed):
        raise ProtocolError(f"The bundle has {entries} members; a request has at most {len(allowed)} "
                            f"({', '.join(sorted(allowed))}).")
    try:
        archive = zipfile.ZipFile(io.BytesIO(body))
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, struct.error, NotImplementedError):
        raise not_a_bundle from None
    infos = archive.infolist()
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        raise ProtocolError("The bundle has duplicate members.")
    unknown = sorted(set(names) - allowed)
    if unknown:
        raise ProtocolError(f"Unknown bundle member {quote(unknown[0])}; a request holds only "
                            f"{', '.join(sorted(allowed))}.")
    if sum(info.file_size for info in infos) > len(body):
        raise ProtocolError("The bundle's members are larger than the body: it is truncated or compressed.")
    members: dict[str, Any] = {}
    for info in infos:
        name = info.filename
        if info.compress_type != zipfile.ZIP_STORED:
            raise ProtocolError(f"Bundle member {name} is compressed; store members uncompressed.")
        if info.flag_bits & ~ALLOWED_ZIP_FLAGS:
            raise ProtocolError(f"Bundle member {name} is encrypted or uses a ZIP feature bundles do not "
                                f"(flags 0x{info.flag_bits:x}); store it plain, as zipfile.ZIP_STORED writes it.")
        if name.endswith(".json") and info.file_size > MAX_JSON_BYTES:
            raise TooLargeError(f"{name} is {info.file_size / 1024:.0f} KB; a request's {name} is at most "
                                f"{MAX_JSON_BYTES // 1024} KB (the class list and the options).")
        try:
            if name.endswith(".npy"):
                members[name] = _read_npy(archive, info)
            else:
                members[name] = load_json(archive.read(info), name)
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as error:
            raise ProtocolError(f"Bundle member {name} is unreadable: {quote(str(error), 120)}.") from None
    return members


def _directory_entries(body: bytes) -> Any:
    """The number of members the ZIP's end-of-directory record declares, before anything else is parsed;
    None when there is no such record (not a ZIP)."""
    at = body.rfind(_END_OF_DIRECTORY, max(0, len(body) - 22 - 0xFFFF))
    if at < 0 or len(body) - at < 22:
        return None
    return struct.unpack_from("<H", body, at + 10)[0]


def load_json(data: bytes, name: str) -> Any:
    """A request's JSON document (``name`` says which, for messages).

    Raises:
        ProtocolError: not UTF-8 JSON, nested too deeply, or an integer of more than ``MAX_INT_DIGITS`` digits.
    """
    def bounded_int(text: str) -> int:
        if len(text.lstrip("-")) > MAX_INT_DIGITS:
            raise ProtocolError(f"{name} holds an integer of {len(text.lstrip('-'))} digits; numbers in a request "
                                f"have at most {MAX_INT_DIGITS}.")
        return int(text)

    try:
        return json.loads(data.decode("utf-8"), parse_int=bounded_int)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"{name} is not valid UTF-8 JSON: {quote(str(error), 120)}.") from None
    except RecursionError:
        raise ProtocolError(f"{name} is nested too deeply; send a flat JSON object.") from None
    except ValueError as error:  # what the JSON decoder's number conversion refuses
        raise ProtocolError(f"{name} holds a value JSON cannot carry: {quote(str(error), 120)}.") from None


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
        except (ValueError, SyntaxError, TypeError) as error:
            reason = ("it holds Python objects (pickles are refused)" if "pickle" in str(error)
                      else quote(str(error), 120))
            raise ProtocolError(f"{name} is not a plain .npy array: {reason}.") from None
        if not all(isinstance(side, int) and 0 <= side <= MAX_ARRAY_SIDE for side in shape):
            raise ProtocolError(f"{name} declares the shape {quote(shape)}; every side must be a whole number "
                                f"from 0 to {MAX_ARRAY_SIDE}.")
        if dtype.hasobject:
            raise ProtocolError(f"{name} is not a plain .npy array: it holds Python objects (pickles are refused).")
        if dtype.itemsize == 0:
            raise ProtocolError(f"{name} has an empty dtype ({quote(str(dtype), 30)}); send numbers.")
        count = math.prod(shape)
        declared = count * dtype.itemsize
        present = info.file_size - stream.tell()
        if declared != present:
            size = " x ".join(map(str, shape)) or "scalar"
            raise ProtocolError(
                f"{name} declares a {quote(size, 60)} {quote(str(dtype), 30)} array ({declared} bytes) but holds "
                f"{present} bytes of data: send the array as np.save writes it.")
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
