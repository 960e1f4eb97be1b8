"""Helpers shared by backend tests: tiny random CLIP models of other shapes, written to disk."""

from __future__ import annotations

import json
from pathlib import Path

import torch

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
