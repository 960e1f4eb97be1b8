"""One ``/segment`` request as data, and running it on a segmenter (shared by every engine).

The HTTP layer turns a bundle into a :class:`SegmentRequest`; an engine runs
it with :func:`run_segment` (on its inference thread, or in a Ray replica)
and hands back a :class:`SegmentAnswer`. Both are plain picklable data, so
they cross process boundaries unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..request_rules import DEFAULT_BIAS_LAMBDA
from .progress import Job


@dataclass(frozen=True)
class SegmentRequest:
    """The parameters of one segmentation (validated by the engine, as :meth:`Segmenter.predict` does)."""

    image: Any
    classes: Any
    valid: Any = None
    prob_threshold: Any = 0.0
    background_index: Any = 0
    bias_lambda: Any = DEFAULT_BIAS_LAMBDA
    probabilities: bool = False

    @classmethod
    def from_params(cls, params: dict[str, Any], image: Any, valid: Any) -> SegmentRequest:
        """From a checked ``params.json`` and the bundle's arrays."""
        return cls(image, params["classes"], valid, params.get("prob_threshold", 0.0),
                   params.get("background_index", 0), params.get("bias_lambda", DEFAULT_BIAS_LAMBDA),
                   params.get("return_probabilities", False))

    @property
    def pixels(self) -> int:
        shape: tuple[int, ...] = tuple(getattr(self.image, "shape", ()))
        return int(shape[0] * shape[1]) if len(shape) >= 2 else 0


@dataclass(frozen=True)
class SegmentAnswer:
    """What ``/segment`` returns: labels, probabilities (float16, when asked), class lines and names, timings."""

    labels: np.ndarray
    probabilities: Optional[np.ndarray]
    lines: tuple[str, ...]
    names: tuple[str, ...]
    timings: dict[str, float]


def run_segment(segmenter: Any, request: SegmentRequest, job: Job) -> SegmentAnswer:
    """``segmenter.predict`` for ``request``; ``job`` gets the progress and may cancel it."""
    prediction = segmenter.predict(request.image, request.classes, prob_threshold=request.prob_threshold,
                                   background_index=request.background_index, bias_lambda=request.bias_lambda,
                                   valid=request.valid, probabilities=request.probabilities,
                                   should_stop=job.cancel.is_set, progress=job.progress)
    probabilities = prediction.probabilities.astype(np.float16) if request.probabilities else None
    return SegmentAnswer(prediction.labels, probabilities, tuple(prediction.classes.lines),
                         tuple(prediction.classes.names), dict(prediction.timings))


def run_embed(segmenter: Any, classes: list[str]) -> tuple[int, int]:
    """Compute (or load) the class embeddings: (classes, queries)."""
    class_set = segmenter.embed_classes(classes)
    return class_set.num_classes, class_set.num_queries
