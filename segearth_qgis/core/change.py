"""Change between two dates, decided per pixel from each date's class probabilities (numpy only).

Both dates are segmented on one processing grid with one class list, one
window grid and one valid mask, so a pixel whose image did not change within
the reach of its sliding windows (224 pixels) gets exactly the same
probabilities on both dates and can never be reported as change. A pixel
changes from class ``a``
to class ``b`` only when

- its label is ``a`` before and ``b`` after (``a != b``),
- both labels are the model's confident choice: on each date the label is the
  class of highest probability (not the background fallback of a low top
  probability) and that probability is at least ``ChangeRule.confidence``,
- ``b`` gained at least ``ChangeRule.margin`` in probability
  (``P_after[b] - P_before[b] >= margin``).

A pixel whose label differs but fails a test is *uncertain*; one with the
same label on both dates is *unchanged*.

Arrays: probabilities are ``K x H x W`` float32 (class order of the class
list, synonyms merged, as the backend returns them), labels ``H x W`` uint8
(class indices, :data:`NODATA_LABEL` where not valid), change codes
``H x W`` uint16. Rows run down, columns to the right (the processing grid's
order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from ..errors import InputError

#: The label value of nodata pixels in a class raster.
NODATA_LABEL = 255
#: Change codes: the same class on both dates.
NO_CHANGE = 0
#: Different classes, not confident on both dates or without the margin.
UNCERTAIN = 1
#: The first transition code: ``FIRST_TRANSITION + before * K + after`` (at most 2 + 254 * 254, so every
#: transition of the largest class list has its own uint16 code).
FIRST_TRANSITION = 2
#: Nodata on either date.
NODATA_CHANGE = 65535

#: Top probability each date needs for a change to count. Measured on the test pair (``tools/change_bench.py
#: --sweep``: the tiny random model, the OpenEarthMap class list of 9 classes, after = the Köln tile with a 200 x 200
#: region pasted from elsewhere in it; the labels differ on 17223 pixels inside the region and 4199 in the ring
#: within one window's reach around it): its top probabilities lie between 0.15 and 0.30 (5 and 95 %), and 0.3 or
#: more leaves no change at all; 0.2 (with the margin below) reports 5429 pixels inside (32 % of those changed
#: labels), 37 in the ring (99.3 % of the change lies inside) and none beyond. The real model's probabilities are far
#: more peaked (logit scale 50): there 0.2 only rejects near-ties, and the margin decides.
DEFAULT_CONFIDENCE = 0.2
#: Probability the after class must gain. On the same pair, with confidence 0.2: margin 0 reports 82 pixels in the
#: ring (windows shared with the pasted region shift their probabilities), 0.1 reports 37, 0.2 none but keeps only
#: 6 % of the changed labels inside; with neither test, 3420. Beyond one window's reach there is never any change:
#: identical pixels give identical probabilities on both dates.
DEFAULT_MARGIN = 0.1
#: m² per hectare.
HECTARE = 10000.0
#: Change patches smaller than this many pixels are merged into their surroundings (0: keep all).
DEFAULT_MIN_PIXELS = 0


@dataclass(frozen=True)
class ChangeRule:
    """When a different label counts as change; checked once, here.

    Attributes:
        confidence: top probability required on each date, 0-1.
        margin: probability the after class must gain, 0-1.
    """

    confidence: float = DEFAULT_CONFIDENCE
    margin: float = DEFAULT_MARGIN

    def __post_init__(self) -> None:
        for name, value in (("confidence", self.confidence), ("margin", self.margin)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0):
                raise InputError(f"The change {name} must be between 0 and 1, got {value!r}.")


def transition_code(before: int, after: int, classes: int) -> int:
    """The change code of ``before -> after`` among ``classes`` classes."""
    return FIRST_TRANSITION + before * classes + after


def transition_of(code: int, classes: int) -> Optional[tuple[int, int]]:
    """``(before, after)`` of a transition code; None for unchanged, uncertain and nodata."""
    if code < FIRST_TRANSITION or code == NODATA_CHANGE:
        return None
    before, after = divmod(code - FIRST_TRANSITION, classes)
    return (before, after) if before < classes else None


def transition_name(code: int, names: Sequence[str]) -> str:
    """How a change code reads in a legend: ``"tree, forest → building"``, "no change", "uncertain"."""
    if code == NO_CHANGE:
        return "no change"
    if code == UNCERTAIN:
        return "uncertain"
    pair = transition_of(code, len(names))
    if pair is None:
        return "nodata"
    return f"{names[pair[0]]} → {names[pair[1]]}"


@dataclass(frozen=True)
class ChangeBlock:
    """The decision for one block.

    Attributes:
        codes: ``H x W`` uint16 change codes.
        confidence: ``H x W`` float32, the smaller of the two dates' top probabilities (NaN where nodata).
    """

    codes: np.ndarray
    confidence: np.ndarray


def decide_change(before: np.ndarray, after: np.ndarray, before_labels: np.ndarray, after_labels: np.ndarray,
                  rule: ChangeRule) -> ChangeBlock:
    """Change codes of one block from both dates' probabilities and labels.

    Args:
        before, after: ``K x H x W`` float32 probabilities of each date.
        before_labels, after_labels: ``H x W`` uint8 labels of each date (:data:`NODATA_LABEL`: nodata).
        rule: the confidence and margin.

    Raises:
        ValueError: shapes that do not match.
    """
    if before.shape != after.shape or before.ndim != 3:
        raise ValueError(f"probabilities of both dates must be K x H x W alike, got {before.shape} and {after.shape}")
    if before_labels.shape != before.shape[1:] or after_labels.shape != before.shape[1:]:
        raise ValueError(f"labels {before_labels.shape} / {after_labels.shape} do not match {before.shape[1:]}")
    classes = before.shape[0]
    valid = (before_labels != NODATA_LABEL) & (after_labels != NODATA_LABEL)
    top_before, top_after = before.max(axis=0), after.max(axis=0)
    from_class = np.where(valid, before_labels, 0).astype(np.int64)
    to_class = np.where(valid, after_labels, 0).astype(np.int64)
    confident = ((before.argmax(axis=0) == from_class) & (after.argmax(axis=0) == to_class)
                 & (top_before >= rule.confidence) & (top_after >= rule.confidence))
    gained = (np.take_along_axis(after, to_class[None], 0)[0]
              - np.take_along_axis(before, to_class[None], 0)[0]) >= rule.margin
    differs = from_class != to_class
    codes = np.full(valid.shape, NO_CHANGE, np.uint16)
    codes[differs] = UNCERTAIN
    changed = differs & confident & gained
    codes[changed] = (FIRST_TRANSITION + from_class * classes + to_class)[changed].astype(np.uint16)
    codes[~valid] = NODATA_CHANGE
    confidence = np.where(valid, np.minimum(top_before, top_after), np.nan).astype(np.float32)
    return ChangeBlock(codes, confidence)


@dataclass
class TransitionTally:
    """Areas counted over the blocks of a run.

    Attributes:
        crosstab: ``K x K`` float64 m², before label (rows) by after label (columns), over pixels valid on
            both dates: its row sums are the before class areas, its column sums the after class areas.
        changed: ``K x K`` float64 m² of confident changes (zero on the diagonal).
        pixels: ``K x K`` int64 pixel counts of ``crosstab``.
        changed_pixels: ``K x K`` int64 pixel counts of ``changed``.
        nodata_pixels: pixels nodata on either date.
    """

    classes: int
    crosstab: np.ndarray = field(init=False)
    changed: np.ndarray = field(init=False)
    pixels: np.ndarray = field(init=False)
    changed_pixels: np.ndarray = field(init=False)
    nodata_pixels: int = 0

    def __post_init__(self) -> None:
        k = self.classes
        self.crosstab, self.changed = np.zeros((k, k)), np.zeros((k, k))
        self.pixels, self.changed_pixels = np.zeros((k, k), np.int64), np.zeros((k, k), np.int64)

    def add(self, before_labels: np.ndarray, after_labels: np.ndarray, codes: np.ndarray,
            row_areas: np.ndarray) -> None:
        """Count one block.

        Args:
            before_labels, after_labels: ``H x W`` uint8 labels.
            codes: ``H x W`` uint16 change codes of the block (:func:`decide_change`).
            row_areas: ``H`` float64, the area in m² of one pixel of each row (constant on a projected
                grid; it shrinks towards the poles on a geographic one).
        """
        k = self.classes
        valid = codes != NODATA_CHANGE
        self.nodata_pixels += int((~valid).sum())
        areas = np.broadcast_to(np.asarray(row_areas, np.float64)[:, None], codes.shape)
        pair = before_labels.astype(np.int64) * k + after_labels.astype(np.int64)
        changed = valid & (codes >= FIRST_TRANSITION)
        for target, count, keep in ((self.crosstab, self.pixels, valid), (self.changed, self.changed_pixels, changed)):
            target += np.bincount(pair[keep], weights=areas[keep], minlength=k * k).reshape(k, k)
            count += np.bincount(pair[keep], minlength=k * k).reshape(k, k)

    @property
    def before_totals(self) -> np.ndarray:
        """``K`` m² of each class on the before date."""
        return self.crosstab.sum(axis=1)

    @property
    def after_totals(self) -> np.ndarray:
        """``K`` m² of each class on the after date."""
        return self.crosstab.sum(axis=0)

    @property
    def net_change(self) -> np.ndarray:
        """``K`` m² gained (positive) or lost by each class between the dates."""
        return self.after_totals - self.before_totals

    @property
    def uncertain(self) -> np.ndarray:
        """``K x K`` m² that changed label without passing the rule."""
        off_diagonal = self.crosstab - np.diag(np.diag(self.crosstab))
        return off_diagonal - self.changed

    def remove_changes(self, codes: np.ndarray, areas: np.ndarray) -> None:
        """Take confident changes back out of :attr:`changed` (the minimum mapping unit made them uncertain).

        Args:
            codes: ``N`` transition codes (``>= FIRST_TRANSITION``) of the pixels taken out.
            areas: ``N`` float64 m² of those pixels.
        """
        k = self.classes
        flat = np.asarray(codes, np.int64) - FIRST_TRANSITION  # the code of a -> b is 2 + a * K + b: a flat index
        if flat.size and (flat.min() < 0 or flat.max() >= k * k):
            raise ValueError(f"not transition codes of {k} classes: {flat.min() + 2}..{flat.max() + 2}")
        self.changed -= np.bincount(flat, weights=np.asarray(areas, np.float64), minlength=k * k).reshape(k, k)
        self.changed_pixels -= np.bincount(flat, minlength=k * k).reshape(k, k)
        np.maximum(self.changed, 0.0, out=self.changed)  # rounding of the subtraction, never below zero

    @property
    def valid_pixels(self) -> int:
        """Pixels valid on both dates."""
        return int(self.pixels.sum())

    def present_codes(self) -> list[int]:
        """Transition codes with at least one changed pixel, largest area first."""
        order = np.argsort(-self.changed, axis=None, kind="stable")
        return [FIRST_TRANSITION + int(flat) for flat in order if self.changed_pixels.flat[flat] > 0]


def format_area(square_metres: float) -> str:
    """``"12.4 ha"`` from 1 ha up, ``"530 m²"`` below."""
    if square_metres >= HECTARE:
        return f"{square_metres / HECTARE:.1f} ha"
    return f"{square_metres:.0f} m²"


def change_summary(tally: TransitionTally, names: Sequence[str], limit: int = 3) -> str:
    """One line for the user: the largest confident changes, e.g. ``"12.4 ha cropland → building, …"``."""
    codes = tally.present_codes()
    if not codes:
        uncertain = float(tally.uncertain.sum())
        tail = f" ({format_area(uncertain)} uncertain)" if uncertain > 0 else ""
        return f"No change found{tail}."
    parts = []
    for code in codes[:limit]:
        before, after = divmod(code - FIRST_TRANSITION, tally.classes)
        parts.append(f"{format_area(float(tally.changed[before, after]))} {names[before]} → {names[after]}")
    more = f", and {len(codes) - limit} more" if len(codes) > limit else ""
    return "; ".join(parts) + more
