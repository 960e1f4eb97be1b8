"""The plugin refuses a class list before any work starts exactly as the backend would (same rules, same words)."""

from __future__ import annotations

import pytest

from segearth_backend.errors import ClassListError
from segearth_backend.pipeline.classes import parse_classes
from segearth_qgis.core.classes import check_class_lines
from segearth_qgis.core.request_rules import MAX_LINE_CHARS, MAX_QUERIES, MAX_SYNONYM_CHARS, MAX_SYNONYMS_PER_CLASS
from segearth_qgis.errors import ClassesError

REFUSED = {
    "17 synonyms": ["road", ",".join(f"synonym {i}" for i in range(MAX_SYNONYMS_PER_CLASS + 1))],
    "a long synonym": ["road", "x" * (MAX_SYNONYM_CHARS + 1)],
    "a long line": ["road", ",".join(["y" * 150] * 27)[:MAX_LINE_CHARS + 1]],
    "too many names": [",".join(f"c{k}s{j}" for j in range(5)) for k in range(MAX_QUERIES // 5 + 1)],
    "a duplicate": ["water", "river, Water"],
    "an empty synonym": ["road", "tree,"],
}


@pytest.mark.parametrize("lines", REFUSED.values(), ids=REFUSED.keys())
def test_what_the_backend_refuses_is_refused_when_planning_with_its_message(lines):
    with pytest.raises(ClassListError) as backend:
        parse_classes(lines)
    with pytest.raises(ClassesError) as plugin:
        check_class_lines(lines)
    assert str(plugin.value) == str(backend.value)


def test_the_largest_list_the_backend_accepts_passes():
    lines = [",".join(f"class {k} synonym {j}" for j in range(4)) for k in range(254)]
    assert parse_classes(lines).num_queries == 1016
    check_class_lines(lines)


def test_an_empty_list_is_refused_in_the_panel_s_words():
    with pytest.raises(ClassesError, match="Type at least one class"):
        check_class_lines([])
