"""The legend of a change raster: one entry per code present, named and coloured (no QGIS).

A transition ``a -> b`` takes the colour of what the pixels became (``b``'s class colour, as in the class
rasters, so "→ building" is red and "→ water" blue); when several transitions lead to the same class, the
later ones (by area) are lighter or darker shades of it. Unchanged pixels are transparent, uncertain ones grey.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .change import FIRST_TRANSITION, NO_CHANGE, UNCERTAIN, transition_name, transition_of
from .classes import RGBA, class_colours, class_name

#: Unchanged pixels: transparent.
NO_CHANGE_COLOUR: RGBA = (0, 0, 0, 0)
#: Different labels that did not pass the rule: a neutral grey.
UNCERTAIN_COLOUR: RGBA = (150, 150, 150, 255)
#: Shades of a class colour for the 2nd, 3rd, ... transition into it: > 0 towards white, < 0 towards black.
_SHADES = (0.0, 0.45, -0.35, 0.7, -0.6)


@dataclass(frozen=True)
class LegendEntry:
    """One value of the change raster: its code, legend label and RGBA colour."""

    code: int
    label: str
    colour: RGBA


def _shade(colour: RGBA, amount: float) -> RGBA:
    target = 255 if amount > 0 else 0
    r, g, b = (round(c + (target - c) * abs(amount)) for c in colour[:3])
    return (r, g, b, 255)


def change_legend(lines: Sequence[str], codes: Sequence[int]) -> list[LegendEntry]:
    """Legend entries: "no change", "uncertain", then the transition ``codes`` in the order given (largest first).

    Args:
        lines: the class lines (synonyms separated by commas).
        codes: transition codes present (``>= FIRST_TRANSITION``).
    """
    names = [class_name(line) for line in lines]
    # Every class gets a visible colour here, the background too: a change into it is worth seeing.
    colours = class_colours(list(lines), None)
    entries = [LegendEntry(NO_CHANGE, "no change", NO_CHANGE_COLOUR), LegendEntry(UNCERTAIN, "uncertain",
                                                                                 UNCERTAIN_COLOUR)]
    into: dict[int, int] = {}
    for code in codes:
        pair = transition_of(code, len(names)) if code >= FIRST_TRANSITION else None
        if pair is None:
            continue
        rank = into.get(pair[1], 0)
        into[pair[1]] = rank + 1
        entries.append(LegendEntry(code, transition_name(code, names), _shade(colours[pair[1]],
                                                                              _SHADES[rank % len(_SHADES)])))
    return entries
