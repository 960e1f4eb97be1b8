"""Named CLIP models: the backbones of the authors' ``segearth_segmentor.py`` (pure data).

Each preset names the open_clip architecture, where its weights come from (an
open_clip pretrained tag, or a checkpoint file with its public source), the
shape of its image features, and the feature upsampler the engine uses with
it. The authors' SimFeatUp checkpoint (``xclip_jbu_one_million_aid.ckpt``)
was trained on OpenAI CLIP ViT-B/16 features (512-d, 16-pixel patches); every
other backbone runs with bilinear upsampling, as in the paper's backbone
comparison. :mod:`.resolve` turns a preset into what the loader needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import ModelConfigError

#: The training-free attentions of the authors' ``custom_attn`` (SegEarth-OV-2's ``model_type``).
VANILLA, MASKCLIP, CLEARCLIP, SCLIP, SEGEARTH = "vanilla", "MaskCLIP", "ClearCLIP", "SCLIP", "SegEarth"
ATTENTION_MODES = (VANILLA, MASKCLIP, CLEARCLIP, SCLIP, SEGEARTH)
#: SegEarth-OV's setting (every optical config): the SegEarth attention in the last block only.
DEFAULT_ATTENTION = SEGEARTH
DEFAULT_LAST_BLOCKS = 1

SIMFEATUP = "simfeatup"
BILINEAR = "bilinear"
#: Feature size and patch size the authors' SimFeatUp checkpoint was trained for.
SIMFEATUP_FEATURE_DIM = 512
SIMFEATUP_PATCH = 16

_NOT_CLIP_B16 = ("the authors' SimFeatUp checkpoint fits 512-d features on 16-pixel patches only; this model has "
                 "{what}, so features are upsampled bilinearly (the authors' code cannot run SimFeatUp on it either)")
#: For the other 512-d patch-16 towers: ours is bilinear, the paper's (feature_up=True) is SimFeatUp.
_B16_OTHER_REASON = ("bilinear by default: the authors' SimFeatUp checkpoint was trained on OpenAI CLIP ViT-B/16 "
                     "features, not this model's; the authors' code applies it anyway (the paper's setting: "
                     "--upsampler-weights simfeatup)")


@dataclass(frozen=True)
class ModelPreset:
    """One named CLIP backbone.

    Attributes:
        name: the preset's name (``clip-vit-b16``), given as the engine's model.
        family: who trained it (``CLIP (OpenAI)``, ``RemoteCLIP``...).
        architecture: the open_clip model name the weights fit.
        pretrained_tag: open_clip pretrained tag (downloaded by open_clip), or None.
        weights_file: for file weights, the path under ``<cache>/clip/`` where the
            engine looks for them; None for tags.
        weights_url: where to download the file (or the archive holding it).
        weights_sha256: SHA-256 of the file when published; None when unknown.
        download_note: what to do with the download (e.g. unpack an archive).
        feature_dim: channels of the image features (``embed_dim``).
        patch_size: pixels per patch side.
        upsampler: ``"simfeatup"`` or ``"bilinear"`` (what ``upsampler_weights=auto`` picks).
        upsampler_reason: why, for logs, ``describe()`` and ``/health``.
        source: where the choice of model and weights comes from.
        attention: the training-free attention of the last block(s) (:data:`ATTENTION_MODES`).
        last_blocks: how many last blocks use it, their outputs summed.
        download_size: the download's size as published, or an estimate marked as such; None: unknown.
        imagery: what the model was trained for: ``"optical"`` or ``"sar"``.
    """

    name: str
    family: str
    architecture: str
    pretrained_tag: Optional[str]
    weights_file: Optional[str]
    weights_url: Optional[str]
    weights_sha256: Optional[str]
    download_note: Optional[str]
    feature_dim: int
    patch_size: int
    upsampler: str
    upsampler_reason: str
    source: str
    attention: str = DEFAULT_ATTENTION
    last_blocks: int = DEFAULT_LAST_BLOCKS
    download_size: Optional[str] = None
    imagery: str = "optical"

    @property
    def vit(self) -> str:
        """``ViT-B/16``-style label of the image tower."""
        size = self.architecture.split("-")[1]
        return f"ViT-{size}/{self.patch_size}"


def _tag(name: str, family: str, architecture: str, tag: str, dim: int, patch: int, upsampler: str,
         reason: str) -> ModelPreset:
    return ModelPreset(name, family, architecture, tag, None, None, None, None, dim, patch, upsampler, reason,
                       "segearth_segmentor.py (open_clip pretrained tag)")


def _file(name: str, family: str, architecture: str, file: str, url: str, dim: int, patch: int,
          note: Optional[str] = None, size: Optional[str] = None) -> ModelPreset:
    return ModelPreset(name, family, architecture, None, file, url, None, note, dim, patch, BILINEAR,
                       _NOT_CLIP_B16.format(what=f"{dim}-d features on {patch}-pixel patches"),
                       "segearth_segmentor.py (checkpoint file)",
                       download_size=size)


#: SegEarth-OV-2's SAR model (``configs/cfg_*_sar.py``): AlignEarth, a ViT-B/16 image tower distilled from
#: optical CLIP onto SAR, in open_clip's plain ``ViT-B-16`` (GELU in both towers), with the same SimFeatUp
#: checkpoint, the SCLIP attention summed over the last two blocks and lambda -0.3.
ALIGNEARTH_SAR = ModelPreset(
    "alignearth-sar-vit-b16", "AlignEarth (SAR)", "ViT-B-16", None, "AlignEarth-SAR-ViT-B-16.pt",
    "https://huggingface.co/likyoo/AlignEarth-SAR-ViT-B-16", None,
    "the authors' model page (also Baidu Disk, see SegEarth-OV-2's README); save the ViT-B/16 checkpoint as "
    "AlignEarth-SAR-ViT-B-16.pt", 512, 16, SIMFEATUP,
    "SimFeatUp: SegEarth-OV-2 runs its SAR model with the same checkpoint as the optical one",
    "SegEarth-OV-2 configs/cfg_*_sar.py (earth-insights/SegEarth-OV-2)",
    attention=SCLIP, last_blocks=2,
    download_size="about 600 MB (an estimate for a float32 ViT-B/16 CLIP; the size is not published)",
    imagery="sar")


_L14 = "768-d features on 14-pixel patches"
_SKY = "https://opendatasharing.s3.us-west-2.amazonaws.com/SkyScript/ckpt/"

#: Every preset; the first is the default model.
MODEL_PRESETS: tuple[ModelPreset, ...] = (
    _tag("clip-vit-b16", "CLIP (OpenAI)", "ViT-B-16-quickgelu", "openai", 512, 16, SIMFEATUP,
         "SimFeatUp: the authors' checkpoint was trained on this model's features"),
    _tag("clip-vit-l14", "CLIP (OpenAI)", "ViT-L-14-quickgelu", "openai", 768, 14, BILINEAR,
         _NOT_CLIP_B16.format(what=_L14)),
    _tag("openclip-vit-b16", "OpenCLIP (LAION-2B)", "ViT-B-16", "laion2b_s34b_b88k", 512, 16, BILINEAR,
         _B16_OTHER_REASON),
    _tag("openclip-vit-l14", "OpenCLIP (LAION-2B)", "ViT-L-14", "laion2b_s32b_b82k", 768, 14, BILINEAR,
         _NOT_CLIP_B16.format(what=_L14)),
    _tag("metaclip-vit-b16", "MetaCLIP (fullcc)", "ViT-B-16-quickgelu", "metaclip_fullcc", 512, 16, BILINEAR,
         _B16_OTHER_REASON),
    _tag("metaclip-vit-l14", "MetaCLIP (fullcc)", "ViT-L-14-quickgelu", "metaclip_fullcc", 768, 14, BILINEAR,
         _NOT_CLIP_B16.format(what=_L14)),
    _file("remoteclip-vit-b32", "RemoteCLIP", "ViT-B-32", "RemoteCLIP-ViT-B-32.pt",
          "https://huggingface.co/chendelong/RemoteCLIP/resolve/main/RemoteCLIP-ViT-B-32.pt", 512, 32),
    _file("remoteclip-vit-l14", "RemoteCLIP", "ViT-L-14", "RemoteCLIP-ViT-L-14.pt",
          "https://huggingface.co/chendelong/RemoteCLIP/resolve/main/RemoteCLIP-ViT-L-14.pt", 768, 14),
    _file("georsclip-vit-b32", "GeoRSCLIP (RS5M)", "ViT-B-32", "RS5M_ViT-B-32.pt",
          "https://huggingface.co/Zilun/GeoRSCLIP/resolve/main/ckpt/RS5M_ViT-B-32.pt", 512, 32),
    _file("georsclip-vit-l14", "GeoRSCLIP (RS5M)", "ViT-L-14", "RS5M_ViT-L-14.pt",
          "https://huggingface.co/Zilun/GeoRSCLIP/resolve/main/ckpt/RS5M_ViT-L-14.pt", 768, 14),
    _file("skyclip-vit-b32", "SkyCLIP (SkyScript)", "ViT-B-32", "SkyCLIP_ViT_B32_top50pct/epoch_20.pt",
          _SKY + "SkyCLIP_ViT_B32_top50pct.zip", 512, 32,
          note="unpack the archive; the checkpoint inside is epoch_20.pt"),
    _file("skyclip-vit-l14", "SkyCLIP (SkyScript)", "ViT-L-14",
          "SkyCLIP_ViT_L14_top30pct_filtered_by_CLIP_laion_RS/epoch_20.pt",
          _SKY + "SkyCLIP_ViT_L14_top30pct_filtered_by_CLIP_laion_RS.zip", 768, 14,
          note="unpack the archive; the checkpoint inside is epoch_20.pt"),
    _file("georsclip-vit-h14", "GeoRSCLIP (RS5M)", "ViT-H-14", "RS5M_ViT-H-14.pt",
          "https://huggingface.co/Zilun/GeoRSCLIP/resolve/main/ckpt/RS5M_ViT-H-14.pt", 1024, 14,
          size="3.94 GB"),
    _file("alip-vit-b32", "ALIP (YFCC15M)", "ViT-B-32", "ALIP_YFCC15M_B32.pt",
          "https://drive.google.com/file/d/1AqSHisCKZOZ16Q3sYguK6zIZIuwwEriE", 512, 32,
          note="the link of the ALIP authors' README (deepglint/ALIP; Google Drive or Baidu Disk); save it as "
               "ALIP_YFCC15M_B32.pt"),
    ALIGNEARTH_SAR,
)
DEFAULT_PRESET = MODEL_PRESETS[0].name


def preset_names() -> list[str]:
    return [preset.name for preset in MODEL_PRESETS]


def find_preset(name: str) -> Optional[ModelPreset]:
    """The preset called ``name`` (case-insensitive), or None when it is not a preset name."""
    wanted = name.strip().casefold()
    for preset in MODEL_PRESETS:
        if preset.name == wanted:
            return preset
    return None


def get_preset(name: str) -> ModelPreset:
    """The preset called ``name``.

    Raises:
        ModelConfigError: no such preset, with the known names.
    """
    preset = find_preset(name)
    if preset is None:
        raise ModelConfigError(f"Unknown model preset '{name}'. Known presets: {', '.join(preset_names())} "
                               "(`segearth-backend models` lists them).")
    return preset


def preset_for(architecture: str, tag: str) -> Optional[ModelPreset]:
    """The tag preset matching an open_clip name and pretrained tag, if any (for describing a config)."""
    for preset in MODEL_PRESETS:
        if preset.pretrained_tag == tag and preset.architecture == architecture:
            return preset
    return None
