"""Model presets: metadata, resolution, upsampler choice, and other patch sizes through predict and the service."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from segearth_backend import load_segmenter
from segearth_backend.config import EngineConfig
from segearth_backend.errors import ModelConfigError, UpsamplerMismatchError, WeightsNotFoundError
from segearth_backend.model.image_tower import image_features
from segearth_backend.model.presets import MODEL_PRESETS, SIMFEATUP, find_preset, get_preset
from segearth_backend.model.resolve import choose_upsampler, model_shape, resolve_attention, resolve_model
from segearth_backend.model.weights_check import missing_weights
from segearth_backend.pipeline.segmenter import normalise
from segearth_backend.serve.protocol import read_bundle, write_bundle
from tests.backend.helpers import SHAPES, TEST_TOKEN, call, launch_server, write_tiny_clip

CLASSES = ["background", "building,roof", "road", "tree,forest", "water"]


def test_names_are_unique_and_the_default_comes_first():
    names = [preset.name for preset in MODEL_PRESETS]
    assert len(names) == len(set(names)) == 15
    assert names[0] == "clip-vit-b16" == EngineConfig().model
    assert find_preset("CLIP-ViT-L14") is get_preset("clip-vit-l14") and find_preset("ViT-B-16") is None
    with pytest.raises(ModelConfigError, match="Known presets: clip-vit-b16"):
        get_preset("clip-vit-h14")


@pytest.mark.parametrize("preset", MODEL_PRESETS, ids=lambda p: p.name)
def test_every_preset_resolves_to_an_open_clip_model(preset, tmp_path):
    resolved = resolve_model(EngineConfig(model=preset.name, cache_dir=tmp_path))
    assert resolved.model == preset.architecture and resolved.preset is preset
    assert preset.architecture in open_clip.list_models()
    config = open_clip.get_model_config(preset.architecture)
    assert (config["embed_dim"], config["vision_cfg"]["patch_size"]) == (preset.feature_dim, preset.patch_size)
    assert 224 % preset.patch_size == 0  # the sliding window's crop holds whole patches
    if preset.pretrained_tag is not None:
        assert preset.pretrained_tag in open_clip.list_pretrained_tags_by_model(preset.architecture)
        assert resolved.clip_weights == preset.pretrained_tag
    else:
        assert resolved.clip_weights == str(tmp_path / "clip" / str(preset.weights_file))
        assert str(preset.weights_url).startswith("https://")
    # auto picks the recorded upsampler; OpenAI CLIP ViT-B/16 and the SAR model get the authors' SimFeatUp.
    choice = choose_upsampler("auto", preset.feature_dim, preset.patch_size, preset)
    assert (choice.spec == SIMFEATUP) == (preset.name in ("clip-vit-b16", "alignearth-sar-vit-b16"))
    assert choice.reason == preset.upsampler_reason
    assert model_shape(preset.name) == model_shape(preset.architecture) == (preset.feature_dim, preset.patch_size)


def test_sar_preset_is_the_authors_alignearth_setting(tmp_path):
    preset = get_preset("alignearth-sar-vit-b16")
    # open_clip's plain ViT-B-16: GELU in both towers (the authors build AlignEarth without QuickGELU).
    assert preset.architecture == "ViT-B-16" and not open_clip.get_model_config("ViT-B-16").get("quick_gelu")
    assert (preset.attention, preset.last_blocks, preset.upsampler, preset.imagery) == ("SCLIP", 2, SIMFEATUP, "sar")
    assert preset.weights_file == "AlignEarth-SAR-ViT-B-16.pt"
    assert "likyoo/AlignEarth-SAR-ViT-B-16" in str(preset.weights_url)
    assert preset.download_size and "estimate" in preset.download_size
    config = EngineConfig(model=preset.name, cache_dir=tmp_path)
    assert resolve_attention(config, resolve_model(config).preset) == ("SCLIP", 2)
    # Explicit settings win; other models default to SegEarth-OV's setting.
    assert resolve_attention(EngineConfig(model=preset.name, attention="segearth", last_blocks=1), preset) == (
        "SegEarth", 1)
    assert resolve_attention(EngineConfig(), get_preset("clip-vit-b16")) == ("SegEarth", 1)
    assert resolve_attention(EngineConfig(model="ViT-B-16"), None) == ("SegEarth", 1)


@pytest.mark.parametrize("name", ["openclip-vit-b16", "metaclip-vit-b16"])
def test_other_b16_backbones_offer_the_papers_simfeatup_setting(name):
    """Ours is bilinear for them; the authors' code (feature_up=True) runs SimFeatUp on every 512-d B/16 tower."""
    preset = get_preset(name)
    default = choose_upsampler("auto", preset.feature_dim, preset.patch_size, preset)
    assert default.bilinear and "--upsampler-weights simfeatup" in default.reason
    assert "the paper's setting" in default.reason
    papers = choose_upsampler("simfeatup", preset.feature_dim, preset.patch_size, preset)
    assert papers.spec == SIMFEATUP and "the paper's setting" in papers.reason
    # Where the checkpoint cannot fit, no preset claims bilinear is anything but a necessity.
    for other in MODEL_PRESETS:
        if (other.feature_dim, other.patch_size) != (512, 16):
            assert "cannot run SimFeatUp" in other.upsampler_reason
            with pytest.raises(UpsamplerMismatchError):
                choose_upsampler("simfeatup", other.feature_dim, other.patch_size, other)


