"""What a finished run tells the user: class shares, a warning for a one-class result, a short label (no QGIS)."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

#: The label value of nodata pixels in a class raster.
NODATA = 255


def class_shares(class_pixels: Mapping[int, int], names: Sequence[str]) -> list[float]:
    """The share (0-1) of each class among the valid pixels, in class order (all 0 when nothing is valid).

    Args:
        class_pixels: pixel count per label value (255: nodata), as in ``JobResult.class_pixels``.
        names: the class names; the label value of class ``i`` is ``i``.
    """
    valid = sum(count for value, count in class_pixels.items() if value != NODATA)
    return [class_pixels.get(index, 0) / valid if valid else 0.0 for index in range(len(names))]


def shares_message(class_pixels: Mapping[int, int], names: Sequence[str]) -> str:
    """One line: each class's share of the valid pixels, and the nodata share of the whole area."""
    shares = class_shares(class_pixels, names)
    parts = "; ".join(f"{name} {100.0 * share:.1f} %" for name, share in zip(names, shares))
    total = sum(class_pixels.values())
    nodata = class_pixels.get(NODATA, 0)
    tail = f" (nodata: {100.0 * nodata / total:.1f} % of the area, not counted)" if nodata and total else ""
    return f"Class shares: {parts}{tail}"


def shares_warning(class_pixels: Mapping[int, int], names: Sequence[str], background_index: Optional[int],
                   threshold: float) -> Optional[str]:
    """A warning when the result cannot be what the user wanted: every valid pixel in one class, or none valid.

    Returns None for a result with two classes or more (and for a class list of one class without background,
    where one class everywhere is all that can come out).
    """
    present = [value for value, count in class_pixels.items() if count and value != NODATA]
    if not present:
        return ("Every pixel of the area is nodata: nothing was segmented. Check the input's nodata value and "
                "alpha band, the extent and the mask.")
    if len(present) > 1 or len(names) < 2:
        return None
    value = present[0]
    name = names[value] if value < len(names) else f"class {value}"
    if value == background_index:
        return (f"Every pixel is '{name}', the background: no class reached the probability threshold "
                f"{threshold:g}. Lower the threshold (the presets use 0.1 to 0.7), or describe the classes with "
                "other words or synonyms.")
    if background_index is not None:
        return (f"Every pixel is '{name}': add the other classes you see in the image, use more specific names, "
                f"or raise the probability threshold (now {threshold:g}) so that uncertain pixels become "
                f"'{names[background_index]}'.")
    return (f"Every pixel is '{name}': add the other classes you see in the image, or a background class, or use "
            "more specific names.")


def classes_label(names: Sequence[str], background_index: Optional[int] = None, limit: int = 3) -> str:
    """A short label for a run's classes: the first name of the first ``limit`` non-background classes, "+N".

    ``["background", "building, roof", "road", "tree, forest", "water"]`` -> ``"building, road, tree +1"``.
    """
    firsts = [name.split(",")[0].strip() for index, name in enumerate(names) if index != background_index]
    firsts = [name for name in firsts if name] or [name.split(",")[0].strip() for name in names]
    label = ", ".join(firsts[:limit])
    return f"{label} +{len(firsts) - limit}" if len(firsts) > limit else label
