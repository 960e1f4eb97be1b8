"""Text work is bounded: limits on class lists, chunked encoding, bounded embedding caches."""

from __future__ import annotations

import pytest
import torch

from segearth_backend.errors import ClassListError
from segearth_backend.model.clip_loader import load_clip
from segearth_backend.model.text_embedder import TextEmbedder
from segearth_backend.pipeline.classes import (
    MAX_LINE_CHARS,
    MAX_QUERIES,
    MAX_SYNONYM_CHARS,
    MAX_SYNONYMS_PER_CLASS,
    parse_classes,
)


@pytest.fixture(scope="module")
def tiny_clip(tiny_paths):
    return load_clip(tiny_paths["model"], tiny_paths["clip_weights"])


@pytest.mark.parametrize("classes, fragment", [
    (["road", "x" * (MAX_SYNONYM_CHARS + 1)], f"at most {MAX_SYNONYM_CHARS} are allowed"),
    (["road", ",".join(f"s{i}" for i in range(MAX_SYNONYMS_PER_CLASS + 1))],
     f"at most {MAX_SYNONYMS_PER_CLASS} are allowed"),
    (["road", "y" * (MAX_LINE_CHARS + 1)], f"at most {MAX_LINE_CHARS} are allowed"),
    ([",".join(f"c{k}s{j}" for j in range(5)) for k in range(254)], f"at most {MAX_QUERIES} are allowed"),
    ("z" * 2_000_000, "Shorten it"),
])
def test_limits_are_refused_with_the_limit_and_what_to_do(classes, fragment):
    with pytest.raises(ClassListError, match=fragment) as caught:
        parse_classes(classes)
    assert len(str(caught.value)) < 400  # the offending text is never echoed in full


def test_quoted_names_are_cut():
    with pytest.raises(ClassListError) as caught:
        parse_classes(["road", "w" * 150, "W" * 150])
    message = str(caught.value)
    assert "W" * 39 + "\u2026" in message and "W" * 41 not in message


def test_the_largest_allowed_list_is_accepted():
    class_set = parse_classes([",".join(f"class {k} synonym {j}" for j in range(4)) for k in range(254)])
    assert class_set.num_queries == 1016
    parse_classes(["x" * MAX_SYNONYM_CHARS, ",".join(f"s{i}" for i in range(MAX_SYNONYMS_PER_CLASS))])


@torch.inference_mode()
def test_an_embedding_does_not_depend_on_the_other_queries(tiny_clip, tmp_path):
    """Bit for bit: a class embedded alone, in a long list, or in another order gets the same vector."""
    queries = [f"thing number {i}" for i in range(37)]  # more than two chunks of 16
    together = TextEmbedder(tiny_clip.model, tiny_clip.tokenizer, torch.device("cpu")).embed(queries)
    alone = TextEmbedder(tiny_clip.model, tiny_clip.tokenizer, torch.device("cpu"))
    single = torch.cat([alone.embed([q]) for q in queries])
    assert torch.equal(together, single)
    shuffled = TextEmbedder(tiny_clip.model, tiny_clip.tokenizer, torch.device("cpu")).embed(["x y z", *queries[::-1]])
    assert torch.equal(shuffled[1:].flip(0), together)


def test_memory_cache_keeps_the_most_recent(tiny_clip):
    embedder = TextEmbedder(tiny_clip.model, tiny_clip.tokenizer, torch.device("cpu"), memory_entries=3)
    embedder.embed(["a", "b", "c"])
    embedder.embed(["a"])  # a is now the most recent
    embedder.embed(["d"])
    assert list(embedder._memory) == ["c", "a", "d"]
    computed = embedder.computed
    embedder.embed(["a", "c", "d"])
    assert embedder.computed == computed
    embedder.embed(["b"])  # evicted, no disk cache: computed again
    assert embedder.computed == computed + 1


def test_disk_cache_is_trimmed_oldest_first(tiny_clip, tmp_path):
    probe = TextEmbedder(tiny_clip.model, tiny_clip.tokenizer, torch.device("cpu"), tmp_path / "probe")
    probe.embed(["probe"])
    (probe_file,) = (tmp_path / "probe").rglob("*.npy")
    size = probe_file.stat().st_size
    limit = 5 * size
    embedder = TextEmbedder(tiny_clip.model, tiny_clip.tokenizer, torch.device("cpu"), tmp_path / "c",
                            disk_bytes=limit)
    for index in range(12):
        embedder.embed([f"word {index}"])
    files = list((tmp_path / "c").rglob("*.npy"))
    assert sum(f.stat().st_size for f in files) <= limit and len(files) >= 3
    fresh = TextEmbedder(tiny_clip.model, tiny_clip.tokenizer, torch.device("cpu"), tmp_path / "c",
                         disk_bytes=limit)
    fresh.embed(["word 11"])  # the newest survived
    assert fresh.computed == 0
    fresh.embed(["word 0"])  # the oldest went
    assert fresh.computed == 1
