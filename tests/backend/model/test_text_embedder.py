"""Class-text embeddings: the template-ensemble formula, the exact shortcut, the caches."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segearth_backend.model.clip_loader import load_clip
from segearth_backend.model.text_embedder import TextEmbedder, encode_sentences, imagenet_templates


@pytest.fixture(scope="module")
def tiny_clip(tiny_paths):
    return load_clip(tiny_paths["model"], tiny_paths["clip_weights"])


def test_eighty_openai_templates():
    templates = imagenet_templates()
    assert len(templates) == 80
    assert templates[0]("road") == "a bad photo of a road."


@torch.inference_mode()
def test_embedding_is_the_renormalised_mean_of_template_embeddings(tiny_clip, tmp_path):
    embedder = TextEmbedder(tiny_clip.model, tiny_clip.tokenizer, torch.device("cpu"), tmp_path)
    got = embedder.embed(["building", "tree"])
    for row, query in zip(got, ["building", "tree"]):
        tokens = tiny_clip.tokenizer([t(query) for t in imagenet_templates()])
        features = F.normalize(tiny_clip.model.encode_text(tokens), dim=-1)  # full 77-token context
        expected = F.normalize(features.mean(0), dim=0)
        torch.testing.assert_close(row, expected, rtol=1e-5, atol=1e-6)
    assert got.dtype == torch.float32 and torch.allclose(got.norm(dim=1), torch.ones(2))


@torch.inference_mode()
def test_cutting_after_end_of_text_changes_nothing(tiny_clip):
    tokens = tiny_clip.tokenizer(["a photo of a swimming pool.", "road", "a satellite photo of a quarry."])
    torch.testing.assert_close(encode_sentences(tiny_clip.model, tokens), tiny_clip.model.encode_text(tokens),
                               rtol=1e-5, atol=1e-6)


def test_memory_and_disk_caches(tiny_clip, tmp_path):
    first = TextEmbedder(tiny_clip.model, tiny_clip.tokenizer, torch.device("cpu"), tmp_path)
    a = first.embed(["water", "road"])
    assert first.computed == 2
    first.embed(["road", "water", "road"])
    assert first.computed == 2  # served from memory
    files = list(tmp_path.rglob("*.npy"))
    assert len(files) == 2 and all(np.load(f).dtype == np.float32 for f in files)

    second = TextEmbedder(tiny_clip.model, tiny_clip.tokenizer, torch.device("cpu"), tmp_path)
    b = second.embed(["water", "road"])
    assert second.computed == 0  # served from disk
    torch.testing.assert_close(a, b)


def test_corrupt_cache_file_is_recomputed(tiny_clip, tmp_path):
    first = TextEmbedder(tiny_clip.model, tiny_clip.tokenizer, torch.device("cpu"), tmp_path)
    expected = first.embed(["grass"])
    (cache_file,) = tmp_path.rglob("*.npy")
    cache_file.write_bytes(b"not an npy file")
    second = TextEmbedder(tiny_clip.model, tiny_clip.tokenizer, torch.device("cpu"), tmp_path)
    torch.testing.assert_close(second.embed(["grass"]), expected)
    assert second.computed == 1


def test_cache_folder_depends_on_the_weights(tiny_clip, tmp_path):
    embedder = TextEmbedder(tiny_clip.model, tiny_clip.tokenizer, torch.device("cpu"), tmp_path)
    with torch.no_grad():
        tiny_clip.model.text_projection.add_(0.01)
    try:
        other = TextEmbedder(tiny_clip.model, tiny_clip.tokenizer, torch.device("cpu"), tmp_path)
        assert other.fingerprint != embedder.fingerprint
    finally:
        with torch.no_grad():
            tiny_clip.model.text_projection.sub_(0.01)
