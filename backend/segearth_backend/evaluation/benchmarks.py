"""The paper's benchmark class sets and dataset layouts (pure Python, no torch).

The data lives in ``data/benchmarks.json`` (package data), written from the
authors' configs (``configs/cls_*.txt``, ``configs/cfg_*.py``) and mmseg's
dataset classes. The QGIS plugin ships a byte-identical copy
(``segearth_qgis/core/benchmarks.json``; a test keeps them equal).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Optional

from ..errors import DatasetError

RESOURCE = "benchmarks.json"
#: The resize side of every optical config (``Resize(scale=(448, 448), keep_ratio=True)``).
DEFAULT_SCALE = 448


@dataclass(frozen=True)
class DatasetLayout:
    """Where a benchmark's images and labels are, as the authors' mmseg config has them.

    Attributes:
        root: the authors' data root (``data/...``), for the README and error hints.
        img_dir, ann_dir: image and label folders relative to the root.
        img_suffix, seg_map_suffix: file name endings (case-sensitive, as mmseg).
        reduce_zero_label: label 0 becomes 255 (ignored) and every other label is lowered by 1.
        ignore_index: label value left out of the metric.
        ann_file: a list of file stems (no suffix) selecting the evaluated images,
            or None to take every image under ``img_dir``.
        class_names: the dataset's class names (mmseg ``METAINFO``), one per label value.
        scale: the config's ``Resize(scale=(s, s), keep_ratio=True)`` side (448; 224 for most SAR sets).
        slide: True: 224/112 sliding windows; False: one whole-image pass (``slide_crop=0``), which the
            engine's single 224-pixel window reproduces for images resized to fit 224 x 224.
        ann_file_sha256: SHA-256 of the authors' split file, checked when known.
    """

    root: str
    img_dir: str
    ann_dir: str
    img_suffix: str
    seg_map_suffix: str
    reduce_zero_label: bool
    ignore_index: int
    ann_file: Optional[str]
    class_names: tuple[str, ...]
    scale: int = DEFAULT_SCALE
    slide: bool = True
    ann_file_sha256: Optional[str] = None


@dataclass(frozen=True)
class BenchmarkPreset:
    """A class set with the settings the authors' config uses for it.

    ``imagery`` is ``optical`` or ``sar``; ``model`` the model preset the authors' config runs it with
    (``segearth-backend eval`` uses it unless a model is given), None for the default model.
    """

    key: str
    name: str
    task: str
    classes: tuple[str, ...]
    prob_threshold: float
    background_index: int
    bias_lambda: float
    config: Optional[str]
    class_file: Optional[str]
    dataset: Optional[DatasetLayout]
    note: Optional[str] = None
    imagery: str = "optical"
    model: Optional[str] = None


def _layout(raw: dict[str, Any]) -> DatasetLayout:
    return DatasetLayout(
        root=str(raw["root"]), img_dir=str(raw["img_dir"]), ann_dir=str(raw["ann_dir"]),
        img_suffix=str(raw["img_suffix"]), seg_map_suffix=str(raw["seg_map_suffix"]),
        reduce_zero_label=bool(raw["reduce_zero_label"]), ignore_index=int(raw["ignore_index"]),
        ann_file=raw.get("ann_file"), class_names=tuple(str(n) for n in raw["class_names"]),
        scale=int(raw.get("scale", DEFAULT_SCALE)), slide=bool(raw.get("slide", True)),
        ann_file_sha256=raw.get("ann_file_sha256"),
    )


def parse_benchmarks(document: dict[str, Any]) -> tuple[BenchmarkPreset, ...]:
    """Benchmark presets from the JSON document (``{"presets": [...]}``)."""
    presets = []
    for raw in document["presets"]:
        dataset = raw.get("dataset")
        presets.append(BenchmarkPreset(
            key=str(raw["key"]), name=str(raw["name"]), task=str(raw["task"]),
            classes=tuple(str(c) for c in raw["classes"]), prob_threshold=float(raw["prob_threshold"]),
            background_index=int(raw["background_index"]), bias_lambda=float(raw["bias_lambda"]),
            config=raw.get("config"), class_file=raw.get("class_file"),
            dataset=_layout(dataset) if dataset else None, note=raw.get("note"),
            imagery=str(raw.get("imagery", "optical")), model=raw.get("model"),
        ))
    return tuple(presets)


@lru_cache(maxsize=1)
def load_benchmarks() -> tuple[BenchmarkPreset, ...]:
    """Every benchmark preset, in the file's order (OpenEarthMap first)."""
    text = resources.files("segearth_backend").joinpath("data").joinpath(RESOURCE).read_text(encoding="utf-8")
    return parse_benchmarks(json.loads(text))


def find_benchmark(name: str) -> BenchmarkPreset:
    """The preset whose key or name is ``name`` (case-insensitive).

    Raises:
        DatasetError: no such preset, with the known keys.
    """
    wanted = name.strip().casefold()
    for preset in load_benchmarks():
        if wanted in (preset.key.casefold(), preset.name.casefold()):
            return preset
    known = ", ".join(p.key for p in load_benchmarks() if p.dataset is not None)
    raise DatasetError(f"Unknown dataset '{name}'. Known datasets: {known}.")
