"""Building CLIP and loading its weights, including every way it can go wrong."""

import json
from pathlib import Path

import pytest
import torch

from segearth_backend.errors import CheckpointError, ModelConfigError, WeightsNotFoundError
from segearth_backend.model.clip_loader import load_clip


def test_json_config_and_state_dict(tiny_paths):
    clip = load_clip(tiny_paths["model"], tiny_paths["clip_weights"])
    assert clip.model_name == "tiny-clip" and not clip.model.training
    state = torch.load(tiny_paths["clip_weights"], weights_only=True)
    assert torch.equal(clip.model.state_dict()["visual.proj"], state["visual.proj"])
    assert clip.tokenizer(["road"]).shape == (1, 77)


def test_training_checkpoint_with_module_prefix(tiny_paths, tmp_path):
    state = torch.load(tiny_paths["clip_weights"], weights_only=True)
    path = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}}, path)
    clip = load_clip(tiny_paths["model"], str(path))
    assert torch.equal(clip.model.state_dict()["visual.proj"], state["visual.proj"])


def test_checkpoint_that_does_not_fit(tiny_paths, tmp_path):
    state = torch.load(tiny_paths["clip_weights"], weights_only=True)
    state["visual.proj"] = torch.zeros(3, 3)
    del state["logit_scale"]
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"1 missing keys \(e\.g\. logit_scale\).*visual\.proj \(3, 3\)"):
        load_clip(tiny_paths["model"], str(path))


def test_truncated_weights(tiny_paths, tmp_path):
    path = tmp_path / "cut.pt"
    path.write_bytes(Path(tiny_paths["clip_weights"]).read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_clip(tiny_paths["model"], str(path))


def test_missing_weights_file(tiny_paths, tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_clip(tiny_paths["model"], str(tmp_path / "clip.pt"))


def test_bad_json_config(tmp_path, tiny_paths):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ModelConfigError, match="not readable JSON"):
        load_clip(str(path), tiny_paths["clip_weights"])
    path.write_text(json.dumps({"embed_dim": 3}))
    with pytest.raises(ModelConfigError, match="not an open_clip model config"):
        load_clip(str(path), tiny_paths["clip_weights"])


def test_config_needs_a_weights_file(tiny_paths):
    with pytest.raises(ModelConfigError, match="needs a weights file"):
        load_clip(tiny_paths["model"], "openai")


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(ModelConfigError, match="Did you mean ViT-B-16"):
        load_clip("ViT-B-61", "openai")


def test_unknown_tag_lists_known_ones():
    with pytest.raises(ModelConfigError, match="Known tags: .*openai"):
        load_clip("ViT-B-16-quickgelu", "laion-nonexistent")


def test_offline_tag_says_which_file_to_download(tmp_path):
    # conftest sets HF_HUB_OFFLINE=1: the download fails at once, as on a machine without network.
    with pytest.raises(WeightsNotFoundError) as caught:
        load_clip("ViT-B-16-quickgelu", "openai", cache_dir=tmp_path)
    message = str(caught.value)
    assert "timm/vit_base_patch16_clip_224.openai/resolve/main/open_clip_pytorch_model.bin" in message
    assert "SEGEARTH_CLIP_WEIGHTS" in message and str(tmp_path) in message
