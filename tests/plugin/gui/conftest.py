"""Panel fixtures: what the message bar showed, and what its "Show more" held."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import pytest


@dataclass
class BarMessages:
    """The messages pushed on QGIS's message bar during one test.

    ``get_messages(level)`` is each message whole, as a user reads it (the bar's line, or the text behind its
    "Show more" button when it has one); ``shown(level)`` is the line the bar itself shows. pytest-qgis's mock
    bar keeps only the line, so a test of a message's end would depend on the length of a temporary path.
    """

    shown_by_level: dict[Any, list[str]] = field(default_factory=dict)
    whole_by_level: dict[Any, list[str]] = field(default_factory=dict)

    def record(self, title: str, text: str, show_more: Optional[str], level: Any) -> None:
        self.shown_by_level.setdefault(level, []).append(f"{title}:{text}")
        self.whole_by_level.setdefault(level, []).append(f"{title}:{show_more or text}")

    def clear_messages(self) -> None:
        self.shown_by_level.clear()
        self.whole_by_level.clear()

    def get_messages(self, level: Any) -> list[str]:
        return list(self.whole_by_level.get(level, []))

    def shown(self, level: Any) -> list[str]:
        return list(self.shown_by_level.get(level, []))


@pytest.fixture
def messages(qgis_iface, monkeypatch):
    """The message bar's messages from this test on (see :class:`BarMessages`)."""
    from qgis.core import Qgis

    bar = qgis_iface.messageBar()
    bar.clear_messages()
    recorded = BarMessages()
    forward = bar.pushMessage

    def push(title: str, text: str, *more: Any, level: Any = Qgis.MessageLevel.Info, duration: int = -1) -> None:
        show_more = more[0] if more and isinstance(more[0], str) else None
        recorded.record(title, text, show_more, level)
        forward(title, text, level=level, duration=duration)

    monkeypatch.setattr(bar, "pushMessage", push)
    return recorded
