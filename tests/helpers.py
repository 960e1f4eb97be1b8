"""Helpers shared by the backend, plugin and tool tests (import them; conftest files only hold fixtures)."""

from __future__ import annotations

import io
import os
import socket
import struct
import time
import zipfile
from pathlib import Path
from typing import Callable, Mapping, Optional

#: The repository under test (the tree these tests belong to, not an installed copy).
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
PARITY = DATA / "parity"


def processes_with(marker: str, command: Callable[[bytes], bool] = lambda _: True) -> list[int]:
    """Running processes (not this one, not zombies) whose environment holds ``marker`` and whose command line
    (NUL-separated bytes) satisfies ``command``; sorted pids (Linux /proc)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker.encode() in (proc / "environ").read_bytes() and command((proc / "cmdline").read_bytes()) \
                    and (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(proc.name))
        except OSError:
            continue
    return sorted(found)


def tree_pythonpath() -> str:
    """A PYTHONPATH that makes a child Python import this tree's backend and plugin."""
    return os.pathsep.join([str(ROOT / "backend"), str(ROOT)])


def subprocess_env(base: Optional[Mapping[str, str]] = None, **extra: str) -> dict[str, str]:
    """An environment for a child process that imports *this* tree.

    ``base`` (default: this process's environment) plus ``extra``; PYTHONPATH
    is set to this tree first, so a copy of the repository tests itself and
    not the editable install of another checkout.
    """
    env = dict(os.environ if base is None else base)
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (tree_pythonpath(), env.get("PYTHONPATH", "")) if p)
    return env


def minimal_env(home: Path, **extra: str) -> dict[str, str]:
    """A stripped environment (PATH, HOME and this tree on PYTHONPATH), as a user's fresh shell would have."""
    return subprocess_env({"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}, **extra)


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, interval: float = 0.05,
             message: str = "condition not met in time") -> bool:
    """Poll ``predicate`` until it is true (then True); TimeoutError after ``timeout`` seconds (never a bare sleep).

    The one wait of the tests: ``assert wait_for(...)`` and a bare ``wait_for(...)`` both fail on a timeout.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(message)
        time.sleep(interval)
    return True


def read_http_response(conn: socket.socket, timeout: float = 30.0) -> bytes:
    """Everything a server sends on ``conn`` until it closes it or the declared body is complete.

    Servers may send the headers and the body in separate writes: one
    ``recv()`` is not a whole response.
    """
    conn.settimeout(timeout)
    data = b""
    while True:
        header_end = data.find(b"\r\n\r\n")
        if header_end >= 0:
            headers = data[:header_end].decode("latin-1").lower()
            lengths = [int(line.split(":", 1)[1]) for line in headers.split("\r\n")
                       if line.startswith("content-length:")]
            if lengths and len(data) >= header_end + 4 + lengths[0]:
                return data
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk


def zip_with_flag(body: bytes, member: str, flag: int) -> bytes:
    """``body`` (a ZIP) with ``flag`` set in ``member``'s general-purpose flags, in its local header and in the
    central directory (0x01: encrypted, 0x40: strong encryption)."""
    data = bytearray(body)
    info = zipfile.ZipFile(io.BytesIO(body)).getinfo(member)
    local = info.header_offset + 6
    struct.pack_into("<H", data, local, struct.unpack_from("<H", data, local)[0] | flag)
    central = data.find(b"PK\x01\x02")
    while central >= 0:
        name_length = struct.unpack_from("<H", data, central + 28)[0]
        if bytes(data[central + 46:central + 46 + name_length]) == member.encode():
            struct.pack_into("<H", data, central + 8, struct.unpack_from("<H", data, central + 8)[0] | flag)
            return bytes(data)
        central = data.find(b"PK\x01\x02", central + 4)
    raise AssertionError(f"{member} not in the central directory")
