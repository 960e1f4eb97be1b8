"""Turning raster bands into the backend's uint8 RGB plus a valid mask (numpy only).

Band arrays are ``bands x rows x cols`` (GDAL's order). uint8 data is used as
is; anything else is stretched linearly from a per-channel ``(low, high)``
range to 0-255. The range must be fixed for the whole job (the layer's
contrast enhancement, or QGIS's cumulative cut computed once), never per block, or
neighbouring blocks would be stretched differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .sar import SarSettings, sar_to_rgb


@dataclass(frozen=True)
class PixelRecipe:
    """How to build RGB from a layer's bands.

    Attributes:
        rgb_bands: three 1-based band numbers (R, G, B); a single-band layer
            repeats its band.
        alpha_band: 1-based alpha band, or None; alpha 0 is invalid.
        nodata: per band number, the nodata value (None: none).
        stretch: per RGB channel, ``(low, high)`` mapped to 0 and 255; None
            for uint8 data used as is.
        sar: SAR input (:mod:`.sar`): the first RGB band, converted to grey and
            replicated to R = G = B; ``stretch`` is then not used.
    """

    rgb_bands: tuple[int, int, int]
    alpha_band: Optional[int] = None
    nodata: tuple[tuple[int, Optional[float]], ...] = ()
    stretch: Optional[tuple[tuple[float, float], ...]] = None
    sar: Optional[SarSettings] = None

    @property
    def bands_needed(self) -> list[int]:
        """The band numbers to read, in order, without repeats."""
        wanted = list(self.rgb_bands) + ([self.alpha_band] if self.alpha_band else [])
        return list(dict.fromkeys(wanted))


def stretch_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linear stretch of ``[low, high]`` to 0-255, clipped, rounded (NaN -> 0)."""
    span = high - low
    if not np.isfinite(span) or span <= 0:
        span = 1.0
    scaled = (values.astype(np.float64) - low) * (255.0 / span)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_rgb(bands: dict[int, np.ndarray], recipe: PixelRecipe) -> tuple[np.ndarray, np.ndarray]:
    """RGB and valid mask from the bands read for ``recipe.bands_needed``.

    Args:
        bands: band number -> ``rows x cols`` array (any numeric dtype).

    Returns:
        ``rows x cols x 3`` uint8 RGB and ``rows x cols`` bool valid mask
        (False where any RGB band is nodata or non-finite, or alpha is 0).
    """
    first = bands[recipe.rgb_bands[0]]
    nodata = dict(recipe.nodata)
    if recipe.sar is not None:
        rgb, valid = sar_to_rgb(first, recipe.sar, nodata.get(recipe.rgb_bands[0]))
        if recipe.alpha_band:
            valid &= bands[recipe.alpha_band] != 0
            rgb[~valid] = 0
        return rgb, valid
    valid = np.ones(first.shape, dtype=bool)
    for number in dict.fromkeys(recipe.rgb_bands):
        values = bands[number]
        if np.issubdtype(values.dtype, np.floating):
            valid &= np.isfinite(values)
        value = nodata.get(number)
        if value is not None and np.isfinite(value):
            valid &= values != value
    if recipe.alpha_band:
        valid &= bands[recipe.alpha_band] != 0
    channels = []
    for index, number in enumerate(recipe.rgb_bands):
        values = bands[number]
        if recipe.stretch is None and values.dtype == np.uint8:
            channels.append(values)
        else:
            low, high = recipe.stretch[index] if recipe.stretch else (0.0, 255.0)
            channels.append(stretch_to_uint8(values, low, high))
    rgb = np.stack(channels, axis=-1)
    rgb[~valid] = 0
    return np.ascontiguousarray(rgb), valid

