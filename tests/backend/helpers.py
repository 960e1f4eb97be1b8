"""Backend-test helpers: a real server process, HTTP calls, bundles."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from segearth_backend.protocol import BUNDLE_TYPE, write_bundle
from tests.helpers import subprocess_env

TEST_TOKEN = "test-token-5b0c1f"
CLASSES = ["background", "building,roof", "road", "tree,forest", "water"]


def launch_server(args: Sequence[str], tmp_dir: Path, env_extra: Optional[dict[str, str]] = None,
                  timeout: float = 120.0) -> tuple[subprocess.Popen, str, Path]:
    """Start `python -m segearth_backend serve` (this tree's) and wait for its ready file.

    Returns (process, url, log path).
    """
    ready, log_path = tmp_dir / "ready.json", tmp_dir / "server.log"
    with open(log_path, "wb") as log_stream:
        process = subprocess.Popen([sys.executable, "-m", "segearth_backend", "serve", "--port", "0",
                                    "--ready-file", str(ready), *args], stdout=subprocess.PIPE, stderr=log_stream,
                                   env=subprocess_env(**(env_extra or {})))
    deadline = time.monotonic() + timeout
    while not ready.is_file():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"server did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    return process, json.loads(ready.read_text())["url"], log_path


def call(url: str, path: str, body: Optional[bytes] = None, token: Optional[str] = None,
         content_type: str = BUNDLE_TYPE, method: Optional[str] = None, timeout: float = 60,
         headers: Optional[dict[str, str]] = None) -> tuple[int, bytes]:
    """One HTTP request; (status, body) whatever the status."""
    request = urllib.request.Request(url + path, data=body, method=method or ("POST" if body is not None else "GET"))
    request.add_header("Content-Type", content_type)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def segment_body(image: np.ndarray, params: Optional[dict[str, Any]] = None, valid: Optional[np.ndarray] = None,
                 extra: Optional[dict[str, Any]] = None) -> bytes:
    members: dict[str, Any] = {"params.json": {"classes": CLASSES, **(params or {})}, "image.npy": image}
    if valid is not None:
        members["valid.npy"] = valid
    members.update(extra or {})
    return write_bundle(members)


def error_of(body: bytes) -> tuple[str, str]:
    """The (code, message) of a JSON error answer (and nothing else in it)."""
    payload = json.loads(body)
    if set(payload) != {"error", "message"}:
        raise AssertionError(f"not an error document: {payload}")
    return payload["error"], payload["message"]
