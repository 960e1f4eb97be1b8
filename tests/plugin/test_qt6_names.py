"""QGIS 4 runs on Qt 6: every Qt name the plugin uses must resolve in PyQt6 (checked in a throwaway environment).

No QGIS 4 runs here. This test collects, from the plugin's source, every name
imported from ``qgis.PyQt`` and every enum path written on a Qt class
(``Qt.DockWidgetArea.RightDockWidgetArea``), and resolves them in PyQt6 from
PyPI, installed in a virtual environment made by the test (cached between runs).
The Qt 5 fallback branch of ``qt_compat.py`` is exempt: it only runs on Qt 5.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

PLUGIN = ROOT / "segearth_qgis"
#: Where the PyQt6 environment is kept between runs (it takes a minute to make).
PYQT6_ENV = Path(os.environ.get("SEGEARTH_PYQT6_ENV", Path.home() / ".cache" / "segearth-ov-tests" / "pyqt6-env"))


def _fallback_lines(tree: ast.Module) -> set[int]:
    """Line numbers of ``except ImportError:`` branches (Qt 5 fallbacks)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            for handler in node.handlers:
                if isinstance(handler.type, ast.Name) and handler.type.id == "ImportError":
                    for statement in handler.body:
                        lines.update(range(statement.lineno, (statement.end_lineno or statement.lineno) + 1))
    return lines


def qt_names_used() -> dict[str, list[str]]:
    """``{"QtCore": ["Qt.DockWidgetArea.RightDockWidgetArea", "QTimer", ...], ...}`` from the plugin's source."""
    used: dict[str, set[str]] = {}
    for path in sorted(PLUGIN.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _fallback_lines(tree)
        imported: dict[str, str] = {}  # local name -> module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qgis.PyQt.") \
                    and node.lineno not in skip:
                module = node.module.split(".")[-1]
                for alias in node.names:
                    imported[alias.asname or alias.name] = module
                    used.setdefault(module, set()).add(alias.name)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or getattr(node, "lineno", 0) in skip:
                continue
            chain = []
            current: ast.expr = node
            while isinstance(current, ast.Attribute):
                chain.append(current.attr)
                current = current.value
            if isinstance(current, ast.Name) and current.id in imported and chain:
                parts = [current.id, *reversed(chain)]
                # Enum paths and class attributes: Qt.AlignmentFlag.AlignLeft, QVariant.Int (not method calls on
                # instances, which start with a lower-case local name and never reach here).
                if len(parts) >= 2 and parts[1][:1].isupper():
                    used.setdefault(imported[current.id], set()).add(".".join(parts[:3]))
    return {module: sorted(names) for module, names in sorted(used.items())}


RESOLVE = """
import importlib, json, sys
wanted = json.loads(sys.stdin.read())
missing = []
for module, names in wanted.items():
    qt = importlib.import_module("PyQt6." + module)
    for dotted in names:
        target = qt
        for part in dotted.split("."):
            if not hasattr(target, part):
                missing.append(module + "." + dotted)
                break
            target = getattr(target, part)
print(json.dumps(missing))
"""


def pyqt6_python() -> Path:
    python = PYQT6_ENV / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    if python.is_file() and subprocess.run([str(python), "-c", "import PyQt6.QtWidgets"],
                                           capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(PYQT6_ENV)], check=True, capture_output=True)
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "PyQt6"], capture_output=True, text=True,
                             timeout=1200)
    if install.returncode != 0:
        pytest.skip(f"PyQt6 could not be installed from PyPI here: {install.stderr[-300:]}")
    return python


def test_the_scan_finds_what_the_plugin_uses():
    used = qt_names_used()
    assert "Qt.DockWidgetArea.RightDockWidgetArea" in used["QtCore"]
    assert "QAction" in used["QtGui"] and "QAction" not in used.get("QtWidgets", [])  # the Qt 5 branch is exempt
    assert sum(len(names) for names in used.values()) > 40


@pytest.mark.setup
def test_every_qt_name_resolves_in_pyqt6():
    python = pyqt6_python()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run([str(python), "-c", RESOLVE], input=json.dumps(qt_names_used()), capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    missing = json.loads(result.stdout)
    assert not missing, f"Qt 5-only names (use the scoped form or qt_compat): {missing}"
