"""CSV tables that read back as numbers: numbers unquoted, and a ``.csvt`` naming each column's type.

GDAL's CSV writer quotes integers (``"559"``) and, without a ``.csvt``, GDAL and QGIS read every column of a
CSV as text. A table written through a Processing sink is rewritten here, in its staging folder, before it is
put in place.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable

#: Qt's type names (``QMetaType.typeName`` of a QgsField's type) and the GDAL ``.csvt`` type of such a column.
CSVT_TYPES = {"int": "Integer", "uint": "Integer", "bool": "Integer", "qlonglong": "Integer64",
              "qulonglong": "Integer64", "double": "Real", "QDate": "Date", "QDateTime": "DateTime",
              "QTime": "Time"}


def csvt_path(table: Path) -> Path:
    return table.with_suffix(".csvt")


def rewrite_with_types(table: Path, type_names: Iterable[str]) -> None:
    """Rewrite the CSV ``table`` with only the quotes a value needs (a comma, a quote, a line break in it) and
    write its ``.csvt`` from ``type_names`` (Qt's type names, one per column; others: String).

    Raises:
        OSError: the file cannot be read or written (a full disk).
    """
    with table.open(newline="", encoding="utf-8") as source:
        rows = list(csv.reader(source))
    with table.open("w", newline="", encoding="utf-8") as target:
        csv.writer(target, quoting=csv.QUOTE_MINIMAL, lineterminator="\n").writerows(rows)
    kinds = ",".join(f'"{CSVT_TYPES.get(name, "String")}"' for name in type_names)
    csvt_path(table).write_text(kinds + "\n", encoding="utf-8")
