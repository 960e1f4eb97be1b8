"""Vector and table outputs (GeoPackage layers, CSV...): which data they may touch, and a layer written into an
existing GeoPackage in one transaction (OGR; no QGIS imports).

A destination is a file and, in a GeoPackage, one layer of it
(:class:`VectorTarget`). An output may never be one of the run's inputs: the
same file, or in a GeoPackage the same layer (another layer of an input's
GeoPackage is fine). A layer written into an existing GeoPackage replaces that
layer only, in one SQLite transaction (:class:`LayerIntoGeoPackage`): the
other layers, styles and metadata stay as they are, and a failure, a cancel or
a killed process leaves the file exactly as it was.
"""

from __future__ import annotations

import contextlib
import errno
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from osgeo import gdal, ogr

from ..errors import OutputError
from .gdal_errors import GdalError, checked, collect_errors
from .outputs import disk_nearly_full, output_error, same_file

GEOPACKAGE_SUFFIX = ".gpkg"
#: Spatial indexes of a shapefile: an old one left beside a new ``x.shp`` would answer for the old features.
SHAPEFILE_INDEXES = (".qix", ".sbn", ".sbx")


def default_layer_name(path: Path) -> str:
    """The layer name QGIS gives a GeoPackage destination without one: the file name up to its first dot."""
    return path.name.split(".")[0] or path.stem


@dataclass(frozen=True)
class VectorTarget:
    """Where a vector or table output goes.

    Attributes:
        path: the file (absolute).
        layer: in a GeoPackage, the layer (a plain ``x.gpkg`` names the layer ``x``, as QGIS does); None for
            formats with one layer per file.
        named: whether the destination named the layer itself (``ogr:dbname=... table=...``, ``x.gpkg|layername=``).
    """

    path: Path
    layer: Optional[str] = None
    named: bool = False

    @property
    def geopackage(self) -> bool:
        return self.path.suffix.lower() == GEOPACKAGE_SUFFIX

    def describe(self) -> str:
        return f"the layer '{self.layer}' of {self.path}" if self.geopackage else str(self.path)


@dataclass(frozen=True)
class DataInput:
    """A file the run reads and, in a GeoPackage, the layer it reads (None: the whole file is an input)."""

    path: Path
    layer: Optional[str] = None

    def describe(self) -> str:
        return f"the layer '{self.layer}' of {self.path}" if self.layer else str(self.path)


def _same_layer(a: Optional[str], b: Optional[str]) -> bool:
    """Whether two layers of one file are the same (None: the whole file; SQLite ignores case in table names)."""
    return a is None or b is None or a.lower() == b.lower()


def check_destinations(vectors: dict[str, VectorTarget], files: dict[str, Path], inputs: Sequence[DataInput]) -> None:
    """Refuse, before any work, an output that is an input or two outputs of one run that are the same.

    Args:
        vectors: vector/table outputs by parameter name.
        files: plain file outputs (an HTML report) by parameter name.
        inputs: what the run reads.

    Raises:
        OutputError: naming the output, the input, and what to do.
    """
    outputs: list[tuple[str, Path, Optional[str], str]] = [
        (name, target.path, target.layer if target.geopackage else None, target.describe())
        for name, target in vectors.items()]
    outputs += [(name, path, None, str(path)) for name, path in files.items()]
    for name, path, layer, described in outputs:
        for source in inputs:
            if same_file(path, source.path) and _same_layer(layer, source.layer):
                advice = "another layer name or another file" if layer else "another file name"
                raise OutputError(f"{name}: the output {described} would overwrite the input {source.describe()}: "
                                  f"choose {advice} (an input is never overwritten).")
    for index, (name, path, layer, described) in enumerate(outputs):
        for other, other_path, other_layer, _ in outputs[index + 1:]:
            if same_file(path, other_path) and _same_layer(layer, other_layer):
                raise OutputError(f"{name} and {other} would both be written to {described}: give them different "
                                  "file names (or, in one GeoPackage, different layer names).")


