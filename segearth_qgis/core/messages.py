"""Message-bar texts: what shows in the bar, and the whole text behind its "Show more" button (pure Python)."""

from __future__ import annotations

from typing import Optional

#: Characters QGIS's message bar shows on its one visible line beside the map at 1366 x 768 with the panel open
#: (a longer text wraps into a line the bar only scrolls to).
BAR_TEXT_CHARS = 100


def bar_parts(text: str, limit: int = BAR_TEXT_CHARS) -> tuple[str, Optional[str]]:
    """(what the bar shows, the whole text for "Show more" or None when the bar shows it all).

    A text of several lines shows its first line; a line longer than ``limit`` as many of its first sentences as
    fit in ``limit`` (the problem, and its cause when it fits), else its first words with "…". The whole text is
    always the second part then.
    """
    text = text.strip()
    lines = text.splitlines()
    if len(lines) <= 1 and len(text) <= limit:
        return text, None
    short = lines[0].rstrip().rstrip(":") if lines else ""
    if len(short) > limit:
        ends = [index + 1 for index in range(len(short)) if short.startswith(". ", index) and index < limit]
        if ends:
            short = short[:ends[-1]]
        else:
            short = short[:limit].rsplit(" ", 1)[0].rstrip(",;:") + "…"
    return short, text
