"""A feature output of a Processing algorithm that never destroys what is already in a GeoPackage.

A GeoPackage destination (``out.gpkg``, or a layer in one: ``ogr:dbname='out.gpkg' table="name"``) is written
with ``QgsVectorFileWriter`` and layer options, so only our layer is added or replaced:

- a new file is written under a hidden temporary name and moved into place with the job's other outputs
  (:class:`~segearth_qgis.outputs.StagedFiles`), or not at all;
- an existing file gets our layer (named as asked, else after the file) with ``CreateOrOverwriteLayer``:
  its other layers stay; a GeoPackage that is one of the job's inputs is refused.

Any other destination (a temporary layer, a Shapefile, a database) goes through Processing's own sink.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsDataSourceUri,
    QgsFeature,
    QgsFeatureSink,
    QgsFields,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingOutputLayerDefinition,
    QgsProcessingUtils,
    QgsProviderRegistry,
    QgsVectorFileWriter,
    QgsWkbTypes,
)

from ..outputs import StagedFiles
from .vector_style import sink_destination


def geopackage_target(destination: str) -> Optional[tuple[Path, str]]:
    """The GeoPackage file and layer name of a sink destination (the layer name '' when none was given), or
    None when the destination is not a GeoPackage."""
    if destination.startswith("ogr:"):
        uri = QgsDataSourceUri(destination[4:])
        path, layer = uri.database() or uri.param("dbname"), uri.table()
    else:
        parts = QgsProviderRegistry.instance().decodeUri("ogr", destination)
        path, layer = parts.get("path") or "", parts.get("layerName") or ""
    if not path or Path(path).suffix.lower() != ".gpkg":
        return None
    return Path(os.path.abspath(Path(path).expanduser())), str(layer or "")


def _is_input(path: Path, inputs: Sequence[str]) -> bool:
    for source in inputs:
        file = source.split("|")[0]
        with contextlib.suppress(OSError):
            if file and os.path.exists(file) and os.path.samefile(file, path):
                return True
    return False


def check_destination(parameters: dict[str, Any], name: str, context: QgsProcessingContext,
                      inputs: Sequence[str]) -> None:
    """Refuse, before any work, a GeoPackage destination that is an input or whose folder is missing."""
    target = geopackage_target(sink_destination(parameters.get(name), context))
    if target is None:
        return
    path = target[0]
    if _is_input(path, inputs):
        raise QgsProcessingException(f"{name}: {path} is one of the inputs; write the output to another "
                                     "GeoPackage (an input is never changed).")
    if not path.parent.is_dir():
        raise QgsProcessingException(f"{name}: the folder {path.parent} does not exist.")


class FeatureOutput:
    """Where the features of one feature-sink parameter go (see the module's description).

    Args:
        algorithm: the algorithm (for Processing's own sink).
        name: the parameter's name; ``description`` names the layer when Processing loads it.
        inputs: files the job reads: a GeoPackage among them is never written.
        staged: the job's staged files, which a new GeoPackage joins; None: written in place.
    """

    def __init__(self, algorithm: QgsProcessingAlgorithm, parameters: dict[str, Any], name: str,
                 context: QgsProcessingContext, fields: QgsFields, wkb_type: QgsWkbTypes.Type,
                 crs: QgsCoordinateReferenceSystem, inputs: Sequence[str] = (),
                 staged: Optional[StagedFiles] = None, description: str = "") -> None:
        self.writer: Optional[QgsVectorFileWriter] = None
        self.sink: Optional[QgsFeatureSink] = None
        #: A layer was added to (or replaced in) a GeoPackage that was already there.
        self.added_to_existing = False
        value = parameters.get(name)
        target = geopackage_target(sink_destination(value, context))
        if target is None:
            self.sink, self.destination = algorithm.parameterAsSink(parameters, name, context, fields, wkb_type, crs)
            if self.sink is None:
                raise QgsProcessingException(f"{name}: the output layer could not be created; check the path.")
            return
        check_destination(parameters, name, context, inputs)
        path, layer = target
        layer = layer or path.stem
        options = QgsVectorFileWriter.SaveVectorOptions()
        options.driverName, options.layerName, options.fileEncoding = "GPKG", layer, "UTF-8"
        file = path
        if path.exists():
            options.actionOnExistingFile = QgsVectorFileWriter.CreateOrOverwriteLayer  # its other layers stay
            self.added_to_existing = True
        else:
            options.actionOnExistingFile = QgsVectorFileWriter.CreateOrOverwriteFile
            if staged is not None:
                file = staged.stage(path, ".gpkg")
                file.unlink()  # the GeoPackage driver makes the file itself
        self.writer = QgsVectorFileWriter.create(str(file), fields, wkb_type, crs, context.transformContext(),
                                                 options)
        if self.writer.hasError() != QgsVectorFileWriter.NoError:
            message = self.writer.errorMessage()
            self.writer = None
            raise QgsProcessingException(f"{name}: {path} could not be written: {message}")
        self.destination = f"{path}|layername={layer}"
        if isinstance(value, QgsProcessingOutputLayerDefinition) and value.destinationProject is not None:
            details = QgsProcessingContext.LayerDetails(description or name, value.destinationProject, name,
                                                        QgsProcessingUtils.LayerHint.Vector)
            context.addLayerToLoadOnCompletion(self.destination, details)

    def add(self, feature: QgsFeature) -> None:
        target = self.writer if self.writer is not None else self.sink
        if target is None or not target.addFeature(feature, QgsFeatureSink.FastInsert):
            error = self.writer.errorMessage() if self.writer is not None else "the sink refused a feature"
            raise QgsProcessingException(f"A feature could not be written: {error}")

    def close(self) -> None:
        """Flush and close (a GeoPackage is complete on disk after this)."""
        self.writer = None
        self.sink = None
