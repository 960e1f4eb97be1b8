"""Errors the plugin's pure modules raise on purpose; each message says what to change."""

from __future__ import annotations


class AccuracyError(ValueError):
    """An accuracy assessment cannot run as asked (unmatched classes, bad mapping, no overlap)."""