def test_new_backbones_of_the_authors_segmentor():
    h14, alip = get_preset("georsclip-vit-h14"), get_preset("alip-vit-b32")
    assert (h14.architecture, h14.weights_file, h14.feature_dim, h14.patch_size) == (
        "ViT-H-14", "RS5M_ViT-H-14.pt", 1024, 14)
    assert h14.download_size == "3.94 GB"
    assert (alip.architecture, alip.weights_file, alip.feature_dim, alip.patch_size) == (
        "ViT-B-32", "ALIP_YFCC15M_B32.pt", 512, 32)
    for preset in (h14, alip):
        assert preset.upsampler != SIMFEATUP and (preset.attention, preset.last_blocks) == ("SegEarth", 1)


@pytest.mark.parametrize("text, expected", [("sclip", "SCLIP"), ("MaskClip", "MaskCLIP"), ("AUTO", "auto"),
                                            ("vanilla", "vanilla")])
def test_attention_setting_is_case_insensitive(text, expected):
    assert EngineConfig(attention=text).attention == expected
    assert EngineConfig.from_env({"SEGEARTH_ATTENTION": text, "SEGEARTH_LAST_BLOCKS": "2"}).last_blocks == 2


@pytest.mark.parametrize("values", [{"attention": "NACLIP"}, {"last_blocks": 0}, {"last_blocks": True}])
def test_bad_attention_settings_are_clear_errors(values):
    from segearth_backend.errors import ConfigError

    with pytest.raises(ConfigError, match="attention|last_blocks"):
        EngineConfig(**values)
    with pytest.raises(ConfigError, match="SEGEARTH_LAST_BLOCKS must be a whole number"):
        EngineConfig.from_env({"SEGEARTH_LAST_BLOCKS": "two"})


def test_more_last_blocks_than_the_tower_has_fails_at_load(tiny_paths, tmp_path):
    with pytest.raises(ModelConfigError, match="last_blocks must be 1 to 3"):
        load_segmenter(device="cpu", cache_dir=tmp_path, last_blocks=4, **tiny_paths)


def test_explicit_weights_override_the_preset_and_plain_names_still_work(tmp_path):
    resolved = resolve_model(EngineConfig(model="remoteclip-vit-b32", clip_weights="/data/r.pt", cache_dir=tmp_path))
    assert (resolved.model, resolved.clip_weights) == ("ViT-B-32", "/data/r.pt")
    plain = resolve_model(EngineConfig(model="ViT-B-16-quickgelu", cache_dir=tmp_path))
    assert (plain.clip_weights, plain.preset) == ("openai", get_preset("clip-vit-b16"))
    other = resolve_model(EngineConfig(model="ViT-B-16", clip_weights="laion2b_s34b_b88k", cache_dir=tmp_path))
    assert other.preset is get_preset("openclip-vit-b16")


def test_upsampler_that_cannot_fit_is_a_clear_error():
    with pytest.raises(UpsamplerMismatchError, match="fits 512-d ViT-B/16 features; this model has 768-d"):
        choose_upsampler("simfeatup", 768, 14)
    with pytest.raises(UpsamplerMismatchError, match="512-d features on 32-pixel patches"):
        choose_upsampler("simfeatup", 512, 32, get_preset("remoteclip-vit-b32"))
    with pytest.raises(UpsamplerMismatchError, match="upsamples 16-pixel patches x16"):
        choose_upsampler("/ckpt/jbu.ckpt", 512, 32)
    assert choose_upsampler("none", 512, 16).bilinear
    forced = choose_upsampler("simfeatup", 512, 16, get_preset("metaclip-vit-b16"))
    assert forced.spec == SIMFEATUP and "not this model's" in forced.reason
    assert choose_upsampler("auto", 512, 16).spec == SIMFEATUP  # an unnamed ViT-B/16 (e.g. OpenAI weights file)
    assert "bilinear" in choose_upsampler("auto", 64, 16).reason


