"""From logits to probabilities and labels, streaming over the class queries.

The decision is ``softmax(50 * logits)`` over all queries, the maximum over
each class's synonyms, the argmax over classes, and the background class
where the top probability is below the threshold. :func:`decide` does it in
one go (``Q x H x W`` in memory); :class:`StreamingDecision` gives the same
result while looking at the queries a chunk at a time (an online softmax and
a running class maximum), so its memory does not grow with the number of
queries. Softmax is monotonic, so the maximum over synonyms can be taken on
the logits: ``max_q p_q = exp(max_q x_q - m) / s``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .classes import ClassSet

LOGIT_SCALE = 50.0
#: A chunk of queries holds at most this many logits (16 MB in float32).
QUERY_CHUNK_ELEMENTS = 1 << 22


def decide(logits: torch.Tensor, class_set: ClassSet, threshold: float,
           background: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``Q x H x W`` -> (probabilities ``K x H x W``, labels ``H x W`` int64), all at once.

    ``softmax(50 * logits)`` over all queries, max over each class's synonyms,
    argmax over classes, and the background index where the top probability
    is below ``threshold``. (The reference for :class:`StreamingDecision`.)
    """
    probs = torch.softmax(logits * LOGIT_SCALE, dim=0)
    if class_set.num_queries != class_set.num_classes:
        members: list[list[int]] = [[] for _ in range(class_set.num_classes)]
        for query, owner in enumerate(class_set.query_class):
            members[owner].append(query)
        probs = torch.stack([probs[rows].amax(dim=0) for rows in members])
    top, labels = probs.max(dim=0)
    labels = torch.where(top < threshold, torch.full_like(labels, background), labels)
    return probs, labels


def _runs(owners: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """``(class, start, stop)`` for each run of equal, consecutive owners."""
    runs: list[tuple[int, int, int]] = []
    start = 0
    for position in range(1, len(owners) + 1):
        if position == len(owners) or owners[position] != owners[start]:
            runs.append((owners[start], start, position))
            start = position
    return runs


class StreamingDecision:
    """The decision for one class list, computed a chunk of queries at a time.

    Args:
        queries: ``Q x D`` unit query embeddings (float32, on the compute device).
        class_set: the parsed class list (queries are grouped by class, in order).
        threshold, background: pixels whose top probability is below
            ``threshold`` get class ``background``.
        probabilities: also return the ``K x h x w`` class probabilities;
            without them only ``h x w`` running maxima are kept.
        chunk_elements: logits held per chunk (``chunk x h x w``).
    """

    def __init__(self, queries: torch.Tensor, class_set: ClassSet, threshold: float, background: int,
                 probabilities: bool, chunk_elements: int = QUERY_CHUNK_ELEMENTS) -> None:
        self.queries = queries
        self.class_set = class_set
        self.threshold = threshold
        self.background = background
        self.probabilities = probabilities
        self.chunk_elements = chunk_elements
        self.query_class = torch.tensor(class_set.query_class, dtype=torch.int64, device=queries.device)

    def chunk_size(self, pixels: int) -> int:
        """Queries per chunk for a region of ``pixels`` pixels (at least 1)."""
        return max(1, min(self.queries.shape[0], self.chunk_elements // max(pixels, 1)))

    def decide(self, logits_of: Callable[[int, int], torch.Tensor], height: int, width: int
               ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Labels (``h x w`` int64) and, when asked for, probabilities (``K x h x w`` float32) of a region.

        Args:
            logits_of: ``(start, stop) -> logits ((stop - start) x h x w)`` of queries ``start .. stop - 1``
                for the region.
        """
        total = self.queries.shape[0]
        step = self.chunk_size(height * width)
        device = self.queries.device
        peak: Optional[torch.Tensor] = None  # running max of 50 * logits over queries
        mass: Optional[torch.Tensor] = None  # running sum of exp(50 * logits - peak)
        class_peak = (torch.full((self.class_set.num_classes, height, width), -torch.inf, device=device)
                      if self.probabilities else None)
        best = torch.full((height, width), -torch.inf, device=device)
        best_class = torch.zeros((height, width), dtype=torch.int64, device=device)
        for start in range(0, total, step):
            scaled = logits_of(start, min(start + step, total)) * LOGIT_SCALE  # c x h x w
            chunk_peak = scaled.amax(dim=0)
            if peak is None or mass is None:
                peak = chunk_peak
                mass = torch.exp(scaled - peak).sum(dim=0)
            else:
                new_peak = torch.maximum(peak, chunk_peak)
                mass = mass * torch.exp(peak - new_peak) + torch.exp(scaled - new_peak).sum(dim=0)
                peak = new_peak
            owners = self.class_set.query_class[start:start + step]
            if class_peak is not None:
                runs = _runs(owners)
                merged = torch.stack([scaled[a] if b - a == 1 else scaled[a:b].amax(dim=0) for _, a, b in runs])
                index = torch.tensor([k for k, _, _ in runs], dtype=torch.int64, device=device)
                class_peak[index] = torch.maximum(class_peak[index], merged)
            else:
                value, position = scaled.max(dim=0)  # first maximum: the lowest class wins ties
                better = value > best
                best = torch.where(better, value, best)
                best_class = torch.where(better, self.query_class[start + position], best_class)
        if peak is None or mass is None:
            raise ValueError("a decision needs at least one query")
        probs: Optional[torch.Tensor] = None
        if class_peak is not None:
            probs = torch.exp(class_peak - peak) / mass
            top, labels = probs.max(dim=0)
        else:
            top, labels = torch.exp(best - peak) / mass, best_class
        labels = torch.where(top < self.threshold, torch.full_like(labels, self.background), labels)
        return labels, probs
