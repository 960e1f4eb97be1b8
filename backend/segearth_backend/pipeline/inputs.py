"""Validation of the arrays and parameters given to ``predict`` (numpy only)."""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from ..errors import ImageError, ParameterError, ShapeError, quote
from ..request_rules import BIAS_LAMBDA_RANGE, DEFAULT_BIAS_LAMBDA
from ..windows import grid_count, padded_area, padded_size

#: The padded window area may be at most this many times the image's pixels (a large
#: square image needs about 4 times: every pixel is in about 4 windows)...
MAX_WORK_FACTOR = 16
#: ...or at most this many full windows' worth, whatever the shape (small images).
MAX_WORK_FLOOR_WINDOWS = 16


def check_image(image: Any) -> np.ndarray:
    """Return ``image`` as a C-contiguous ``H x W x 3`` uint8 array, or raise.

    Raises:
        ImageError: not a numpy array, wrong dtype, wrong number of
            dimensions or channels, or an empty size.
    """
    if not isinstance(image, np.ndarray):
        raise ImageError(
            f"image must be a numpy array (H x W x 3, uint8 RGB), got {type(image).__name__}."
        )
    if image.dtype != np.uint8:
        hint = ""
        if np.issubdtype(image.dtype, np.floating):
            if image.size and not np.isfinite(image).all():
                raise ImageError(
                    "image contains NaN or infinite values; mark those pixels in "
                    "the valid mask and convert the image to uint8 0-255 first."
                )
            hint = " Stretch float data to 0-255 and convert to uint8 first."
        elif np.issubdtype(image.dtype, np.integer):
            hint = " Stretch 16-bit or other integer data to 0-255 (uint8) first."
        raise ImageError(f"image must have dtype uint8, got {image.dtype}.{hint}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(
            f"image must be H x W x 3 (RGB, channels last), got shape {quote(image.shape)}. "
            "Replicate a single band to three channels; drop alpha or extra bands."
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(f"image must be at least 1 x 1 pixel, got {image.shape[0]} x {image.shape[1]}.")
    return np.ascontiguousarray(image)


def check_shape_cost(height: int, width: int, crop: int, stride: int, patch: int, min_size: int) -> None:
    """Refuse shapes whose padded windows cost far more than their pixels (a 1 x 100000 strip).

    Every window is padded to at least ``min_size`` pixels per side, so a
    very thin, long image is processed as many nearly empty windows. Allowed:
    a padded area of at most ``MAX_WORK_FACTOR`` times the pixel count, or
    ``MAX_WORK_FLOOR_WINDOWS`` full windows.

    Raises:
        ShapeError: the shape is refused; the message gives the longest side
            allowed at this thickness.
    """
    work = padded_area(height, width, crop, stride, patch, min_size)
    floor = MAX_WORK_FLOOR_WINDOWS * crop * crop
    if work <= max(MAX_WORK_FACTOR * height * width, floor):
        return
    thin, long = min(height, width), max(height, width)
    windows = grid_count(height, crop, stride) * grid_count(width, crop, stride)
    thick = padded_size(min(thin, crop), patch, min_size)
    per_window = thick * crop
    longest = (floor // per_window - 1) * stride + crop  # windows allowed by the floor alone
    need = next(t for t in range(thin, crop + 1)
                if padded_area(t, long, crop, stride, patch, min_size) <= MAX_WORK_FACTOR * t * long)
    raise ShapeError(
        f"A {height} x {width} image is processed as {windows} windows of at least {thick} x "
        f"{min(long, crop)} pixels, {work / (height * width):.0f} times its pixel count (at most "
        f"{MAX_WORK_FACTOR} is allowed). Send blocks at least {need} pixels thick (224 or more is best), or, "
        f"at {thin} pixels thick, at most {max(longest, crop)} pixels long."
    )


def check_valid_mask(valid: Any, height: int, width: int) -> Optional[np.ndarray]:
    """Return the valid mask as an ``H x W`` bool array (or None), or raise."""
    if valid is None:
        return None
    if not isinstance(valid, np.ndarray):
        raise ImageError(f"valid mask must be a numpy array, got {type(valid).__name__}.")
    if valid.shape != (height, width):
        raise ImageError(
            f"valid mask must have the image's size {height} x {width}, got shape {quote(valid.shape)}."
        )
    if valid.dtype != np.bool_:
        if not np.issubdtype(valid.dtype, np.integer):
            raise ImageError(f"valid mask must be boolean (or 0/1 integers), got {valid.dtype}.")
        valid = valid != 0
    return np.ascontiguousarray(valid)


def check_threshold(value: Any) -> float:
    """The probability threshold: a finite number in [0, 1]."""
    number = _finite(value, "prob_threshold")
    if not 0.0 <= number <= 1.0:
        raise ParameterError(f"prob_threshold must be between 0 and 1, got {number}.")
    return number


def check_background_index(value: Any, num_classes: int) -> int:
    """The background class index: an integer in ``[0, num_classes)``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ParameterError(f"background_index must be an integer, got {quote(value)}.")
    if not 0 <= int(value) < num_classes:
        raise ParameterError(
            f"background_index {quote(int(value))} is out of range: there are {num_classes} "
            f"classes, so it must be between 0 and {num_classes - 1}."
        )
    return int(value)


def check_lambda(value: Any) -> float:
    """The global-bias lambda: a finite number in ``BIAS_LAMBDA_RANGE`` (the paper uses ``DEFAULT_BIAS_LAMBDA``)."""
    number = _finite(value, "bias_lambda")
    low, high = BIAS_LAMBDA_RANGE
    if not low <= number <= high:
        raise ParameterError(f"bias_lambda must be between {low:g} and {high:g} (the paper uses "
                             f"{DEFAULT_BIAS_LAMBDA:g}), got {number}.")
    return number


def _finite(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ParameterError(f"{name} must be a number, got {quote(value)}.")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond the float range
        raise ParameterError(f"{name} must be a finite number, got {quote(value)}.") from None
    if not math.isfinite(number):
        raise ParameterError(f"{name} must be a finite number, got {number}.")
    return number
