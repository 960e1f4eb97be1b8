"""The panel's model list is the backend's preset registry (one source: a new preset shows in the panel)."""

from __future__ import annotations

from segearth_backend.model.presets import DEFAULT_PRESET, MODEL_PRESETS
from segearth_qgis.core.model_choices import MODEL_CHOICES


def test_the_panel_offers_exactly_the_backends_presets_in_its_order():
    registry = [(preset.name, preset.family, preset.vit) for preset in MODEL_PRESETS]
    offered = [(choice.name, choice.family, choice.vit) for choice in MODEL_CHOICES]
    assert offered == registry, ("segearth_qgis/core/model_choices.py must list the presets of "
                                 "backend/segearth_backend/model/presets.py: add the new ones there")
    assert MODEL_CHOICES[0].name == DEFAULT_PRESET
