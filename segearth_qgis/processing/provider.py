"""The "SegEarth-OV" Processing provider (id ``segearth``)."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .accuracy import AccuracyAlgorithm
from .change import ChangeAlgorithm, ChangeVectorAlgorithm
from .class_stats import ClassStatsAlgorithm
from .segment import SegmentAlgorithm, SegmentVectorAlgorithm


class SegEarthProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "segearth"

    def name(self) -> str:
        return "SegEarth-OV"

    def longName(self) -> str:  # noqa: N802
        return "SegEarth-OV open-vocabulary segmentation"

    def icon(self) -> QIcon:
        return QIcon(str(Path(__file__).resolve().parents[1] / "icon.svg"))

    def supportedOutputRasterLayerExtensions(self) -> list[str]:  # noqa: N802
        """GeoTIFF only: the outputs carry class names, a colour table and metadata that other formats lose."""
        return ["tif", "tiff"]

    def defaultRasterFileExtension(self) -> str:  # noqa: N802
        return "tif"

    def loadAlgorithms(self) -> None:  # noqa: N802
        for algorithm in (SegmentAlgorithm(), SegmentVectorAlgorithm(), ClassStatsAlgorithm(), AccuracyAlgorithm(),
                          ChangeAlgorithm(), ChangeVectorAlgorithm()):
            self.addAlgorithm(algorithm)
