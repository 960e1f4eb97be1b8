"""Backend-test helpers: a real server process, the one HTTP call, bundles, tiny CLIP models of other shapes."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from segearth_backend.serve.protocol import BUNDLE_TYPE, write_bundle
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
         content_type: Optional[str] = BUNDLE_TYPE, method: Optional[str] = None, timeout: float = 60,
         headers: Optional[dict[str, str]] = None) -> tuple[int, bytes, dict[str, str]]:
    """One request over ``http.client``, whatever the status: (status, body, lower-cased headers).

    No proxy and no header but Host, Content-Length and the ones asked for (``content_type`` only with a
    body, the token as a bearer token, ``headers``), so the hardening tests control what is sent.
    """
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    sent: dict[str, str] = {}
    if content_type is not None and body is not None:
        sent["Content-Type"] = content_type
    if token:
        sent["Authorization"] = f"Bearer {token}"
    sent.update(headers or {})
    try:
        connection.request(method or ("POST" if body is not None else "GET"), path, body=body, headers=sent)
        response = connection.getresponse()
        return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


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


#: Tiny stand-ins for the zoo's shapes: patch size, tower width, head width, output features.
SHAPES = {
    "b32": {"patch_size": 32, "width": 64, "head_width": 32, "embed_dim": 48},
    "l14": {"patch_size": 14, "width": 80, "head_width": 40, "embed_dim": 40},
}


def write_tiny_clip(folder: Path, shape: str, seed: int = 0) -> dict[str, str]:
    """An open_clip JSON config of a tiny ViT with ``SHAPES[shape]`` and its seeded random weights.

    Returns ``{"model": json path, "clip_weights": state-dict path}`` (the loader's arguments).
    """
    from open_clip.model import CLIP

    spec = SHAPES[shape]
    config = {
        "embed_dim": spec["embed_dim"],
        "quick_gelu": False,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": spec["width"], "head_width": spec["head_width"],
                       "patch_size": spec["patch_size"]},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / f"tiny-{shape}.json"
    config_path.write_text(json.dumps(config, indent=1))
    torch.manual_seed(seed)
    model = CLIP(**config)
    with torch.no_grad():  # random positional embeddings, so a wrong resampling shows
        model.visual.positional_embedding.normal_(0, 0.5)
    weights_path = folder / f"tiny-{shape}.pt"
    torch.save(model.state_dict(), weights_path)
    return {"model": str(config_path), "clip_weights": str(weights_path)}


def write_sample(root: Path, layout, stem: str, image, label) -> None:
    """One image (``H x W x 3`` uint8) and label (``H x W`` uint8) where ``layout`` expects them."""
    from PIL import Image

    for folder, suffix, array in ((layout.img_dir, layout.img_suffix, image),
                                  (layout.ann_dir, layout.seg_map_suffix, label)):
        path = root / folder / (stem + suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        options = {"quality": 95} if suffix.lower().endswith((".jpg", ".jpeg")) else {}
        Image.fromarray(array).save(path, format=_FORMATS[suffix.rsplit(".", 1)[-1].lower()], **options)


_FORMATS = {"png": "PNG", "tif": "TIFF", "jpg": "JPEG"}


def blocky_label(rng, height: int, width: int, values: int, block: int = 16):
    """A label map of ``block``-pixel squares with values in ``0..values-1`` (uint8)."""
    import numpy as np

    coarse = rng.integers(0, values, size=(height // block + 1, width // block + 1))
    return np.kron(coarse, np.ones((block, block), np.int64))[:height, :width].astype(np.uint8)
