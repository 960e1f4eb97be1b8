"""What a change run reports: the transition matrix as table rows and as a self-contained HTML page (no QGIS).

Areas are m² (the tally's, see :class:`~segearth_qgis.core.change.TransitionTally`). The matrix is the
cross-tabulation of the two dates' labels over the pixels valid on both: row ``a``, column ``b`` is the area
labelled ``a`` before and ``b`` after (the diagonal is what kept its class), so its row sums are the before
class areas and its column sums the after class areas. Of the area off the diagonal, the part that passed the
change rule is *changed*, the rest *uncertain*.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Sequence

from .change import FIRST_TRANSITION, HECTARE, ChangeRule, TransitionTally, format_area


@dataclass(frozen=True)
class ClassRow:
    """One row of the transition table: a class and its areas in m².

    Attributes:
        class_id, class_name: the class (line number from 0, display name).
        to_areas: ``K`` m² labelled this class before and each class after.
        before, after: the class's area on each date.
        net: ``after - before``.
        gained, lost: confident change into and out of the class.
        uncertain: area labelled this class before and another class after without passing the rule.
    """

    class_id: int
    class_name: str
    to_areas: tuple[float, ...]
    before: float
    after: float
    net: float
    gained: float
    lost: float
    uncertain: float


def class_rows(tally: TransitionTally, names: Sequence[str]) -> list[ClassRow]:
    """One :class:`ClassRow` per class, in class order."""
    before, after, net = tally.before_totals, tally.after_totals, tally.net_change
    gained, lost = tally.changed.sum(axis=0), tally.changed.sum(axis=1)
    uncertain = tally.uncertain.sum(axis=1)
    return [ClassRow(k, names[k], tuple(float(v) for v in tally.crosstab[k]), float(before[k]), float(after[k]),
                     float(net[k]), float(gained[k]), float(lost[k]), float(uncertain[k]))
            for k in range(tally.classes)]


@dataclass(frozen=True)
class TransitionRow:
    """One confident transition: ``before -> after``, its area (m²) and pixels."""

    code: int
    before: int
    after: int
    area: float
    pixels: int


def transition_rows(tally: TransitionTally) -> list[TransitionRow]:
    """Every confident transition present, largest area first."""
    rows = []
    for code in tally.present_codes():
        before, after = divmod(code - FIRST_TRANSITION, tally.classes)
        rows.append(TransitionRow(code, before, after, float(tally.changed[before, after]),
                                  int(tally.changed_pixels[before, after])))
    return rows


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0 1.6em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th { background: #eee; }
td.name, th.name { text-align: left; }
td.diagonal { background: #eeeeee; color: #666; }
td.gain { color: #1a7f37; } td.loss { color: #b42318; }
caption { text-align: left; font-weight: bold; padding-bottom: 0.3em; }
"""


def _ha(square_metres: float) -> str:
    return f"{square_metres / HECTARE:,.4f}"


def change_html(tally: TransitionTally, names: Sequence[str], rule: ChangeRule, title: str,
                details: Sequence[tuple[str, str]] = ()) -> str:
    """An HTML page: inputs and rule, the confident transitions, the transition matrix, per-class totals.

    Args:
        details: ``(label, value)`` lines describing the inputs (shown escaped).
    """

    def esc(text: str) -> str:  # element text only: quotes need no escaping
        return html.escape(text, quote=False)

    labels = [esc(name) for name in names]
    changed, uncertain = float(tally.changed.sum()), float(tally.uncertain.sum())
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<style>{_STYLE}</style></head><body>", f"<h1>{esc(title)}</h1>"]
    rows = list(details) + [
        ("Change rule", f"both dates' top probability >= {rule.confidence:g}, the after class gaining >= "
                        f"{rule.margin:g}"),
        ("Pixels valid on both dates", f"{tally.valid_pixels:,}"),
        ("Pixels nodata on either date (not counted)", f"{tally.nodata_pixels:,}"),
        ("Area compared", format_area(float(tally.crosstab.sum()))),
        ("Changed (confident)", format_area(changed)),
        ("Uncertain (other class, rule not met)", format_area(uncertain)),
    ]
    parts.append("<table><caption>Summary</caption>" + "".join(
        f"<tr><th class='name'>{esc(label)}</th><td class='name'>{esc(value)}</td></tr>" for label, value in rows)
        + "</table>")
    transitions = transition_rows(tally)
    if transitions:
        body = "".join(f"<tr><td class='name'>{labels[t.before]} → {labels[t.after]}</td><td>{t.area:,.1f}</td>"
                       f"<td>{_ha(t.area)}</td><td>{t.pixels:,}</td></tr>" for t in transitions)
        parts.append("<table><caption>Confident changes (largest first)</caption><tr><th class='name'>from → to"
                     f"</th><th>m²</th><th>ha</th><th>pixels</th></tr>{body}</table>")
    else:
        parts.append("<p>No confident change.</p>")
    header = "".join(f"<th>{name}</th>" for name in labels)
    body_rows = []
    for row in class_rows(tally, names):
        cells = "".join(f"<td{' class=diagonal' if column == row.class_id else ''}>{_ha(value)}</td>"
                        for column, value in enumerate(row.to_areas))
        body_rows.append(f"<tr><th class='name'>{labels[row.class_id]}</th>{cells}<td>{_ha(row.before)}</td></tr>")
    totals = "".join(f"<td>{_ha(value)}</td>" for value in tally.after_totals)
    parts.append("<table><caption>Transition matrix (rows: before, columns: after; ha, labels of both dates, "
                 f"confident or not)</caption><tr><th class='name'>before \\ after</th>{header}<th>before total</th>"
                 "</tr>" + "".join(body_rows)
                 + f"<tr><th class='name'>after total</th>{totals}<td>{_ha(float(tally.crosstab.sum()))}</td></tr>"
                 "</table>")
    per_class = "".join(
        f"<tr><td class='name'>{labels[r.class_id]}</td><td>{_ha(r.before)}</td><td>{_ha(r.after)}</td>"
        f"<td class='{'gain' if r.net > 0 else 'loss' if r.net < 0 else ''}'>{r.net / HECTARE:+,.4f}</td>"
        f"<td>{_ha(r.gained)}</td><td>{_ha(r.lost)}</td><td>{_ha(r.uncertain)}</td></tr>"
        for r in class_rows(tally, names))
    parts.append("<table><caption>Per class (ha)</caption><tr><th class='name'>class</th><th>before</th>"
                 "<th>after</th><th>net change</th><th>gained (confident)</th><th>lost (confident)</th>"
                 f"<th>uncertain (from it)</th></tr>{per_class}</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
