"""Styling and naming our outputs when Processing loads them into a project.

Processing calls a layer post-processor once, right after it adds the
output layer. QGIS keeps only a C++ pointer to it, so Python must keep the
object alive until then: :func:`attach` puts it in a small registry that it
leaves in :meth:`ResultPostProcessor.postProcessLayer`. Post-processors of
layers that are never loaded (a failed load, a context dropped unloaded) are
evicted oldest first beyond :data:`MAX_PENDING`, so the registry stays bounded.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional, Sequence

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterLayer,
    QgsVectorLayer,
)

from ..core.classes import RGBA
from ..core.report import classes_label
from ..map.styling import class_vector_renderer, style_result_layer

#: At most this many post-processors wait for their layer (one per output of a run whose results load).
MAX_PENDING = 64

_pending: OrderedDict[int, ResultPostProcessor] = OrderedDict()


def pending_count() -> int:
    """How many post-processors wait for their layer to be loaded."""
    return len(_pending)


class ResultPostProcessor(QgsProcessingLayerPostProcessorInterface):
    """Styles one output by class and names it after the run's classes when Processing named it generically.

    Args:
        names: class names (label value ``i`` is ``names[i]``).
        colours: RGBA per class (alpha 0: transparent).
        generic_name: the name Processing gives an unnamed output (the output's description,
            "Segmentation"); such a layer becomes "Segmentation — building, road, water +2".
        background_index: the background class, left out of the name (None: none).
    """

    def __init__(self, names: Sequence[str], colours: Sequence[RGBA], generic_name: str,
                 background_index: Optional[int]) -> None:
        super().__init__()
        self.names, self.colours = list(names), list(colours)
        self.generic_name, self.background_index = generic_name, background_index

    def postProcessLayer(self, layer: Any, context: QgsProcessingContext,  # noqa: N802 - QGIS's name
                         feedback: Optional[QgsProcessingFeedback]) -> None:
        try:
            if isinstance(layer, QgsRasterLayer):
                style_result_layer(layer, self.names, self.colours)
            elif isinstance(layer, QgsVectorLayer):
                layer.setRenderer(class_vector_renderer(self.names, self.colours))
                layer.triggerRepaint()
            if layer is not None and layer.name() == self.generic_name:
                layer.setName(f"{self.generic_name} — {classes_label(self.names, self.background_index)}")
        finally:
            _pending.pop(id(self), None)


def attach(processor: ResultPostProcessor, context: QgsProcessingContext, destination: str) -> bool:
    """Have ``processor`` run on ``destination``'s layer when Processing loads it; False if it will not load."""
    if not context.willLoadLayerOnCompletion(destination):
        return False
    _pending[id(processor)] = processor
    while len(_pending) > MAX_PENDING:
        _pending.popitem(last=False)
    context.layerToLoadOnCompletionDetails(destination).setPostProcessor(processor)
    return True