def test_missing_preset_file_says_where_to_get_it(tmp_path):
    with pytest.raises(WeightsNotFoundError) as caught:
        load_segmenter(model="skyclip-vit-l14", device="cpu", cache_dir=tmp_path)
    message = str(caught.value)
    assert "SkyCLIP_ViT_L14_top30pct_filtered_by_CLIP_laion_RS.zip" in message
    assert str(tmp_path / "clip" / "SkyCLIP_ViT_L14_top30pct_filtered_by_CLIP_laion_RS" / "epoch_20.pt") in message
    with pytest.raises(UpsamplerMismatchError):
        missing_weights(EngineConfig(model="clip-vit-l14", upsampler_weights="simfeatup", cache_dir=tmp_path))
    missing = missing_weights(EngineConfig(model="georsclip-vit-b32", cache_dir=tmp_path))
    assert [m.where for m in missing] == [str(tmp_path / "clip" / "RS5M_ViT-B-32.pt")]  # bilinear: no SimFeatUp
    sar = missing_weights(EngineConfig(model="alignearth-sar-vit-b16", cache_dir=tmp_path))
    assert [m.url for m in sar][0] == "https://huggingface.co/likyoo/AlignEarth-SAR-ViT-B-16"
    assert "about 600 MB" in sar[0].what and sar[0].where == str(tmp_path / "clip" / "AlignEarth-SAR-ViT-B-16.pt")
    assert len(sar) == 2 and sar[1].what == "SimFeatUp checkpoint"  # the SAR model uses SimFeatUp too


@pytest.fixture(scope="module", params=sorted(SHAPES))
def tiny_zoo(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"zoo-{request.param}")
    paths = write_tiny_clip(folder, request.param, seed=3)
    segmenter = load_segmenter(device="cpu", cache_dir=folder / "cache", **paths)
    return request.param, paths, segmenter


def _sliding_reference(segmenter, image: np.ndarray, lam: float) -> torch.Tensor:
    """The authors' forward_slide with bilinear features, written out plainly (Q x H x W)."""
    patch = segmenter.patch
    queries = segmenter.text.embed(tuple(q for line in CLASSES for q in line.split(","))).float()
    x = normalise(image, None, torch.device("cpu"))
    height, width = image.shape[:2]
    total = torch.zeros(queries.shape[0], height, width)
    count = torch.zeros(1, height, width)
    rows = max(height - 224 + 112 - 1, 0) // 112 + 1
    cols = max(width - 224 + 112 - 1, 0) // 112 + 1
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * 112 + 224, height), min(c * 112 + 224, width)
            y1, x1 = max(y2 - 224, 0), max(x2 - 224, 0)
            crop = x[:, :, y1:y2, x1:x2]
            h, w = crop.shape[-2:]
            lr, tb = (-w) % patch, (-h) % patch
            left, top = lr // 2, tb // 2
            padded = F.pad(crop, (left, lr - left, top, tb - top))
            with torch.no_grad():
                cls, feats = image_features(segmenter.visual, padded)
            low = torch.einsum("bdhw,qd->bqhw", F.normalize(feats, dim=1), queries)
            low = low + lam * (F.normalize(cls, dim=-1) @ queries.T)[:, :, None, None]
            up = F.interpolate(low, size=padded.shape[-2:], mode="bilinear", align_corners=False)[0]
            total[:, y1:y2, x1:x2] += up[:, top:top + h, left:left + w]
            count[:, y1:y2, x1:x2] += 1
    return total / count



@pytest.mark.parametrize("size", [(224, 224), (100, 61), (300, 250), (13, 240)])
def test_other_patch_sizes_through_predict(tiny_zoo, rng, size):
    shape, _, segmenter = tiny_zoo
    assert segmenter.patch == SHAPES[shape]["patch_size"] and segmenter.upsampler is None
    info = segmenter.describe()
    assert info["upsampler"] == "bilinear" and "fits 512-d ViT-B/16 features only" in info["upsampler_reason"]
    assert (info["feature_dim"], info["patch_size"]) == (SHAPES[shape]["embed_dim"], SHAPES[shape]["patch_size"])
    image = rng.integers(0, 256, size=size + (3,), dtype=np.uint8)
    logits = segmenter.logits(image, CLASSES)
    reference = _sliding_reference(segmenter, image, -0.3)
    np.testing.assert_allclose(logits, reference.numpy(), atol=1e-5)
    pred = segmenter.predict(image, CLASSES, prob_threshold=0.2)
    assert pred.labels.shape == size and pred.probabilities.shape == (len(CLASSES),) + size


