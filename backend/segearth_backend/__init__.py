"""SegEarth-OV inference backend: training-free open-vocabulary segmentation.

>>> from segearth_backend import load_segmenter
>>> seg = load_segmenter(upsampler_weights="none")          # doctest: +SKIP
>>> pred = seg.predict(rgb_uint8, ["background", "building,roof", "road"])  # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.2.0"

from .config import EngineConfig
from .errors import (
                     CheckpointError,
                     ChecksumError,
                     ClassListError,
                     ConfigError,
                     DeviceError,
                     ImageError,
                     InputError,
                     ModelConfigError,
                     ParameterError,
                     PredictionCancelledError,
                     SegEarthError,
                     ShapeError,
                     WeightsError,
                     WeightsNotFoundError,
)
from .pipeline.classes import ClassSet, parse_classes
from .pipeline.segmenter import Prediction, Segmenter, load_segmenter

__all__ = [
    "__version__", "load_segmenter", "Segmenter", "Prediction", "EngineConfig", "ClassSet", "parse_classes",
    "SegEarthError", "InputError", "ClassListError", "ImageError", "ParameterError", "WeightsError",
    "WeightsNotFoundError", "CheckpointError", "ModelConfigError", "DeviceError", "ShapeError",
    "PredictionCancelledError", "ConfigError", "ChecksumError",
]
