"""QGIS 4: the plugin writes no QGIS name that QGIS 4 keeps only as a compatibility alias, and no removed Qt 5 call.

No QGIS 4 runs here. QGIS 4.0 keeps the PyQGIS API of 3.x but runs on Qt 6,
whose bindings reach an enum value only through its enum
(``Qgis.MessageLevel.Warning``, not ``Qgis.Warning``); the enums QGIS moved
into ``Qgis`` (3.30-3.36) stay under their old homes as aliases
(``QgsWkbTypes.GeometryType.PolygonGeometry`` for ``Qgis.GeometryType.Polygon``)
that QGIS means to drop during 4.x, like its deprecated methods. So this test
collects, from the plugin's source, every name written as a path from an
imported QGIS class and resolves it in the running QGIS:

- every step resolves;
- a class or enum is reached under its own home and name (its ``__qualname__``);
- an enum value is reached through its own enum, under its own name.

On QGIS 3.22 (``make test``) the moved enums have only their old homes; on
3.40 and 3.44 (``make test-qgis``) the old homes are aliases and fail the
second rule: the plugin takes such names from ``qgis_compat.py``, whose 3.22
branches (``else`` of ``if hasattr(Qgis, ...)``) are exempt and whose new
branches are checked where the running QGIS has them. Deprecated methods are
caught at run time: a DeprecationWarning from our code fails the test
(pytest.ini). Qt 6's own names: ``test_qt6_names.py``.
"""

from __future__ import annotations

import ast
import enum
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.helpers import ROOT

PLUGIN = ROOT / "segearth_qgis"
QGIS_MODULES = ("qgis.core", "qgis.gui", "qgis.analysis")
#: Methods PyQt6 (QGIS 4) no longer has.
QT5_ONLY_METHODS = {"exec_": "exec()", "print_": "print()"}


def _guard(test: ast.expr) -> Optional[str]:
    """``"Name"`` for ``hasattr(Qgis, "Name")``, else None."""
    if isinstance(test, ast.Call) and isinstance(test.func, ast.Name) and test.func.id == "hasattr" \
            and len(test.args) == 2 and isinstance(test.args[0], ast.Name) and test.args[0].id == "Qgis" \
            and isinstance(test.args[1], ast.Constant) and isinstance(test.args[1].value, str):
        return test.args[1].value
    return None


def qgis_paths(path: Path) -> list[tuple[str, Optional[str], int]]:
    """``(dotted path, guard, line)`` of every QGIS name the file writes as a path from an imported QGIS class.

    ``guard``: the ``Qgis`` attribute an enclosing ``if hasattr(Qgis, ...)`` requires (its ``else`` is skipped).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = {alias.asname or alias.name for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module in QGIS_MODULES for alias in node.names}
    found: list[tuple[str, Optional[str], int]] = []

    def visit(node: ast.AST, guard: Optional[str]) -> None:
        if isinstance(node, ast.If) and _guard(node.test):
            for statement in node.body:
                visit(statement, _guard(node.test))
            return  # the else branch: the names of QGIS versions without the guarded one
        if isinstance(node, ast.Attribute):
            chain, current = [], node
            while isinstance(current, ast.Attribute):
                chain.append(current.attr)
                current = current.value
            if isinstance(current, ast.Name) and current.id in imported:
                found.append((".".join([current.id, *reversed(chain)]), guard, node.lineno))
                return  # the longest path only
        for child in ast.iter_child_nodes(node):
            visit(child, guard)

    visit(tree, None)
    return found


def _is_enum_value(value: Any) -> bool:
    return isinstance(value, enum.Enum) or type(type(value)).__name__ == "enumtype"  # Python's or sip's enums


def problems(dotted: str) -> list[str]:
    """What is wrong with reaching ``dotted`` in the running QGIS (empty: nothing)."""
    import qgis.analysis
    import qgis.core
    import qgis.gui

    root, *steps = dotted.split(".")
    modules = (qgis.core, qgis.gui, qgis.analysis)
    target = next((getattr(module, root) for module in modules if hasattr(module, root)), None)
    if target is None:
        return [f"{root} is not in this QGIS"]
    reached = root
    for step in steps:
        if not hasattr(target, step):
            return [f"{reached}.{step} does not exist in this QGIS"]
        owner, target, reached = target, getattr(target, step), f"{reached}.{step}"
        if isinstance(target, type) and target.__qualname__ != reached:
            return [f"{reached} is an alias of {target.__qualname__}: write that (or take it from qgis_compat)"]
        if _is_enum_value(target):
            name = getattr(target, "name", step)
            if owner is not type(target) or name != step:
                return [f"{reached} is {type(target).__qualname__}.{name}: write that (or take it from qgis_compat)"]
    return []


def plugin_files() -> list[Path]:
    return sorted(PLUGIN.rglob("*.py"))


def test_the_scan_finds_the_plugins_qgis_names_and_skips_the_old_branches():
    compat = {dotted: guard for dotted, guard, _ in qgis_paths(PLUGIN / "qgis_compat.py")}
    assert compat["Qgis.ProcessingSourceType.VectorPolygon"] == "ProcessingSourceType"
    assert "QgsProcessing.SourceType.TypeVectorPolygon" not in compat  # the 3.22 branch
    everywhere = {dotted for path in plugin_files() for dotted, _, _ in qgis_paths(path)}
    assert {"Qgis.MessageLevel.Warning", "QgsTask.Flag.CanCancel", "QgsApplication.taskManager"} <= everywhere


def test_the_rules_catch_what_qt6_or_qgis_4_refuse():
    assert problems("Qgis.Warning")  # an enum value outside its enum: Qt 6 bindings have no such name
    assert problems("QgsTask.CanCancel")
    assert problems("Qgis.NoSuchThing")
    assert not problems("Qgis.MessageLevel.Warning")
    assert not problems("QgsTask.Flag.CanCancel")


def test_every_qgis_name_the_plugin_writes_is_its_current_form(qgis_app):
    from qgis.core import Qgis

    wrong = [f"{path.relative_to(ROOT)}:{line}: {problem}"
             for path in plugin_files() for dotted, guard, line in qgis_paths(path)
             if guard is None or hasattr(Qgis, guard) for problem in problems(dotted)]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("method", sorted(QT5_ONLY_METHODS))
def test_no_qt5_only_method_is_called(method):
    calls = [f"{path.relative_to(ROOT)}:{node.lineno}" for path in plugin_files()
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Attribute) and node.attr == method]
    assert not calls, f"{method}() is gone in PyQt6: call {QT5_ONLY_METHODS[method]} ({calls})"
