"""The vector, table and file outputs of one Processing run, written as safely as the job's GeoTIFFs.

Before any work, :meth:`RunOutputs.check` refuses an output that is one of
the run's inputs (the same file, or in a GeoPackage the same layer) or another
output of the run. Each output is then written under a hidden staged name in
its folder (a feature sink into a locked staged folder; a report or a style as
data), checked (read back, flushed to the disk) and put in place by one commit
at the end: a new file appears whole; a layer goes into an existing GeoPackage
in one transaction and replaces that layer only (a plain ``x.gpkg`` names the
layer ``x``, as QGIS does, so the file's other layers stay); a cancel or a
failure leaves every destination as it was. Destinations Processing keeps
itself (``memory:``, ``TEMPORARY_OUTPUT``, a database connection) go to
Processing unchanged.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Optional, Sequence

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsDataSourceUri,
    QgsFeature,
    QgsFeatureSink,
    QgsFields,
    QgsMapLayer,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingOutputLayerDefinition,
    QgsProcessingUtils,
    QgsProviderRegistry,
    QgsRasterLayer,
    QgsVectorFileWriter,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QMetaType

from ..errors import OutputError
from ..job.csv_tables import rewrite_with_types
from ..job.layer_input import layer_files
from ..job.leftovers import recover_leftovers
from ..job.outputs import check_folder
from ..job.staging import StagedFiles
from ..job.vector_outputs import (
    SHAPEFILE_INDEXES,
    DataInput,
    LayersIntoGeoPackage,
    VectorTarget,
    check_destinations,
    dataset_files,
    default_layer_name,
    feature_count,
    geopackage_layers,
    input_layer,
    writing_error,
)

#: ``provider:uri`` destinations (Processing's own rule: a key of three letters or more, so ``C:`` is a path).
_PROVIDER_DESTINATION = re.compile(r"^(.{3,}?):(.*)$", re.DOTALL)


def sink_destination(value: Any, context: QgsProcessingContext) -> str:
    """A feature sink parameter's value as the destination text Processing writes to."""
    if isinstance(value, QgsProcessingOutputLayerDefinition):
        text, _ = value.sink.valueAsString(context.expressionContext(), "")
        return str(text or "")
    return "" if value is None else str(value)


def vector_target(destination: str, default_extension: str = "gpkg") -> Optional[VectorTarget]:
    """The file (and GeoPackage layer) a sink destination names, as Processing reads it; None for destinations
    Processing keeps itself (memory, temporary outputs, database connections)."""
    text = destination.strip()
    if not text or text == QgsProcessing.TEMPORARY_OUTPUT:
        return None
    layer: Optional[str] = None
    provider = _PROVIDER_DESTINATION.match(text)
    if provider and provider.group(1) == "ogr":
        uri = QgsDataSourceUri(provider.group(2))
        path, layer = uri.database() or uri.param("dbname"), uri.table() or None
    elif provider:
        return None
    else:
        parts = QgsProviderRegistry.instance().decodeUri("ogr", text)
        path, layer = parts.get("path") or text, parts.get("layerName") or None
    if not path:
        return None
    target = Path(os.path.abspath(Path(path).expanduser()))
    if not QgsVectorFileWriter.driverForExtension(target.suffix.lstrip(".")):
        target = target.with_name(f"{target.name}.{default_extension}")  # as Processing does
    if target.suffix.lower() != ".gpkg":
        return VectorTarget(target)
    return VectorTarget(target, layer or default_layer_name(target), layer is not None)


def layer_inputs(layer: Optional[QgsMapLayer]) -> list[DataInput]:
    """What a run reads of ``layer``: its layer of a GeoPackage, else its files (a raster's side files, a
    shapefile's .dbf...). Nothing for layers without files (memory, services)."""
    if layer is None:
        return []
    decoded = QgsProviderRegistry.instance().decodeUri(layer.providerType(), layer.source())
    path = decoded.get("path") or ""
    if not path:
        return []
    file = Path(os.path.abspath(path))
    if isinstance(layer, QgsVectorLayer) and file.suffix.lower() == ".gpkg":
        layer_id = decoded.get("layerId")
        return [DataInput(file, input_layer(file, decoded.get("layerName") or None,
                                            int(layer_id) if isinstance(layer_id, int) else None))]
    files = layer_files(layer) if isinstance(layer, QgsRasterLayer) else dataset_files(str(file))
    return [DataInput(Path(os.path.abspath(name))) for name in dict.fromkeys([str(file), *files])]


@dataclass
class _StagedSink:
    target: VectorTarget
    folder: Path
    file: Path
    sink: Any
    written: int = 0
    #: The type name of each field (for a CSV's ``.csvt``).
    type_names: tuple[str, ...] = ()


