"""A benchmark's images and labels, found and read as the authors' mmseg configs do (Pillow, numpy).

Listing (mmseg ``BaseSegDataset.load_data_list``): without a split file,
every non-hidden file under the image folder (recursively) whose path ends with the
image suffix (case-sensitive), sorted by path; its label is the same relative
path with the image suffix replaced by the label suffix. With a split file,
each line is a file stem: image ``stem + img_suffix``, label ``stem +
seg_map_suffix``, in the file's order.

Images (mmcv ``LoadImageFromFile``, OpenCV ``IMREAD_COLOR``): 8-bit, three
channels, grey replicated, alpha dropped, EXIF orientation applied; returned
as RGB. Labels (mmseg ``LoadAnnotations``, Pillow, ``unchanged``): the stored
values as uint8; with ``reduce_zero_label`` 0 becomes 255 and the others drop
by one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import DatasetError
from .benchmarks import DatasetLayout

#: 8-bit Pillow modes ``convert("RGB")`` maps like OpenCV's IMREAD_COLOR.
_EIGHT_BIT_MODES = {"RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "1", "La"}


@dataclass(frozen=True)
class Sample:
    """One evaluated image and its label file."""

    image: Path
    label: Path


def _walk(folder: Path, suffix: str) -> list[str]:
    """Relative paths (``/``-separated) of files under ``folder`` ending with ``suffix``.

    As mmengine's local listing: recursive (following folder links), hidden files skipped.
    """
    found = []
    for base, _, files in os.walk(folder, followlinks=True):
        for name in files:
            if name.startswith("."):
                continue
            relative = os.path.relpath(os.path.join(base, name), folder).replace(os.sep, "/")
            if relative.endswith(suffix):
                found.append(relative)
    return found


def _check_split(split: Path, layout: DatasetLayout) -> None:
    """Refuse a split file other than the authors' when its SHA-256 is known (another split, other numbers)."""
    if layout.ann_file_sha256 is None:
        return
    import hashlib

    digest = hashlib.sha256(split.read_bytes()).hexdigest()
    if digest != layout.ann_file_sha256:
        raise DatasetError(f"{split} is not the authors' {layout.ann_file} (SHA-256 {digest[:12]}..., expected "
                           f"{layout.ann_file_sha256[:12]}...): use their file, or the results are not comparable "
                           "with the paper's.")


def list_samples(root: Path, layout: DatasetLayout, ann_file: Optional[Path] = None) -> list[Sample]:
    """The dataset's (image, label) pairs.

    Args:
        root: the folder the authors' config calls ``layout.root`` (e.g. ``data/OpenEarthMap``).
        ann_file: the split file when ``layout.ann_file`` names one (default ``root / layout.ann_file``, which
            must then be the authors' file when its SHA-256 is recorded; a file given here is taken as it is).

    Raises:
        DatasetError: missing folders or split file, no images, or a label file missing.
    """
    img_dir, ann_dir = root / layout.img_dir, root / layout.ann_dir
    hint = (f"--root should be the folder the authors' config calls {layout.root} (holding "
            f"{layout.img_dir} and {layout.ann_dir})")
    for folder in (img_dir, ann_dir):
        if not folder.is_dir():
            raise DatasetError(f"{folder} does not exist: {hint}.")
    if layout.ann_file is not None:
        split = ann_file or root / layout.ann_file
        if not split.is_file():
            raise DatasetError(f"The split file {split} does not exist: this dataset is evaluated on the images "
                               f"the authors list in {layout.ann_file}; put it there or pass --ann-file.")
        if ann_file is None:  # the default place must hold the authors' file; an explicit one is the user's choice
            _check_split(split, layout)
        stems = [line.strip() for line in split.read_text(encoding="utf-8").splitlines() if line.strip()]
        samples = [Sample(img_dir / (stem + layout.img_suffix), ann_dir / (stem + layout.seg_map_suffix))
                   for stem in stems]
    else:
        names = _walk(img_dir, layout.img_suffix)
        samples = sorted((Sample(img_dir / name, ann_dir / name.replace(layout.img_suffix, layout.seg_map_suffix))
                          for name in names), key=lambda s: str(s.image))
    if not samples:
        raise DatasetError(f"No images ending in '{layout.img_suffix}' under {img_dir}: {hint}.")
    for sample in samples:
        for path in (sample.image, sample.label):
            if not path.is_file():
                raise DatasetError(f"{path} does not exist: every image needs its label "
                                   f"(same name, '{layout.seg_map_suffix}' instead of '{layout.img_suffix}').")
    return samples


def read_image(path: Path) -> np.ndarray:
    """An image file as ``H x W x 3`` uint8 RGB (row, column, channel), as OpenCV's IMREAD_COLOR reads it.

    Raises:
        DatasetError: unreadable, or not 8 bits per channel (16-bit and float images are not supported).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            if image.mode not in _EIGHT_BIT_MODES:
                raise DatasetError(f"{path} has pixel mode {image.mode}; only 8-bit images are supported "
                                   "(convert it to 8-bit RGB, e.g. with gdal_translate -ot Byte -scale).")
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DatasetError(f"{path} cannot be read as an image ({error}); Pillow reads PNG, JPEG and "
                           "8-bit TIFF (uncompressed, LZW, Deflate, PackBits, JPEG).") from None


def read_label(path: Path, layout: DatasetLayout) -> np.ndarray:
    """A label file as ``H x W`` uint8 class values, with the layout's zero-label reduction.

    Raises:
        DatasetError: unreadable, or more than one channel.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            values = np.array(opened)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DatasetError(f"{path} cannot be read as a label image ({error}).") from None
    if values.ndim == 3 and values.shape[2] == 1:
        values = values[:, :, 0]
    if values.ndim != 2:
        raise DatasetError(f"{path} has {values.shape[2]} channels; a label image has one channel of class "
                           "values (convert colour-coded labels with the dataset's converter first).")
    label = values.astype(np.uint8)
    if layout.reduce_zero_label:
        label[label == 0] = 255
        label = (label - 1).astype(np.uint8)
        label[label == 254] = 255
    return label
