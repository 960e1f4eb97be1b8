"""The accuracy assessment as a self-contained HTML page (no QGIS, no external files)."""

from __future__ import annotations

import html
import math
from typing import Sequence

from .accuracy import AccuracyReport

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0 1.6em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th { background: #eee; }
td.name, th.name { text-align: left; }
td.diagonal { background: #d9f0d3; font-weight: bold; }
caption { text-align: left; font-weight: bold; padding-bottom: 0.3em; }
"""


def _number(value: float, digits: int = 4) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def html_report(report: AccuracyReport, title: str, details: Sequence[tuple[str, str]] = (),
                ignored_pixels: int = 0) -> str:
    """An HTML page: inputs, overall accuracy, kappa, mean IoU, the confusion matrix, per-class measures.

    Args:
        details: ``(label, value)`` lines describing the inputs (shown escaped).
        ignored_pixels: pixels left out by the class mapping.
    """

    def esc(text: str) -> str:  # element text only: quotes need no escaping
        return html.escape(text, quote=False)

    names = [esc(name) for name in report.names]
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<style>{_STYLE}</style></head><body>", f"<h1>{esc(title)}</h1>"]
    rows = list(details) + [
        ("Pixels compared", f"{report.total:,}"),
        ("Pixels left out by the mapping", f"{ignored_pixels:,}"),
        ("Overall accuracy", _number(report.overall_accuracy)),
        ("Cohen's kappa", _number(report.kappa)),
        ("Mean IoU", _number(report.mean_iou)),
    ]
    parts.append("<table><caption>Summary</caption>" + "".join(
        f"<tr><th class='name'>{esc(label)}</th><td class='name'>{esc(value)}</td></tr>" for label, value in rows)
        + "</table>")
    header = "".join(f"<th>{name}</th>" for name in names)
    body = []
    for row, name in enumerate(names):
        cells = "".join(
            f"<td{' class=diagonal' if column == row else ''}>{int(report.matrix[row, column]):,}</td>"
            for column in range(len(names)))
        body.append(f"<tr><th class='name'>{name}</th>{cells}<td>{int(report.matrix[row].sum()):,}</td></tr>")
    totals = "".join(f"<td>{int(value):,}</td>" for value in report.matrix.sum(axis=0))
    parts.append("<table><caption>Confusion matrix (rows: reference, columns: classification; pixels)</caption>"
                 f"<tr><th class='name'>reference \\ classified</th>{header}<th>total</th></tr>" + "".join(body)
                 + f"<tr><th class='name'>total</th>{totals}<td>{report.total:,}</td></tr></table>")
    measures = "".join(
        f"<tr><td class='name'>{name}</td><td>{int(report.matrix[i].sum()):,}</td>"
        f"<td>{int(report.matrix[:, i].sum()):,}</td><td>{_number(report.iou[i])}</td>"
        f"<td>{_number(report.precision[i])}</td><td>{_number(report.recall[i])}</td><td>{_number(report.f1[i])}</td>"
        "</tr>" for i, name in enumerate(names))
    parts.append("<table><caption>Per class</caption><tr><th class='name'>class</th><th>reference pixels</th>"
                 "<th>classified pixels</th><th>IoU</th><th>precision (user's)</th><th>recall (producer's)</th>"
                 f"<th>F1</th></tr>{measures}</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