class RunOutputs:
    """The vector, table and file outputs of one run of ``algorithm`` (see the module's text).

    A context manager: leaving it by an exception (a cancel, a failure)
    removes everything staged, and no destination has changed.
    """

    def __init__(self, algorithm: QgsProcessingAlgorithm, parameters: dict[str, Any],
                 context: QgsProcessingContext) -> None:
        self.algorithm, self.parameters, self.context = algorithm, parameters, context
        self.staged = StagedFiles(overwrite=True)  # Processing's convention: an output replaces what it names
        self.sinks: dict[str, _StagedSink] = {}
        self.kept: dict[str, tuple[Any, str, int]] = {}  # sinks Processing keeps itself: (sink, destination, count)

    def __enter__(self) -> RunOutputs:
        return self

    def __exit__(self, kind: Optional[type[BaseException]], error: Optional[BaseException],
                 trace: Optional[TracebackType]) -> None:
        if error is not None:
            self.abort()

    def target(self, name: str) -> Optional[VectorTarget]:
        """The file (and layer) the sink parameter ``name`` writes to; None when Processing keeps it."""
        definition = self.algorithm.parameterDefinition(name)
        extension = definition.defaultFileExtension() if hasattr(definition, "defaultFileExtension") else "gpkg"
        return vector_target(sink_destination(self.parameters.get(name), self.context), extension or "gpkg")

    def file_target(self, name: str) -> Optional[Path]:
        """The file the file destination parameter ``name`` names, or None when it is not set."""
        text = self.algorithm.parameterAsFileOutput(self.parameters, name, self.context)
        return Path(os.path.abspath(Path(text).expanduser())) if text else None

    def check(self, inputs: Sequence[DataInput], sinks: Sequence[str], files: Sequence[str] = ()) -> None:
        """Refuse now (before any work) outputs that are inputs or each other, or that cannot be written.

        Also removes what dead runs left beside these outputs.

        Raises:
            QgsProcessingException: with a message that says what to change.
        """
        vectors = {name: target for name, target in ((n, self.target(n)) for n in sinks) if target is not None}
        paths = {name: path for name, path in ((n, self.file_target(n)) for n in files) if path is not None}
        try:
            check_destinations(vectors, paths, inputs)
            for path in [*(target.path for target in vectors.values()), *paths.values()]:
                check_folder(path)
                if path.is_dir():
                    raise OutputError(f"{path} is a folder, not a file: choose a file name inside it.")
                recover_leftovers(path)
            for target in vectors.values():
                if target.geopackage and target.path.exists():
                    geopackage_layers(target.path)  # an existing file must be a GeoPackage to get a layer
        except OutputError as error:
            raise QgsProcessingException(str(error)) from None

    def sink(self, name: str, fields: QgsFields, geometry_type: int,
             crs: Optional[QgsCoordinateReferenceSystem] = None) -> None:
        """Open the sink of parameter ``name`` (staged); features go in with :meth:`add`."""
        crs = crs or QgsCoordinateReferenceSystem()
        target = self.target(name)
        if target is None:
            sink, destination = self.algorithm.parameterAsSink(self.parameters, name, self.context, fields,
                                                               geometry_type, crs)
            if sink is None:
                raise QgsProcessingException(f"{name}: the output could not be created: check the destination.")
            self.kept[name] = (sink, str(destination), 0)
            return
        try:
            folder = self.staged.stage_folder(target.path)
        except OutputError as error:
            raise QgsProcessingException(str(error)) from None
        file = folder / target.path.name
        staged_destination = str(file)
        if target.geopackage:
            uri = QgsDataSourceUri()
            uri.setDatabase(str(file))
            uri.setDataSource("", str(target.layer), "geom")
            staged_destination = "ogr:" + uri.uri()
        definition = QgsProcessingOutputLayerDefinition(staged_destination)
        value = self.parameters.get(name)
        if isinstance(value, QgsProcessingOutputLayerDefinition):
            definition.createOptions = value.createOptions
        try:
            sink, _ = self.algorithm.parameterAsSink({**self.parameters, name: definition}, name, self.context,
                                                     fields, geometry_type, crs)
        except QgsProcessingException as error:
            raise QgsProcessingException(str(writing_error(target.path.parent, f"Creating {target.describe()}",
                                                           str(error)))) from None
        if sink is None:
            raise QgsProcessingException(f"{name}: {target.describe()} could not be created: check the destination.")
        self.sinks[name] = _StagedSink(target, folder, file, sink,
                                       type_names=tuple(QMetaType.typeName(int(field.type())) for field in fields))

    def add(self, name: str, feature: QgsFeature) -> None:
        """Write ``feature`` to the sink of ``name``; a failure (a full disk) raises QgsProcessingException."""
        staged = self.sinks.get(name)
        if staged is None:
            sink, destination, count = self.kept[name]
            if not sink.addFeature(feature, QgsFeatureSink.Flag.FastInsert):
                raise QgsProcessingException(f"{name}: writing to {destination} failed: {_last_error(sink)}")
            self.kept[name] = (sink, destination, count + 1)
            return
        if not staged.sink.addFeature(feature, QgsFeatureSink.Flag.FastInsert):
            raise QgsProcessingException(str(writing_error(staged.target.path.parent,
                                                           f"Writing {staged.target.describe()}",
                                                           _last_error(staged.sink))))
        staged.written += 1

    def write_file(self, target: Path, data: bytes) -> None:
        """Stage ``data`` for the file ``target`` (a report, a style), written whole now, moved at the commit."""
        try:
            self.staged.write(target, data, target.suffix)
        except OutputError as error:
            raise QgsProcessingException(str(error)) from None

    def commit(self) -> dict[str, str]:
        """Close the sinks, check what they wrote, and put every output in place at once.

        Returns the destination of each sink parameter (``x.gpkg|layername=y`` for a layer of a GeoPackage that
        holds others), registered to load on completion where the run asked for it.

        Raises:
            QgsProcessingException: nothing was put in place.
        """
        destinations = self.stage_commit()
        try:
            self.staged.commit()
        except OutputError as error:
            self.abort()
            raise QgsProcessingException(str(error)) from None
        self.committed(destinations)
        return destinations

    def stage_commit(self) -> dict[str, str]:
        """:meth:`commit` up to the moves: the sinks closed and checked, their moves (and GeoPackage transactions)
        staged. A job that writes files of its own takes them over (:meth:`StagedFiles.adopt`) to commit them
        with its own, then calls :meth:`committed`.

        Raises:
            QgsProcessingException: a sink's file is not whole; everything staged is removed.
        """
        destinations = {name: destination for name, (_, destination, _) in self.kept.items()}
        self.kept = {}
        into: dict[Path, LayersIntoGeoPackage] = {}  # one transaction per existing GeoPackage
        try:
            for name, staged in self.sinks.items():
                staged.sink = None  # flushed and closed: the file is complete or its errors are known
                destinations[name] = self._stage_commit(staged, into)
            for step in into.values():
                self.staged.add_step(step)
        except OutputError as error:
            self.abort()
            raise QgsProcessingException(str(error)) from None
        return destinations

    def committed(self, destinations: dict[str, str]) -> None:
        """The outputs are in place: have Processing load those the run asked to load."""
        for name in self.sinks:
            self._load_on_completion(name, destinations[name])
        self.sinks = {}

    def _stage_commit(self, staged: _StagedSink, into: dict[Path, LayersIntoGeoPackage]) -> str:
        """Check a closed sink's file and add its move (or its layer, to ``into``: the transaction of its
        GeoPackage) to the commit."""
        target = staged.target
        read_back = feature_count(staged.file, target.layer)
        if read_back != staged.written:
            raise writing_error(target.path.parent, f"Writing {target.describe()}",
                                f"{max(read_back, 0)} of {staged.written} features could be read back")
        if target.geopackage and target.path.exists():
            key = Path(os.path.realpath(target.path))
            into.setdefault(key, LayersIntoGeoPackage(target.path)).add(str(target.layer), staged.file)
            return f"{target.path}|layername={target.layer}"
        if target.path.suffix.lower() == ".csv":
            try:
                rewrite_with_types(staged.file, staged.type_names)
            except OSError as error:
                raise writing_error(target.path.parent, f"Writing {target.describe()}", str(error)) from None
        self.staged.attach_folder(staged.folder, target.path.parent, new_only=target.geopackage)
        if target.path.suffix.lower() == ".shp":
            for suffix in SHAPEFILE_INDEXES:
                self.staged.replace_stale(target.path.with_suffix(suffix))
        return f"{target.path}|layername={target.layer}" if target.named else str(target.path)

    def _load_on_completion(self, name: str, destination: str) -> None:
        """Have Processing load ``destination`` when the run asked for the output of ``name`` to be loaded."""
        value = self.parameters.get(name)
        if not isinstance(value, QgsProcessingOutputLayerDefinition) or value.destinationProject is None:
            return
        definition = self.algorithm.parameterDefinition(name)
        title = value.destinationName or (definition.description() if definition is not None else name)
        self.context.addLayerToLoadOnCompletion(destination, QgsProcessingContext.LayerDetails(
            title, value.destinationProject, name, QgsProcessingUtils.LayerHint.Vector))

    def abort(self) -> None:
        """Close every sink and remove everything staged; no destination changes."""
        for staged in self.sinks.values():
            staged.sink = None
        self.sinks, self.kept = {}, {}
        self.staged.abort()


def _last_error(sink: Any) -> str:
    message = sink.lastError() if hasattr(sink, "lastError") else ""
    return str(message or "the data provider gave no reason")
