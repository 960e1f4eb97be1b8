"""Parsing of the user's class list (pure Python, no torch).

A class list is one class per line; a line may hold several synonyms
separated by commas (``"tree, forest"``). Every synonym becomes its own text
query; a class's probability is the maximum over its synonyms. The rules and
limits are :mod:`segearth_backend.request_rules`, which the plugin applies too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

from ..errors import ClassListError
from ..request_rules import (
    MAX_CLASSES,
    MAX_LINE_CHARS,
    MAX_QUERIES,
    MAX_SYNONYM_CHARS,
    MAX_SYNONYMS_PER_CLASS,
    NODATA_LABEL,
    ClassRuleError,
    check_class_lines,
    quote,
)

__all__ = ["MAX_CLASSES", "MAX_LINE_CHARS", "MAX_QUERIES", "MAX_SYNONYM_CHARS", "MAX_SYNONYMS_PER_CLASS",
           "NODATA_LABEL", "ClassSet", "parse_classes", "quote"]


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
    try:
        synonyms_per_class = check_class_lines(raw_lines)
    except ClassRuleError as error:
        raise ClassListError(str(error)) from None
    queries = [synonym for synonyms in synonyms_per_class for synonym in synonyms]
    query_class = [index for index, synonyms in enumerate(synonyms_per_class) for _ in synonyms]
    return ClassSet(tuple(",".join(synonyms) for synonyms in synonyms_per_class),
                    tuple(synonyms[0] for synonyms in synonyms_per_class), tuple(queries), tuple(query_class))