def test_other_patch_sizes_refuse_simfeatup(tiny_zoo, parity_dir, tmp_path):
    _, paths, _ = tiny_zoo
    with pytest.raises(UpsamplerMismatchError, match="x16"):
        load_segmenter(device="cpu", cache_dir=tmp_path, upsampler_weights=str(parity_dir / "tiny-simfeatup.ckpt"),
                       **paths)


def test_other_patch_sizes_through_the_service(tiny_zoo, tmp_path, rng):
    shape, paths, segmenter = tiny_zoo
    process, url, _ = launch_server(["--model", paths["model"], "--clip-weights", paths["clip_weights"],
                                     "--device", "cpu", "--cache-dir", str(tmp_path / "cache")],
                                    tmp_path, env_extra={"SEGEARTH_BACKEND_TOKEN": TEST_TOKEN})
    try:
        health = json.loads(call(url, "/health", token=TEST_TOKEN)[1])
        assert health["upsampler"] == "bilinear" and health["patch_size"] == SHAPES[shape]["patch_size"]
        assert health["model_preset"] is None and "bilinear" in health["upsampler_reason"]
        assert call(url, "/models")[0] == 401  # it names local paths: token only
        models = json.loads(call(url, "/models", token=TEST_TOKEN)[1])
        assert [row["name"] for row in models["presets"]] == [p.name for p in MODEL_PRESETS]
        assert not any(row["installed"] for row in models["presets"])
        image = rng.integers(0, 256, size=(150, 260, 3), dtype=np.uint8)
        body = write_bundle({"params.json": {"classes": CLASSES, "prob_threshold": 0.2, "return_probabilities": True},
                             "image.npy": image})
        status, answer, _ = call(url, "/segment", body, TEST_TOKEN, timeout=120)
        assert status == 200
        result = read_bundle(answer, {"meta.json", "labels.npy", "probabilities.npy"})
        expected = segmenter.predict(image, CLASSES, prob_threshold=0.2)
        np.testing.assert_array_equal(result["labels.npy"], expected.labels)
    finally:
        process.terminate()
        process.wait(20)


def test_models_command_lists_presets_and_where_files_go(tmp_path):
    import subprocess
    import sys

    file_path = tmp_path / "clip" / "RemoteCLIP-ViT-B-32.pt"
    file_path.parent.mkdir(parents=True)
    file_path.write_bytes(b"stand-in")  # presence is all `models` checks
    result = subprocess.run([sys.executable, "-m", "segearth_backend", "models", "--cache-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert lines["remoteclip-vit-b32"].endswith("installed") and lines["remoteclip-vit-l14"].endswith("missing")
    assert "clip-vit-b16" in result.stdout and str(tmp_path / "clip" / "RS5M_ViT-L-14.pt") in result.stdout
    rows = json.loads(subprocess.run([sys.executable, "-m", "segearth_backend", "models", "--json", "--cache-dir",
                                      str(tmp_path)], capture_output=True, text=True, timeout=120).stdout)
    assert {row["name"]: row["ready"] for row in rows}["remoteclip-vit-b32"] is True
    assert Path(rows[0]["simfeatup"]["where"]).name == "xclip_jbu_one_million_aid.ckpt"
    sar = {row["name"]: row for row in rows}["alignearth-sar-vit-b16"]
    assert (sar["imagery"], sar["attention"], sar["last_blocks"]) == ("sar", "SCLIP", 2)
    assert sar["url"] == "https://huggingface.co/likyoo/AlignEarth-SAR-ViT-B-16" and "600 MB" in sar["download_size"]
    assert Path(sar["simfeatup"]["where"]).name == "xclip_jbu_one_million_aid.ckpt"
    # The offline list says where the SAR weights come from, their size and where they go.
    assert "alignearth-sar-vit-b16: https://huggingface.co/likyoo/AlignEarth-SAR-ViT-B-16" in result.stdout
    assert "size: about 600 MB" in result.stdout and "size: 3.94 GB" in result.stdout
    assert str(tmp_path / "clip" / "AlignEarth-SAR-ViT-B-16.pt") in result.stdout
