"""The SAR input parameters of the segment algorithms (the dock's "SAR" band mapping, for Processing)."""

from __future__ import annotations

from typing import Any, Optional

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterNumber,
)

from ..core.sar import DEFAULT_DB_RANGE, SAR_UNITS, UNIT_LABELS, SarSettings
from ..qgis_compat import DOUBLE_NUMBER

SAR_INPUT, SAR_DB_MIN, SAR_DB_MAX, SAR_FIT = "SAR_INPUT", "SAR_DB_MIN", "SAR_DB_MAX", "SAR_FIT"
#: SAR_INPUT's choices: 0 = optical bands, then one per SAR unit.
CHOICES = ["Not SAR (optical bands)"] + [f"SAR: {UNIT_LABELS[units]}" for units in SAR_UNITS]

HELP = (
    "SAR input (for the AlignEarth SAR model, backend --model alignearth-sar-vit-b16): the first chosen band (VV "
    "is the usual choice) is converted to decibels, stretched from the dB range (default "
    f"{DEFAULT_DB_RANGE[0]:g} to {DEFAULT_DB_RANGE[1]:g}; or fitted to the layer's 2-98 %) to 8-bit grey and "
    "replicated to three channels, as the reference reads its SAR images; zero, NaN and nodata pixels are masked. "
    "An 8/16-bit grey image is used as the reference reads it (16-bit: high byte).")


def add_sar_parameters(algorithm: QgsProcessingAlgorithm) -> None:
    """SAR_INPUT (enum), SAR_DB_MIN / SAR_DB_MAX and SAR_FIT."""
    algorithm.addParameter(QgsProcessingParameterEnum(SAR_INPUT, "SAR input", CHOICES, defaultValue=0))
    for parameter in (
        QgsProcessingParameterNumber(SAR_DB_MIN, "SAR stretch: dB shown black", DOUBLE_NUMBER, DEFAULT_DB_RANGE[0]),
        QgsProcessingParameterNumber(SAR_DB_MAX, "SAR stretch: dB shown white", DOUBLE_NUMBER, DEFAULT_DB_RANGE[1]),
        QgsProcessingParameterBoolean(SAR_FIT, "SAR stretch: fit to the layer (2-98 %) instead", False),
    ):
        algorithm.addParameter(parameter)


def sar_settings(algorithm: QgsProcessingAlgorithm, parameters: dict[str, Any], context: QgsProcessingContext,
                 layer: Any, band: int) -> Optional[SarSettings]:
    """The SAR settings asked for, or None for optical bands (raises LayerError on bad settings)."""
    choice = algorithm.parameterAsEnum(parameters, SAR_INPUT, context)
    if choice <= 0:
        return None
    units = SAR_UNITS[choice - 1]
    if algorithm.parameterAsBoolean(parameters, SAR_FIT, context):
        from ..job.sar_input import fitted_settings

        return fitted_settings(layer, band, units)
    return SarSettings(units, algorithm.parameterAsDouble(parameters, SAR_DB_MIN, context),
                       algorithm.parameterAsDouble(parameters, SAR_DB_MAX, context))
