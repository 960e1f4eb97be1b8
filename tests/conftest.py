"""Shared fixtures: the parity data shipped with the tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
PARITY = DATA / "parity"

# Never reach for the network from tests: downloads fail fast with the offline message.
os.environ.setdefault("SEGEARTH_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return PARITY
