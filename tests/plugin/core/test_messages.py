"""Message-bar texts (core/messages.py): the bar shows the start, "Show more" the whole, nothing is lost."""

from __future__ import annotations

from segearth_qgis.core.messages import BAR_TEXT_CHARS, bar_parts


def test_a_short_line_is_shown_whole_without_more():
    assert bar_parts("  Segmented 1.00 MP in 8 s: road 60%, water 40%  ") == (
        "Segmented 1.00 MP in 8 s: road 60%, water 40%", None)


def test_several_lines_show_the_first_and_keep_everything():
    text = "These weight files are missing:\n  - CLIP\n  - SimFeatUp"
    assert bar_parts(text) == ("These weight files are missing", text)


def test_a_long_line_shows_the_sentences_that_fit_or_its_first_words_and_keeps_the_whole():
    first = "The backend could not start because its Python environment is incomplete."
    second = "Its log names the missing package."
    text = f"{first} {second} " + "Click Set up backend… in the Backend box to make it again; " * 3
    short, whole = bar_parts(text, limit=len(first) + len(second) + 5)
    assert short == f"{first} {second}" and whole == text.strip()
    assert bar_parts(text, limit=len(first) + 5) == (first, text.strip())
    words = "word " * 60
    short, whole = bar_parts(words)
    assert short.endswith("word…") and len(short) <= BAR_TEXT_CHARS + 1 and whole == words.strip()
