"""SAR bands to the image the SAR model expects (numpy only).

What the reference fixes, and what is ours:

* **The reference** (SegEarth-OV-2) has no SAR-specific processing at all: its
  SAR benchmarks are 8-bit grey images, read as three equal channels (R = G = B)
  and normalised with CLIP's mean and standard deviation, like optical images.
  A 16-bit file loses its low byte (OpenCV's 8-bit read), a float file does not
  load, and of a two-band file only the first band is used. No speckle filter.
  So: one polarisation, 8-bit grey, replicated to three channels; speckle left alone.
* **Ours** (the reference does not say how its 8-bit images were made from
  calibrated data): calibrated backscatter is converted to decibels
  (``10 log10`` of power, ``20 log10`` of amplitude) and stretched linearly from
  a fixed range, by default -25 to 0 dB (open water, a few dB below -20, is
  dark; vegetation and bare soil, about -15 to -8 dB, are mid-grey; built-up
  areas, around 0 dB and above, are bright), clipped, rounded to 8 bit. A
  range fitted to the scene (2-98 % of its decibels, computed once for the job)
  is the alternative for uncalibrated amplitudes. Of VV and VH, choose one
  band: VV (co-polarised) is the usual choice for land and water.

Nodata: NaN and infinities, the layer's nodata value, and (for power and
amplitude, where 0 has no decibel value: the zero fill at Sentinel-1 swath
edges) zero and negative values are invalid. Band arrays are ``rows x cols``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import LayerError

#: Power (sigma0/beta0/gamma0, linear), amplitude, decibels, or an 8/16-bit grey image used like the reference's.
LINEAR, AMPLITUDE, DECIBELS, IMAGE = "linear", "amplitude", "db", "image"
SAR_UNITS = (LINEAR, AMPLITUDE, DECIBELS, IMAGE)
UNIT_LABELS = {LINEAR: "Power, linear (e.g. Sentinel-1 GRD sigma0, float32)",
               AMPLITUDE: "Amplitude (e.g. Sentinel-1 GRD digital numbers, 16-bit)",
               DECIBELS: "Decibels (dB)",
               IMAGE: "8/16-bit grey image, as the reference reads it"}
#: Our fixed stretch in decibels (see the module docstring).
DEFAULT_DB_RANGE = (-25.0, 0.0)
#: The fitted stretch: these percentiles of the scene's decibels.
FITTED_PERCENTILES = (2.0, 98.0)


@dataclass(frozen=True)
class SarSettings:
    """How to turn one SAR band into the model's grey image.

    Attributes:
        units: one of :data:`SAR_UNITS`.
        low_db, high_db: decibels mapped to 0 and 255 (not used for ``image``).
    """

    units: str = LINEAR
    low_db: float = DEFAULT_DB_RANGE[0]
    high_db: float = DEFAULT_DB_RANGE[1]

    def __post_init__(self) -> None:
        if self.units not in SAR_UNITS:
            raise LayerError(f"SAR units must be one of {', '.join(SAR_UNITS)}, got {self.units!r}.")
        if not (np.isfinite(self.low_db) and np.isfinite(self.high_db) and self.high_db > self.low_db):
            raise LayerError(f"The SAR stretch needs a low below the high value in dB, got {self.low_db:g} to "
                             f"{self.high_db:g}.")


def valid_sar(values: np.ndarray, units: str, nodata: Optional[float] = None) -> np.ndarray:
    """``rows x cols`` bool: pixels that carry a measurement (see the module docstring)."""
    valid = np.ones(values.shape, dtype=bool)
    if np.issubdtype(values.dtype, np.floating):
        valid &= np.isfinite(values)
    if nodata is not None and np.isfinite(nodata):
        valid &= values != nodata
    if units in (LINEAR, AMPLITUDE):
        with np.errstate(invalid="ignore"):
            valid &= values > 0
    return valid


def to_decibels(values: np.ndarray, units: str) -> np.ndarray:
    """float64 decibels of power (``10 log10``), amplitude (``20 log10``) or decibels (as they are).

    Invalid inputs (zero, negative, NaN) give NaN.
    """
    data = values.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if units == LINEAR:
            out = 10.0 * np.log10(data)
        elif units == AMPLITUDE:
            out = 20.0 * np.log10(data)
        elif units == DECIBELS:
            out = data
        else:
            raise LayerError(f"Units {units!r} are not backscatter: no decibels.")
    out[~np.isfinite(out)] = np.nan
    return out


def _image_grey(values: np.ndarray) -> np.ndarray:
    """The reference's 8-bit read: uint8 as is, 16-bit without its low byte; anything else refused."""
    if values.dtype == np.uint8:
        return values.copy()
    if values.dtype in (np.uint16, np.int16):
        return (values.astype(np.uint16) >> 8).astype(np.uint8)
    raise LayerError(f"A {values.dtype} band is not an 8/16-bit grey image: choose the units it holds "
                     "(power, amplitude or dB) in the SAR input settings.")


def sar_to_grey(values: np.ndarray, settings: SarSettings, nodata: Optional[float] = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """One SAR band to ``rows x cols`` uint8 grey and its ``rows x cols`` bool valid mask (invalid pixels 0)."""
    valid = valid_sar(values, settings.units, nodata)
    if settings.units == IMAGE:
        grey = _image_grey(values)
    else:
        decibels = to_decibels(values, settings.units)
        scaled = (decibels - settings.low_db) * (255.0 / (settings.high_db - settings.low_db))
        grey = np.clip(np.rint(np.nan_to_num(scaled, nan=0.0)), 0, 255).astype(np.uint8)
    grey[~valid] = 0
    return grey, valid


def sar_to_rgb(values: np.ndarray, settings: SarSettings, nodata: Optional[float] = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """``rows x cols x 3`` uint8 with R = G = B (the reference's grey image) and the valid mask."""
    grey, valid = sar_to_grey(values, settings, nodata)
    return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2)), valid


def fitted_db_range(values: np.ndarray, units: str, nodata: Optional[float] = None,
                    percentiles: tuple[float, float] = FITTED_PERCENTILES) -> tuple[float, float]:
    """The scene's ``(low, high)`` decibels at ``percentiles`` of its valid pixels (for a fitted stretch).

    Raises:
        LayerError: no valid pixel, or all of them equal.
    """
    valid = valid_sar(values, units, nodata)
    decibels = to_decibels(values[valid], units)
    decibels = decibels[np.isfinite(decibels)]
    if decibels.size == 0:
        raise LayerError("The SAR band has no valid pixel here (all nodata, zero or NaN): nothing to fit a "
                         "stretch to.")
    low, high = (float(v) for v in np.percentile(decibels, percentiles))
    if not high > low:
        raise LayerError(f"The SAR band's values are all {low:.2f} dB here: give the stretch range by hand.")
    return low, high
