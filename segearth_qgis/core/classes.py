"""Class lists for the panel: the paper's presets and a colour for every class (no QGIS)."""

from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ClassesError
from .request_rules import DEFAULT_BIAS_LAMBDA, ClassRuleError
from .request_rules import check_class_lines as check_request_lines

RGBA = tuple[int, int, int, int]


@dataclass(frozen=True)
class Preset:
    """A class list with the settings the paper's config uses for it."""

    name: str
    classes: tuple[str, ...]
    threshold: float
    background_index: int = 0
    bias_lambda: float = DEFAULT_BIAS_LAMBDA
    key: str = ""
    task: str = ""
    #: ``optical`` or ``sar``: the imagery (and model) the class set was made for. A ``background_index``
    #: of -1 means no background class.
    imagery: str = "optical"


#: The benchmark class sets: a copy of the backend's ``segearth_backend/data/benchmarks.json``
#: (the one source, written from the authors' configs; a test keeps the copy identical).
BENCHMARKS_FILE = Path(__file__).with_name("benchmarks.json")


def load_presets(path: Path = BENCHMARKS_FILE) -> tuple[Preset, ...]:
    """Every preset of the benchmark file, in its order (OpenEarthMap first)."""
    document = json.loads(path.read_text(encoding="utf-8"))
    return tuple(
        Preset(name=str(raw["name"]), classes=tuple(str(c) for c in raw["classes"]),
               threshold=float(raw["prob_threshold"]), background_index=int(raw["background_index"]),
               bias_lambda=float(raw["bias_lambda"]), key=str(raw["key"]), task=str(raw["task"]),
               imagery=str(raw.get("imagery", "optical")))
        for raw in document["presets"]
    )


#: The class sets, thresholds, background indices and lambdas SegEarth-OV uses on its 17
#: benchmarks and SegEarth-OV-2 on its SAR benchmarks, plus generic building / road / water sets
#: and a SAR starter set.
PRESETS: tuple[Preset, ...] = load_presets()

#: Canonical colours by keyword, checked against every synonym of a class.
_KEYWORD_COLOURS: tuple[tuple[tuple[str, ...], RGBA], ...] = (
    (("water", "river", "lake", "sea", "pond", "reservoir", "canal", "ocean", "swimming pool"), (31, 120, 220, 255)),
    (("tree", "forest", "woodland", "orchard"), (20, 110, 40, 255)),
    (("grass", "meadow", "lawn", "park", "vegetation", "shrub"), (110, 190, 70, 255)),
    (("cropland", "agricultural", "farmland", "crop", "field"), (200, 215, 90, 255)),
    (("building", "roof", "house"), (220, 40, 40, 255)),
    (("road", "street", "highway", "railway"), (110, 110, 110, 255)),
    (("pavement", "parking", "sidewalk", "impervious"), (170, 170, 170, 255)),
    (("bareland", "barren", "soil", "sand", "desert", "quarry"), (190, 150, 100, 255)),
    (("snow", "ice", "glacier"), (235, 245, 255, 255)),
    (("cloud",), (245, 245, 245, 255)),
)
BACKGROUND_COLOUR: RGBA = (0, 0, 0, 0)


def class_lines(text: str) -> list[str]:
    """The non-blank lines of the class text box, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def check_class_lines(lines: list[str]) -> None:
    """Refuse a class list the backend would refuse, before any work starts (the backend's own rules:
    :mod:`.request_rules`).

    Raises:
        ClassesError: no class, too many, a line or synonym too long, too many synonyms or names, an
            empty synonym ("tree,"), or a synonym used twice (case-insensitive, within or across classes).
    """
    if not lines:
        raise ClassesError("Type at least one class, one per line (synonyms separated by commas).")
    try:
        check_request_lines(lines)
    except ClassRuleError as error:
        raise ClassesError(str(error)) from None


#: The synonym that marks a class line as the background class when the user has not chosen one.
BACKGROUND_WORD = "background"


def background_line(lines: list[str]) -> int | None:
    """The first line (0-based) with a synonym "background" (any case), or None."""
    for index, line in enumerate(lines):
        if any(part.strip().casefold() == BACKGROUND_WORD for part in line.split(",")):
            return index
    return None


def class_name(line: str) -> str:
    """A class line's display name: its synonyms joined with ', '."""
    return ", ".join(part.strip() for part in line.split(",") if part.strip())


def _canonical(line: str) -> RGBA | None:
    synonyms = [part.strip().lower() for part in line.split(",")]
    for keywords, colour in _KEYWORD_COLOURS:
        if any(keyword == s or keyword in s.split() or s.startswith(keyword) for s in synonyms for keyword in keywords):
            return colour
    return None


def _distinct(index: int) -> RGBA:
    """Well-separated hues (golden-ratio steps), saturated, not too dark."""
    hue = (0.12 + index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.9)
    return int(r * 255), int(g * 255), int(b * 255), 255


def class_colours(lines: list[str], background_index: int | None = 0) -> list[RGBA]:
    """An RGBA colour per class: canonical colours by keyword, distinct hues otherwise.

    The background class (``background_index``; None for none) is transparent.
    Two classes never share a colour: a repeated canonical colour falls back to
    a distinct hue.
    """
    colours: list[RGBA] = []
    used: set[RGBA] = set()
    spare = 0
    for index, line in enumerate(lines):
        if index == background_index:
            colours.append(BACKGROUND_COLOUR)
            continue
        colour = _canonical(line)
        while colour is None or colour in used:
            colour = _distinct(spare)
            spare += 1
        used.add(colour)
        colours.append(colour)
    return colours
