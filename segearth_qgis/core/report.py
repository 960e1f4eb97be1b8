"""What a finished run tells the user: class shares, a warning for a one-class result, a short label (no QGIS).

The one reporter of both front ends: the dock's outcome line (``gui/runner.py``) and Processing's log
(``processing/segment.py``) take their shares and their warning from here, so they agree on when a result is
"all one class" (:data:`UNIFORM_SHARE`) and on what to do about it.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

from .request_rules import NODATA_LABEL

#: A result where one class covers at least this share of the valid pixels is called uniform.
UNIFORM_SHARE = 0.995


def class_shares(class_pixels: Mapping[int, int], names: Sequence[str]) -> list[float]:
    """The share (0-1) of each class among the valid pixels, in class order (all 0 when nothing is valid).

    Args:
        class_pixels: pixel count per label value (255: nodata), as in ``JobResult.class_pixels``.
        names: the class names; the label value of class ``i`` is ``i``.
    """
    valid = sum(count for value, count in class_pixels.items() if value != NODATA_LABEL)
    return [class_pixels.get(index, 0) / valid if valid else 0.0 for index in range(len(names))]


def largest_shares(class_pixels: Mapping[int, int], names: Sequence[str]) -> list[tuple[str, float]]:
    """(name, share of the valid pixels) of every class with pixels, largest first ([] when nothing is valid)."""
    shares = class_shares(class_pixels, names)
    present = [(names[value], shares[value]) for value in range(len(names)) if class_pixels.get(value, 0)]
    return sorted(present, key=lambda item: -item[1])


def shares_summary(class_pixels: Mapping[int, int], names: Sequence[str], shown: int = 6) -> str:
    """The largest shares, largest first ("water 60%, road 40%"), those under 0.5 % counted; '' when none is valid."""
    shares = largest_shares(class_pixels, names)
    kept = [(name, share) for name, share in shares if share >= 0.005][:shown]
    hidden = len(shares) - len(kept)
    return ", ".join(f"{name} {share:.0%}" for name, share in kept) + (f" (+{hidden} under 1 %)" if hidden else "")


def shares_message(class_pixels: Mapping[int, int], names: Sequence[str]) -> str:
    """One line: each class's share of the valid pixels, and the nodata share of the whole area."""
    shares = class_shares(class_pixels, names)
    parts = "; ".join(f"{name} {100.0 * share:.1f} %" for name, share in zip(names, shares))
    total = sum(class_pixels.values())
    nodata = class_pixels.get(NODATA_LABEL, 0)
    tail = f" (nodata: {100.0 * nodata / total:.1f} % of the area, not counted)" if nodata and total else ""
    return f"Class shares: {parts}{tail}"


def shares_warning(class_pixels: Mapping[int, int], names: Sequence[str], background_index: Optional[int],
                   threshold: float) -> Optional[str]:
    """A warning when the result cannot be what the user wanted: one class covers at least :data:`UNIFORM_SHARE`
    of the valid pixels, or none is valid.

    Returns None for a result with two classes or more (and for a class list of one class without background,
    where one class everywhere is all that can come out).
    """
    shares = largest_shares(class_pixels, names)
    if not shares:
        return ("Every pixel of the area is nodata: nothing was segmented. Check the input's nodata value and "
                "alpha band, the extent and the mask.")
    name, share = shares[0]
    if share < UNIFORM_SHARE or len(names) < 2:
        return None
    every = f"Every pixel is '{name}'" if share >= 1.0 else f"{share:.1%} of the pixels are '{name}'"
    if background_index is not None and name == names[background_index]:
        return (f"{every}, the background: no class reached the probability threshold {threshold:g}. Lower the "
                "threshold (the presets use 0.1 to 0.7: lower it in the panel's Options or the algorithm's "
                "parameters), or describe the classes with other words or synonyms.")
    if background_index is not None:
        return (f"{every}: add the other classes you see in the image, use more specific names, or raise the "
                f"probability threshold (now {threshold:g}) so that uncertain pixels become "
                f"'{names[background_index]}'; check also that the bands are red, green and blue.")
    return (f"{every}: add the other classes you see in the image, or a background class, or use more specific "
            "names; check also that the bands are red, green and blue.")


def classes_label(names: Sequence[str], background_index: Optional[int] = None, limit: int = 3) -> str:
    """A short label for a run's classes: the first name of the first ``limit`` non-background classes, "+N".

    ``["background", "building, roof", "road", "tree, forest", "water"]`` -> ``"building, road, tree +1"``.
    """
    firsts = [name.split(",")[0].strip() for index, name in enumerate(names) if index != background_index]
    firsts = [name for name in firsts if name] or [name.split(",")[0].strip() for name in names]
    label = ", ".join(firsts[:limit])
    return f"{label} +{len(firsts) - limit}" if len(firsts) > limit else label
