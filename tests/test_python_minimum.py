"""One Python minimum everywhere: the packages, ruff, mypy, the plugin's manifest; and the code keeps to it."""

from __future__ import annotations

import ast
import configparser
import re

import pytest

from tests.helpers import ROOT

MINIMUM = (3, 9)


def test_every_tool_names_the_same_minimum():
    pyproject = (ROOT / "backend" / "pyproject.toml").read_text()
    assert re.search(r'requires-python\s*=\s*">=3\.9"', pyproject)
    assert 'target-version = "py39"' in (ROOT / "ruff.toml").read_text()
    mypy = configparser.ConfigParser()
    mypy.read(ROOT / "mypy.ini")
    assert mypy["mypy"]["python_version"] == "3.9"


@pytest.mark.parametrize("package", ["segearth_qgis", "backend/segearth_backend", "tools"])
def test_sources_parse_as_the_minimum_python(package):
    """New syntax (match, parenthesised context managers, PEP 604 outside annotations...) is refused."""
    problems = []
    for path in sorted((ROOT / package).rglob("*.py")):
        try:
            ast.parse(path.read_text(encoding="utf-8"), str(path), feature_version=MINIMUM)
        except SyntaxError as error:
            problems.append(f"{path.relative_to(ROOT)}:{error.lineno}: {error.msg}")
    assert not problems, problems
