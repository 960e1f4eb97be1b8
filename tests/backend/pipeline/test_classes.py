import pytest

from segearth_backend.errors import ClassListError
from segearth_backend.pipeline.classes import MAX_CLASSES, parse_classes


def test_synonyms_become_queries_of_their_class():
    parsed = parse_classes(["background", "building, roof ,house", "tree,forest"])
    assert parsed.queries == ("background", "building", "roof", "house", "tree", "forest")
    assert parsed.query_class == (0, 1, 1, 1, 2, 2)
    assert parsed.names == ("background", "building", "tree")
    assert parsed.lines == ("background", "building,roof,house", "tree,forest")
    assert (parsed.num_classes, parsed.num_queries) == (3, 6)


def test_text_box_string_ignores_blank_lines_and_collapses_spaces():
    parsed = parse_classes("water\n\n  swimming   pool , pond \n")
    assert parsed.lines == ("water", "swimming pool,pond")


def test_unicode_class_names_are_kept():
    assert parse_classes(["Gebäude", "道路"]).queries == ("Gebäude", "道路")


@pytest.mark.parametrize("classes, fragment", [
    ([], "empty"),
    ("  \n ", "empty"),
    (["road", "  "], "Class 2 is blank"),
    (["road", "tree,"], "empty synonym"),
    (["road", "Road"], "class 1 and class 2"),
    (["tree,forest,tree"], "twice in the same class"),
    (["water", "river,water"], "class 1 and class 2"),
    (["road", 3], "not text"),
    (None, "list of class lines"),
])
def test_bad_class_lists_are_refused_with_a_clear_message(classes, fragment):
    with pytest.raises(ClassListError, match=fragment):
        parse_classes(classes)


def test_class_list_errors_are_value_errors():
    with pytest.raises(ValueError, match="class list is empty") as caught:
        parse_classes([])
    assert isinstance(caught.value, ClassListError) and caught.value.code == "bad_classes"


def test_at_most_254_classes():
    assert parse_classes([f"class {i}" for i in range(MAX_CLASSES)]).num_classes == 254
    with pytest.raises(ClassListError, match="at most 254"):
        parse_classes([f"class {i}" for i in range(MAX_CLASSES + 1)])
