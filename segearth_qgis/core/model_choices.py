"""The models the panel offers: the backend's presets (``model/presets.py``), by name, family and image tower.

The plugin never imports the backend (it runs in another Python), so the list is kept here and
``tests/plugin/core/test_model_choices.py`` checks it equals the backend's registry: a preset added there
fails that test until it is added here, and the panel then offers it with no change of its own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelChoice:
    """One preset as the panel shows it: ``name`` is what the backend's ``--model`` takes."""

    name: str
    family: str
    vit: str

    @property
    def label(self) -> str:
        return f"{self.family} {self.vit}"


#: The backend's presets in its order; the first is its default model.
MODEL_CHOICES: tuple[ModelChoice, ...] = (
    ModelChoice("clip-vit-b16", "CLIP (OpenAI)", "ViT-B/16"),
    ModelChoice("clip-vit-l14", "CLIP (OpenAI)", "ViT-L/14"),
    ModelChoice("openclip-vit-b16", "OpenCLIP (LAION-2B)", "ViT-B/16"),
    ModelChoice("openclip-vit-l14", "OpenCLIP (LAION-2B)", "ViT-L/14"),
    ModelChoice("metaclip-vit-b16", "MetaCLIP (fullcc)", "ViT-B/16"),
    ModelChoice("metaclip-vit-l14", "MetaCLIP (fullcc)", "ViT-L/14"),
    ModelChoice("remoteclip-vit-b32", "RemoteCLIP", "ViT-B/32"),
    ModelChoice("remoteclip-vit-l14", "RemoteCLIP", "ViT-L/14"),
    ModelChoice("georsclip-vit-b32", "GeoRSCLIP (RS5M)", "ViT-B/32"),
    ModelChoice("georsclip-vit-l14", "GeoRSCLIP (RS5M)", "ViT-L/14"),
    ModelChoice("skyclip-vit-b32", "SkyCLIP (SkyScript)", "ViT-B/32"),
    ModelChoice("skyclip-vit-l14", "SkyCLIP (SkyScript)", "ViT-L/14"),
    ModelChoice("georsclip-vit-h14", "GeoRSCLIP (RS5M)", "ViT-H/14"),
    ModelChoice("alip-vit-b32", "ALIP (YFCC15M)", "ViT-B/32"),
    ModelChoice("alignearth-sar-vit-b16", "AlignEarth (SAR)", "ViT-B/16"),
)
