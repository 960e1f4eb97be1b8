"""Keeping the panel narrow enough for a 1366 x 768 screen."""

from __future__ import annotations

from qgis.PyQt.QtWidgets import QComboBox

#: Characters a long combo box shows before eliding (its full entries open in the list; the dock scrolls).
NARROW_COMBO_CHARACTERS = 16


def narrow_combo(combo: QComboBox) -> None:
    """Size ``combo`` for a few characters instead of its longest entry; its list still shows whole entries."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(NARROW_COMBO_CHARACTERS)