def geopackage_layers(path: Path) -> list[str]:
    """The layer (table) names of the existing GeoPackage ``path``.

    Raises:
        OutputError: the file is not a GeoPackage GDAL can open (it is left as it is).
    """
    with collect_errors() as log:
        try:
            dataset = checked(f"open {path.name}", lambda: gdal.OpenEx(str(path), gdal.OF_VECTOR, ["GPKG"]), log)
        except GdalError as error:
            raise OutputError(f"{path} exists but is not a GeoPackage ({error.reason}): choose another file name "
                              "(the file is left as it is).") from None
        names = [dataset.GetLayer(index).GetName() for index in range(dataset.GetLayerCount())]
        dataset = None
    return names


def input_layer(path: Path, layer_name: Optional[str], layer_id: Optional[int]) -> Optional[str]:
    """The layer of a GeoPackage a QGIS layer reads: its name, else the one at ``layer_id``, else the first (as
    the OGR provider opens it); None when the file cannot be read (then the whole file counts as an input)."""
    if layer_name:
        return layer_name
    with collect_errors():
        dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR)
        if dataset is None or dataset.GetLayerCount() == 0:
            return None
        index = layer_id if layer_id is not None and 0 <= layer_id < dataset.GetLayerCount() else 0
        name = dataset.GetLayer(index).GetName()
        dataset = None
    return str(name)


def dataset_files(path: str) -> list[str]:
    """Every file of the dataset at ``path`` (a shapefile's ``.shx``, ``.dbf``, ``.prj``...), or just ``path``."""
    with collect_errors():
        dataset = gdal.OpenEx(path, gdal.OF_VECTOR | gdal.OF_RASTER)
        files = list(dataset.GetFileList() or []) if dataset is not None else []
        dataset = None
    return list(dict.fromkeys([path, *files]))


def feature_count(path: Path, layer: Optional[str] = None) -> int:
    """How many features OGR reads back from ``path`` (its layer ``layer``, else its first); -1 if unreadable."""
    with collect_errors():
        try:  # GDAL's exceptions are on here where GDAL can scope them (3.7+): a file it cannot read raises
            dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR)
        except RuntimeError:
            return -1
        if dataset is None:
            return -1
        found = dataset.GetLayerByName(layer) if layer else dataset.GetLayer(0)
        count = found.GetFeatureCount() if found is not None else -1
        dataset = None
    return int(count)


def writing_error(folder: Path, what: str, reason: str) -> OutputError:
    """An OutputError for a failed write, naming a full disk as such (by the writer's words, or the free space)."""
    if any(mark in reason for mark in ("disk is full", "No space left")) or disk_nearly_full(folder):
        return output_error(folder, OSError(errno.ENOSPC, reason))
    return OutputError(f"{what} failed ({reason}). Nothing was written: what was there is as it was.")


def _failed_code(result: Any) -> bool:
    """OGR's error codes: 0 is success."""
    return result is None or (isinstance(result, int) and result != 0)


