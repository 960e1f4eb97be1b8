"""What a segmentation request may hold, and the defaults both sides share (pure Python, standard library only).

This file exists twice, byte for byte: ``segearth_backend/request_rules.py`` (the backend checks every
request with it) and ``segearth_qgis/core/request_rules.py`` (the plugin checks a job with it before any
work starts); ``tests/test_request_rules.py`` keeps the two copies equal. The packages never import each
other, so this is how the plugin refuses what the backend would refuse, in the same words.

A class list is one class per line; a line may hold several synonyms separated by commas
(``"tree, forest"``). Every synonym becomes its own text query.
"""

from __future__ import annotations

from typing import Sequence

#: Label values 0..254 are classes; 255 marks nodata in a class raster.
MAX_CLASSES = 254
NODATA_LABEL = 255
#: Limits on the text work one request may ask for. CLIP reads at most 77 tokens (about 300 characters
#: of English, less with the prompt templates around it), so a longer synonym only costs time.
MAX_SYNONYM_CHARS = 200
MAX_SYNONYMS_PER_CLASS = 16
MAX_LINE_CHARS = 4000
#: Every query is 80 template sentences through the text tower.
MAX_QUERIES = 1024
#: Class text quoted in messages is cut to this many characters.
QUOTE_CHARS = 40

#: The global-bias weight lambda: the paper's value (0 turns the subtraction off), and the accepted range.
DEFAULT_BIAS_LAMBDA = -0.3
BIAS_LAMBDA_RANGE = (-10.0, 10.0)

#: The sliding window: WINDOW_SIZE-pixel windows every WINDOW_STRIDE pixels. The backend publishes the
#: geometry it uses in ``/health`` (``window``); the plugin plans its blocks with what the backend says.
WINDOW_SIZE = 224
WINDOW_STRIDE = 112


class ClassRuleError(ValueError):
    """A class list breaks a rule; the message says which and what to do (each side raises its own error)."""


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """``text`` in quotes for a message, cut to ``limit`` characters (with an ellipsis)."""
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit - 1] + "…")


def check_class_lines(raw_lines: Sequence[object]) -> list[list[str]]:
    """Check class lines and split them into synonyms (whitespace collapsed), one list per class.

    Raises:
        ClassRuleError: no class, more than ``MAX_CLASSES``, a line that is not text, blank or longer than
            ``MAX_LINE_CHARS``, more than ``MAX_SYNONYMS_PER_CLASS`` synonyms, an empty synonym, one longer
            than ``MAX_SYNONYM_CHARS``, more than ``MAX_QUERIES`` names in all, or a name used twice
            (case-insensitive, within or across classes).
    """
    if not raw_lines:
        raise ClassRuleError("The class list is empty: give at least one class, one per line "
                             "(for example 'building,roof' and 'road').")
    if len(raw_lines) > MAX_CLASSES:
        raise ClassRuleError(f"{len(raw_lines)} classes given; at most {MAX_CLASSES} are supported "
                             f"(label {NODATA_LABEL} is reserved for nodata). Merge or remove classes.")
    classes: list[list[str]] = []
    queries = 0
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_lines):
        synonyms = split_class_line(raw, index)
        if queries + len(synonyms) > MAX_QUERIES:
            total = queries + sum(len(str(line).split(",")) for line in raw_lines[index:])
            raise ClassRuleError(f"The class list has about {total} names (classes and synonyms); at most "
                                 f"{MAX_QUERIES} are allowed, since each is encoded with 80 prompt sentences. "
                                 "Drop rare synonyms.")
        for synonym in synonyms:
            key = synonym.casefold()
            if key in seen:
                other = seen[key]
                where = "twice in the same class" if other == index else f"in class {other + 1} and class {index + 1}"
                raise ClassRuleError(f"{quote(synonym)} appears {where}: each class name and synonym must be "
                                     "unique (case-insensitive).")
            seen[key] = index
        queries += len(synonyms)
        classes.append(synonyms)
    return classes


def split_class_line(raw: object, index: int) -> list[str]:
    """Class line number ``index`` (0-based) -> its synonyms (whitespace collapsed), checked against the limits."""
    if not isinstance(raw, str):
        raise ClassRuleError(f"Class {index + 1} is a {type(raw).__name__}, not text.")
    if not raw.strip():
        raise ClassRuleError(f"Class {index + 1} is blank: remove the empty line or type a class name.")
    if len(raw) > MAX_LINE_CHARS:
        raise ClassRuleError(f"Class {index + 1} ({quote(raw)}) is {len(raw)} characters long; at most "
                             f"{MAX_LINE_CHARS} are allowed. Keep a few short names per class.")
    parts = raw.split(",")
    if len(parts) > MAX_SYNONYMS_PER_CLASS:
        raise ClassRuleError(f"Class {index + 1} ({quote(raw)}) has {len(parts)} synonyms; at most "
                             f"{MAX_SYNONYMS_PER_CLASS} are allowed. Keep the most typical names.")
    synonyms = [" ".join(part.split()) for part in parts]
    if any(not synonym for synonym in synonyms):
        raise ClassRuleError(f"Class {index + 1} ({quote(raw)}) has an empty synonym: remove the extra comma.")
    for synonym in synonyms:
        if len(synonym) > MAX_SYNONYM_CHARS:
            raise ClassRuleError(f"Class {index + 1}: the name {quote(synonym)} is {len(synonym)} characters long; "
                                 f"at most {MAX_SYNONYM_CHARS} are allowed (CLIP reads only 77 tokens). Use a short "
                                 "name.")
    return synonyms

