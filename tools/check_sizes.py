"""Small modules and functions (``make lint``): no module over MAX_MODULE_LINES, no function over MAX_FUNCTION_LINES.

Counted in physical lines, docstrings and comments included (what a reader has to read). Exempt: the numeric
kernels (numba functions that must stay one loop nest to compile well) and the module size of
``backend_setup.py``, a standard-library script users run by hand, which must stay one file.
Run from the repository root: ``python tools/check_sizes.py`` (exit code 1 and one line per offender).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (ROOT / "segearth_qgis", ROOT / "backend" / "segearth_backend")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
#: Numeric kernels, clearest (and fastest under numba) in one place: neither their size nor their functions'.
NUMERIC_KERNELS = {"backend/segearth_backend/upsampler/neighbourhood_numba.py",
                   "backend/segearth_backend/upsampler/composite_numba.py"}
#: A script run by hand as one file (its functions still count).
ONE_FILE_SCRIPTS = {"segearth_qgis/client/backend_setup.py"}


def offenders(path: Path) -> list[str]:
    """``path:line: what`` for the module and each function that is too long."""
    text = path.read_text(encoding="utf-8")
    name = path.relative_to(ROOT).as_posix()
    found = []
    lines = len(text.splitlines())
    if name in NUMERIC_KERNELS:
        return found
    if lines > MAX_MODULE_LINES and name not in ONE_FILE_SCRIPTS:
        found.append(f"{name}:1: module of {lines} lines (at most {MAX_MODULE_LINES}): split it by what it holds")
    for node in ast.walk(ast.parse(text, name)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = (node.end_lineno or node.lineno) - first + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{name}:{node.lineno}: function {node.name} of {length} lines (at most "
                             f"{MAX_FUNCTION_LINES}): split it")
    return found


def main() -> int:
    problems = [line for package in PACKAGES for path in sorted(package.rglob("*.py")) for line in offenders(path)]
    print("\n".join(problems) if problems else "sizes: every module and function is within its limit")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