class LayersIntoGeoPackage:
    """Add or replace layers of the existing GeoPackage ``geopackage``, each with the first layer of a GeoPackage
    the run wrote, in one SQLite transaction: a :class:`~segearth_qgis.job.outputs.CommitStep`.

    ``prepare`` writes the layers inside the transaction and checks them (the
    feature counts read back), ``finish`` commits, ``undo`` rolls back. Until
    the commit nothing of the file changes for any reader; a killed process
    leaves SQLite's journal, which the next opener rolls back. Every other
    layer, style and metadata table of the file stays as it is.
    """

    def __init__(self, geopackage: Path) -> None:
        self.geopackage = geopackage
        self.layers: list[tuple[str, Path]] = []
        self.dataset: Any = None
        self.in_transaction = False

    def add(self, layer: str, source: Path) -> None:
        """Write ``layer`` from the first layer of the GeoPackage ``source``."""
        self.layers.append((layer, source))

    def _error(self, layer: str, reason: str) -> OutputError:
        if "locked" in reason:
            return OutputError(f"{self.geopackage} is in use by another program (an edit session?): save or stop the "
                               "edits, then run again. The GeoPackage is as it was.")
        return writing_error(self.geopackage.parent, f"Writing the layer '{layer}' into {self.geopackage}", reason)

    def prepare(self) -> None:
        layer = self.layers[0][0] if self.layers else ""
        with collect_errors() as log:
            try:
                self.dataset = checked(f"open {self.geopackage.name}", lambda: gdal.OpenEx(
                    str(self.geopackage), gdal.OF_VECTOR | gdal.OF_UPDATE, ["GPKG"]), log)
                checked("start a transaction", self.dataset.StartTransaction, log, failed=_failed_code)
                self.in_transaction = True
                for layer, source in self.layers:
                    self._replace(layer, source, log)
            except GdalError as error:
                self.undo()
                raise self._error(layer, error.reason) from None

    def _replace(self, name: str, source: Path, log: Any) -> None:
        dataset = self.dataset
        reader = checked(f"open {source.name}", lambda: gdal.OpenEx(str(source), gdal.OF_VECTOR), log)
        incoming = reader.GetLayer(0)
        for index in range(dataset.GetLayerCount()):
            if dataset.GetLayer(index).GetName().lower() == name.lower():
                checked(f"remove the old layer '{name}'", functools.partial(dataset.DeleteLayer, index), log,
                        failed=_failed_code)
                break
        geometry = incoming.GetGeometryColumn() or "geom"
        # No deferred spatial index: GDAL would build it when the dataset is flushed, which after a failure that
        # SQLite answered by rolling back on its own (a full disk) would run outside any transaction.
        options = [f"GEOMETRY_NAME={geometry}", f"FID={incoming.GetFIDColumn() or 'fid'}", "SPATIAL_INDEX=NO"]
        layer = checked(f"create the layer '{name}'", lambda: dataset.CreateLayer(
            name, incoming.GetSpatialRef(), incoming.GetGeomType(), options), log)
        definition = incoming.GetLayerDefn()
        for index in range(definition.GetFieldCount()):
            field = definition.GetFieldDefn(index)
            checked(f"create the field {field.GetName()}", functools.partial(layer.CreateField, field), log,
                    failed=_failed_code)
        incoming.ResetReading()
        for feature in incoming:
            copy = ogr.Feature(layer.GetLayerDefn())
            copy.SetFrom(feature)
            copy.SetFID(feature.GetFID())
            checked(f"write feature {feature.GetFID()}", functools.partial(layer.CreateFeature, copy), log,
                    failed=_failed_code)
        expected = incoming.GetFeatureCount()
        if incoming.GetGeomType() != ogr.wkbNone:
            quoted = [text.replace("'", "''") for text in (name, geometry)]
            checked("build the spatial index", lambda: dataset.ReleaseResultSet(dataset.ExecuteSQL(
                f"SELECT CreateSpatialIndex('{quoted[0]}', '{quoted[1]}')")), log, failed=lambda result: False)
        checked("flush the layer", layer.SyncToDisk, log, failed=_failed_code)  # nothing left for the commit
        if layer.GetFeatureCount() != expected:
            raise GdalError("check the layer", f"{layer.GetFeatureCount()} of {expected} features were written")

    def finish(self) -> None:
        with collect_errors() as log:
            try:
                checked("commit", self.dataset.CommitTransaction, log, failed=_failed_code)
            except GdalError as error:
                raise self._error(", ".join(name for name, _ in self.layers), error.reason) from None
            self.in_transaction = False
            self.dataset = None

    def undo(self) -> None:
        with collect_errors():
            if self.in_transaction and self.dataset is not None:
                with contextlib.suppress(RuntimeError):  # exceptions switched on by someone else
                    # GDAL defers some work on new layers (triggers, indexes) to the flush: done inside the
                    # transaction, it is rolled back too, and nothing is left to run on the file afterwards.
                    self.dataset.FlushCache()
                with contextlib.suppress(RuntimeError):
                    self.dataset.RollbackTransaction()
            self.in_transaction = False
            self.dataset = None
