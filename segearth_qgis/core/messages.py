"""Message-bar texts: what shows in the bar, and the whole text behind its "Show more" button (pure Python)."""

from __future__ import annotations

from typing import Optional

#: Characters QGIS's message bar shows whole (it cuts a text after about two lines at a common window width).
BAR_TEXT_CHARS = 180


def bar_parts(text: str, limit: int = BAR_TEXT_CHARS) -> tuple[str, Optional[str]]:
    """(what the bar shows, the whole text for "Show more" or None when the bar shows it all).

    A text of several lines shows its first line; a line longer than ``limit`` its first sentence, else its first
    words up to ``limit`` with "…". The whole text is always the second part then.
    """
    text = text.strip()
    lines = text.splitlines()
    if len(lines) <= 1 and len(text) <= limit:
        return text, None
    short = lines[0].rstrip().rstrip(":") if lines else ""
    if len(short) > limit:
        end = short.find(". ")
        if 0 < end < limit:
            short = short[:end + 1]
        else:
            words = short[:limit].rsplit(" ", 1)[0].rstrip(",;:")
            short = words + "…"
    return short, text
