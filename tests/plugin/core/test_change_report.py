"""The change report's table rows, HTML page and legend, on a hand-made tally."""

from __future__ import annotations

import numpy as np
import pytest

from segearth_qgis.core.change import NO_CHANGE, UNCERTAIN, ChangeRule, TransitionTally, transition_code
from segearth_qgis.core.change_legend import NO_CHANGE_COLOUR, UNCERTAIN_COLOUR, change_legend
from segearth_qgis.core.change_report import change_html, class_rows, transition_rows

LINES = ["background", "building, roof", "tree,forest"]
NAMES = ["background", "building, roof", "tree, forest"]


def _tally() -> TransitionTally:
    """Before (rows) x after (columns), m²: 100 m² tree became building (60 confident), 30 background -> tree."""
    tally = TransitionTally(3)
    tally.crosstab[:] = [[500.0, 0.0, 30.0], [0.0, 200.0, 0.0], [0.0, 100.0, 400.0]]
    tally.pixels[:] = (tally.crosstab / 4).astype(np.int64)
    tally.changed[2, 1], tally.changed_pixels[2, 1] = 60.0, 15
    tally.changed[0, 2], tally.changed_pixels[0, 2] = 30.0, 7
    return tally


def test_class_rows_hold_the_totals_net_change_gains_and_losses():
    rows = class_rows(_tally(), NAMES)
    assert [r.class_name for r in rows] == NAMES
    tree, building = rows[2], rows[1]
    assert tree.to_areas == (0.0, 100.0, 400.0) and tree.before == 500.0 and tree.after == 430.0
    assert tree.net == -70.0 and tree.lost == 60.0 and tree.gained == 30.0 and tree.uncertain == 40.0
    assert building.gained == 60.0 and building.net == 100.0
    assert sum(r.before for r in rows) == sum(r.after for r in rows) == 1230.0


def test_transitions_largest_first_and_the_html_page():
    tally = _tally()
    assert [(t.before, t.after, t.area, t.pixels) for t in transition_rows(tally)] == [(2, 1, 60.0, 15),
                                                                                       (0, 2, 30.0, 7)]
    page = change_html(tally, NAMES, ChangeRule(0.25, 0.15), "Change <test>", [("Before", "a & b")])
    assert page.startswith("<!DOCTYPE html>") and "Change &lt;test&gt;" in page and "a &amp; b" in page
    assert page.index("tree, forest → building, roof") < page.index("background → tree, forest")
    assert "&gt;= 0.25" in page and "&gt;= 0.15" in page and "0.0060" in page  # 60 m² in ha
    empty = change_html(TransitionTally(3), NAMES, ChangeRule(), "t")
    assert "No confident change." in empty


def test_the_legend_names_every_transition_and_colours_it_after_what_it_became():
    codes = [transition_code(2, 1, 3), transition_code(0, 1, 3), transition_code(1, 2, 3)]
    legend = change_legend(LINES, codes)
    assert [(e.code, e.label) for e in legend[:2]] == [(NO_CHANGE, "no change"), (UNCERTAIN, "uncertain")]
    assert legend[0].colour == NO_CHANGE_COLOUR and legend[1].colour == UNCERTAIN_COLOUR
    assert [e.label for e in legend[2:]] == ["tree, forest → building, roof", "background → building, roof",
                                            "building, roof → tree, forest"]
    into_building = [e.colour for e in legend[2:4]]
    assert into_building[0] == (220, 40, 40, 255) and into_building[1] != into_building[0]  # red, then a shade
    assert legend[4].colour == (20, 110, 40, 255)  # became forest: green
    assert len({e.colour for e in legend}) == len(legend)


@pytest.mark.parametrize("count", [1, 7])
def test_many_transitions_into_one_class_stay_visible(count):
    legend = change_legend(LINES, [transition_code(0, 1, 3)] * count)
    assert all(e.colour[3] == 255 for e in legend[1:])
