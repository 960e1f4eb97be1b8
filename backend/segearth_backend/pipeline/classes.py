"""Parsing of the user's class list (pure Python, no torch).

A class list is one class per line; a line may hold several synonyms
separated by commas (``"tree, forest"``). Every synonym becomes its own text
query; a class's probability is the maximum over its synonyms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

from ..errors import QUOTE_CHARS, ClassListError

#: Label values 0..254 are classes; 255 is reserved for nodata.
MAX_CLASSES = 254
NODATA_LABEL = 255
#: Limits on the text work one request may ask for. CLIP reads at most 77
#: tokens (about 300 characters of English, less with the prompt templates
#: around it), so a longer synonym only costs time.
MAX_SYNONYM_CHARS = 200
MAX_SYNONYMS_PER_CLASS = 16
MAX_LINE_CHARS = 4000
#: Every query is 80 template sentences through the text tower.
MAX_QUERIES = 1024


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """``text`` in quotes for a message, cut to ``limit`` characters (with an ellipsis)."""
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit - 1] + "…")


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
            twice (within or across classes), more than 254 classes, or a
            limit exceeded (``MAX_LINE_CHARS``, ``MAX_SYNONYM_CHARS``,
            ``MAX_SYNONYMS_PER_CLASS``, ``MAX_QUERIES``).
    """
    if isinstance(classes, str):
        if len(classes) > MAX_CLASSES * (MAX_LINE_CHARS + 1):
            raise ClassListError(
                f"The class list is {len(classes)} characters long; at most {MAX_CLASSES} lines of "
                f"{MAX_LINE_CHARS} characters are allowed. Shorten it."
            )
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
        synonyms = _split_line(raw, index)
        if len(queries) + len(synonyms) > MAX_QUERIES:
            total = len(queries) + sum(len(str(line).split(",")) for line in raw_lines[index:])
            raise ClassListError(
                f"The class list has about {total} names (classes and synonyms); at most {MAX_QUERIES} are "
                "allowed, since each is encoded with 80 prompt sentences. Drop rare synonyms."
            )
        for synonym in synonyms:
            key = synonym.casefold()
            if key in seen:
                other = seen[key]
                where = "twice in the same class" if other == index else (
                    f"in class {other + 1} and class {index + 1}"
                )
                raise ClassListError(
                    f"{quote(synonym)} appears {where}: each class name and synonym "
                    "must be unique (case-insensitive)."
                )
            seen[key] = index
            queries.append(synonym)
            query_class.append(index)
        lines.append(",".join(synonyms))
        names.append(synonyms[0])
    return ClassSet(tuple(lines), tuple(names), tuple(queries), tuple(query_class))


def _split_line(raw: object, index: int) -> list[str]:
    """One class line -> its synonyms (whitespace collapsed), checked against the limits."""
    if not isinstance(raw, str):
        raise ClassListError(f"Class {index + 1} is a {type(raw).__name__}, not text.")
    if not raw.strip():
        raise ClassListError(f"Class {index + 1} is blank: remove the empty line or type a class name.")
    if len(raw) > MAX_LINE_CHARS:
        raise ClassListError(
            f"Class {index + 1} ({quote(raw)}) is {len(raw)} characters long; at most {MAX_LINE_CHARS} "
            "are allowed. Keep a few short names per class."
        )
    parts = raw.split(",")
    if len(parts) > MAX_SYNONYMS_PER_CLASS:
        raise ClassListError(
            f"Class {index + 1} ({quote(raw)}) has {len(parts)} synonyms; at most {MAX_SYNONYMS_PER_CLASS} "
            "are allowed. Keep the most typical names."
        )
    synonyms = [_collapse_spaces(part) for part in parts]
    if any(not s for s in synonyms):
        raise ClassListError(f"Class {index + 1} ({quote(raw)}) has an empty synonym: remove the extra comma.")
    for synonym in synonyms:
        if len(synonym) > MAX_SYNONYM_CHARS:
            raise ClassListError(
                f"Class {index + 1}: the name {quote(synonym)} is {len(synonym)} characters long; at most "
                f"{MAX_SYNONYM_CHARS} are allowed (CLIP reads only 77 tokens). Use a short name."
            )
    return synonyms
