"""Parsing of the user's class list (pure Python, no torch).

A class list is one class per line; a line may hold several synonyms
separated by commas (``"tree, forest"``). Every synonym becomes its own text
query; a class's probability is the maximum over its synonyms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

from .errors import ClassListError

#: Label values 0..254 are classes; 255 is reserved for nodata.
MAX_CLASSES = 254
NODATA_LABEL = 255


@dataclass(frozen=True)
class ClassSet:
    """A validated class list.

    Attributes:
        lines: the class lines as given, whitespace-normalised
            (``"tree, forest"`` -> ``"tree,forest"``), one per class.
        names: the display name of each class (its first synonym).
        queries: every synonym of every class, in order; one text query each.
        query_class: for each query, the index of its class in ``lines``.
    """

    lines: tuple[str, ...]
    names: tuple[str, ...]
    queries: tuple[str, ...]
    query_class: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return len(self.lines)

    @property
    def num_queries(self) -> int:
        return len(self.queries)


def _collapse_spaces(text: str) -> str:
    return " ".join(text.split())


def parse_classes(classes: Union[str, Sequence[str]]) -> ClassSet:
    """Validate a class list and split it into text queries.

    Args:
        classes: either a sequence of class lines, or one string with a class
            per line (as typed in a text box; whitespace-only lines in a
            string are ignored, in a sequence they are an error).

    Returns:
        The :class:`ClassSet`.

    Raises:
        ClassListError: empty list, blank class or synonym, a synonym used
            twice (within or across classes), or more than 254 classes.
    """
    if isinstance(classes, str):
        raw_lines = [line for line in classes.splitlines() if line.strip()]
    else:
        if not isinstance(classes, Sequence):
            raise ClassListError(
                "classes must be a list of class lines (strings), "
                f"got {type(classes).__name__}."
            )
        raw_lines = list(classes)
    if not raw_lines:
        raise ClassListError(
            "The class list is empty: give at least one class, one per line "
            "(for example 'building,roof' and 'road')."
        )
    if len(raw_lines) > MAX_CLASSES:
        raise ClassListError(
            f"{len(raw_lines)} classes given; at most {MAX_CLASSES} are supported "
            f"(label {NODATA_LABEL} is reserved for nodata). Merge or remove classes."
        )

    lines: list[str] = []
    names: list[str] = []
    queries: list[str] = []
    query_class: list[int] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_lines):
        if not isinstance(raw, str):
            raise ClassListError(
                f"Class {index + 1} is a {type(raw).__name__}, not text."
            )
        if not raw.strip():
            raise ClassListError(
                f"Class {index + 1} is blank: remove the empty line or type a class name."
            )
        synonyms = [_collapse_spaces(part) for part in raw.split(",")]
        if any(not s for s in synonyms):
            raise ClassListError(
                f"Class {index + 1} ('{raw.strip()}') has an empty synonym: "
                "remove the extra comma."
            )
        for synonym in synonyms:
            key = synonym.casefold()
            if key in seen:
                other = seen[key]
                where = "twice in the same class" if other == index else (
                    f"in class {other + 1} and class {index + 1}"
                )
                raise ClassListError(
                    f"'{synonym}' appears {where}: each class name and synonym "
                    "must be unique (case-insensitive)."
                )
            seen[key] = index
            queries.append(synonym)
            query_class.append(index)
        lines.append(",".join(synonyms))
        names.append(synonyms[0])
    return ClassSet(tuple(lines), tuple(names), tuple(queries), tuple(query_class))
