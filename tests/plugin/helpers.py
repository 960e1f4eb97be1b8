"""Plugin-test helpers: generated GeoTIFFs and GeoPackages, the class list used across tests, waiting on Qt, the
job engine on a GeoTIFF without QGIS, a flaky proxy, and what a folder holds (digests, a nearly full disk)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from osgeo import gdal, ogr, osr

from segearth_qgis.client.retry import RetryPolicy
from segearth_qgis.core.grid import Grid
from segearth_qgis.core.pixels import PixelRecipe
from segearth_qgis.job.engine import JobParams, run_job
from segearth_qgis.job.outputs import plan_outputs
from segearth_qgis.job.raster_io import GdalBandReader, PixelSource

#: The class list used across the plugin tests, and the names the outputs must carry.
CLASSES = "background\nbuilding, roof\nroad\ntree, forest\nwater"
CLASS_NAMES = ["background", "building, roof", "road", "tree, forest", "water"]
#: A 2 m grid in UTM 33N (EPSG:32633).
UTM = (500000.0, 2.0, 0.0, 5600000.0, 0.0, -2.0)
LINES = tuple(CLASSES.splitlines())

_GDAL_TYPES = {np.uint8: gdal.GDT_Byte, np.uint16: gdal.GDT_UInt16, np.int16: gdal.GDT_Int16,
               np.float32: gdal.GDT_Float32, np.float64: gdal.GDT_Float64}


def write_geotiff(path: Path, bands: np.ndarray, epsg: int, geotransform: tuple, nodata: Optional[float] = None,
                  alpha_band: Optional[int] = None) -> Path:
    """A GeoTIFF from a ``bands x rows x cols`` array (dtype kept)."""
    count, rows, cols = bands.shape
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), cols, rows, count, _GDAL_TYPES[bands.dtype.type])
    dataset.SetGeoTransform(geotransform)
    reference = osr.SpatialReference()
    reference.ImportFromEPSG(epsg)
    dataset.SetProjection(reference.ExportToWkt())
    for index in range(count):
        band = dataset.GetRasterBand(index + 1)
        band.WriteArray(bands[index])
        if nodata is not None and index + 1 != alpha_band:
            band.SetNoDataValue(nodata)
        if index + 1 == alpha_band:
            band.SetColorInterpretation(gdal.GCI_AlphaBand)
    dataset = None
    return path


def write_geopackage(path: Path, layers: dict[str, list[tuple[int, str]]], epsg: int = 32633,
                     square: tuple[float, float, float] = (500040.0, 5599960.0, 200.0)) -> Path:
    """A GeoPackage with one polygon layer per entry of ``layers`` (name: ``[(code, label), ...]``).

    Feature ``i`` of a layer is a square of side ``square[2]`` whose top-left corner is ``square[:2]`` moved
    ``i`` sides to the right, with the fields ``code`` (integer) and ``label`` (text).
    """
    reference = osr.SpatialReference()
    reference.ImportFromEPSG(epsg)
    source = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    x0, y0, side = square
    for name, rows in layers.items():
        layer = source.CreateLayer(name, reference, ogr.wkbPolygon)
        layer.CreateField(ogr.FieldDefn("code", ogr.OFTInteger))
        layer.CreateField(ogr.FieldDefn("label", ogr.OFTString))
        for index, (code, label) in enumerate(rows):
            left = x0 + index * side
            feature = ogr.Feature(layer.GetLayerDefn())
            feature["code"], feature["label"] = code, label
            feature.SetGeometry(ogr.CreateGeometryFromWkt(
                f"POLYGON(({left} {y0},{left + side} {y0},{left + side} {y0 - side},{left} {y0 - side},{left} {y0}))"))
            layer.CreateFeature(feature)
    source = None
    return path


def geopackage_contents(path: Path) -> dict[str, list[tuple]]:
    """Every layer of a GeoPackage, read back with OGR: ``{name: [(fid, attribute values..., geometry WKT)]}``."""
    source = ogr.Open(str(path))
    assert source is not None, f"{path} is not a GeoPackage OGR can open"
    contents: dict[str, list[tuple]] = {}
    for index in range(source.GetLayerCount()):
        layer = source.GetLayer(index)
        definition = layer.GetLayerDefn()
        rows = []
        for feature in layer:
            geometry = feature.GetGeometryRef()
            rows.append((feature.GetFID(), *(feature.GetField(i) for i in range(definition.GetFieldCount())),
                         geometry.ExportToWkt() if geometry is not None else None))
        contents[layer.GetName()] = rows
    source = None
    return contents


def folder_digests(folder: Path) -> dict[str, str]:
    """``{file name: sha256}`` of every file in ``folder`` (hidden ones too; not recursive)."""
    import hashlib

    return {entry.name: hashlib.sha256(entry.read_bytes()).hexdigest() if entry.is_file() else "folder"
            for entry in sorted(folder.iterdir())}


def fill_filesystem(folder: Path, leave: int) -> Path:
    """Fill the file system holding ``folder`` until about ``leave`` bytes are free (a file ``filler`` in it)."""
    filler = folder / "filler"
    free = os.statvfs(folder)
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(free.f_bavail * free.f_frsize - leave, 0))
    left = os.statvfs(folder)
    assert left.f_bavail * left.f_frsize <= leave + left.f_frsize, "the file system did not fill up"
    return filler


def qgis_process_home(home: Path, block_size: int) -> Path:
    """``home`` with a default QGIS profile whose SegEarth-OV block size is ``block_size``: a qgis_process run with
    ``HOME=home`` splits a raster into as many blocks as a 1024-pixel block makes of one twice as wide."""
    profile = home / ".local" / "share" / "QGIS" / "QGIS3" / "profiles" / "default" / "QGIS"
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "QGIS3.ini").write_text(f"[segearth_ov]\nblock_size={block_size}\n")
    return home


def smooth_image(rows: int, cols: int, bands: int = 3, seed: int = 0) -> np.ndarray:
    """Blocky uint8 'land cover' (``bands x rows x cols``) so classes form regions, plus noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(bands, rows // 32 + 1, cols // 32 + 1))
    image = np.kron(coarse, np.ones((32, 32)))[:, :rows, :cols]
    return np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)


def input_with_side_files(folder: Path) -> Path:
    """``oem.tif`` with every side file GDAL and QGIS keep beside a raster, and a second raster ``oem.jpg``."""
    scene = write_geotiff(folder / "oem.tif", smooth_image(60, 70, seed=3), 32633, UTM)
    x0, px, _, y0, _, py = UTM
    world = f"{px}\n0\n0\n{py}\n{x0 + px / 2}\n{y0 + py / 2}\n"
    for name in ("oem.tfw", "oem.tifw", "oem.wld"):
        (folder / name).write_text(world)
    (folder / "oem.prj").write_text(gdal.Open(str(scene)).GetProjection())
    (folder / "oem.qml").write_text("<qgis>the user's own style of oem.tif</qgis>")
    dataset = gdal.Open(str(scene))
    dataset.BuildOverviews("NEAREST", [2])  # oem.tif.ovr (opened read-only: external overviews)
    dataset = None
    gdal.SetConfigOption("GDAL_TIFF_INTERNAL_MASK", "NO")
    try:
        dataset = gdal.Open(str(scene), gdal.GA_Update)
        dataset.CreateMaskBand(gdal.GMF_PER_DATASET)  # oem.tif.msk
        dataset.GetRasterBand(1).GetMaskBand().Fill(255)  # every pixel valid (GDAL 3.10 starts it at 0)
        dataset = None
    finally:
        gdal.SetConfigOption("GDAL_TIFF_INTERNAL_MASK", None)
    dataset = gdal.Open(str(scene))
    dataset.GetRasterBand(1).ComputeStatistics(False)  # oem.tif.aux.xml
    dataset = None
    gdal.GetDriverByName("JPEG").CreateCopy(str(folder / "oem.jpg"), gdal.Open(str(scene)))
    (folder / "oem.jgw").write_text(world)
    assert {"oem.tif.ovr", "oem.tif.msk", "oem.tif.aux.xml", "oem.jpg"} <= set(os.listdir(folder))
    # QGIS itself adds the statistics of its default stretch to oem.tif.aux.xml (GDAL's PAM) the first time
    # Processing opens the layer: opened so once here, so the digests show what our runs do, and only that.
    from qgis.core import QgsProcessingContext, QgsProcessingUtils

    context = QgsProcessingContext()
    assert QgsProcessingUtils.mapLayerFromString(str(scene), context).isValid()
    del context
    return scene


def read_band(path: Path, band: int = 1) -> np.ndarray:
    """One band of a raster file, read with GDAL and closed again."""
    dataset = gdal.Open(str(path))
    try:
        return dataset.GetRasterBand(band).ReadAsArray()
    finally:
        dataset = None


def wait_until(predicate: Callable[[], object], timeout: float = 240.0) -> None:
    """Process Qt events until ``predicate`` is true (tasks finish on the GUI thread)."""
    from qgis.PyQt.QtCore import QCoreApplication

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        QCoreApplication.processEvents()
        time.sleep(0.01)


def read_http_request(conn) -> Optional[tuple[bytes, bytes]]:
    """One HTTP request from socket ``conn``: (head, body), or None when the peer closed before its end."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = conn.recv(1 << 20)
        if not chunk:
            return None
        body += chunk
    return head, body


class FlakyProxy:
    """A real TCP proxy in front of a backend that fails chosen ``/segment`` requests, as a network or a
    lost replica would: each entry of ``failures`` is used for one ``/segment`` request, in order:

    - ``("status", code, error, retry_after)``: answers that HTTP status with a JSON error (and Retry-After);
    - ``"drop"``: closes the connection without an answer;
    - ``None``: passes the request on.

    Every other request, and ``/segment`` once ``failures`` is used up, goes to the backend.
    ``segments`` counts the ``/segment`` requests that arrived.
    """

    def __init__(self, backend_url: str, failures: list) -> None:
        import socketserver
        import threading
        import urllib.parse

        target = urllib.parse.urlsplit(backend_url)
        self.target = (target.hostname, target.port)
        self.failures = list(failures)
        self.segments = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer.serve(self.request)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def serve(self, conn) -> None:
        import json
        import socket

        request = read_http_request(conn)
        if request is None:
            return
        head, body = request
        action = None
        if head.split(b" ")[1].startswith(b"/segment"):
            with self.lock:
                self.segments += 1
                action = self.failures.pop(0) if self.failures else None
        if action == "drop":
            conn.shutdown(socket.SHUT_RDWR)
            return
        if action is not None:
            _, status, code, retry_after = action
            payload = json.dumps({"error": code, "message": f"simulated {code}"}).encode()
            extra = f"Retry-After: {retry_after}\r\n" if retry_after is not None else ""
            conn.sendall(f"HTTP/1.1 {status} Refused\r\nContent-Type: application/json\r\nContent-Length: "
                         f"{len(payload)}\r\n{extra}Connection: close\r\n\r\n".encode() + payload)
            return
        with socket.create_connection(self.target, timeout=300) as upstream:  # one request per connection
            upstream.sendall(head + b"\r\nConnection: close\r\n\r\n" + body)
            while True:
                chunk = upstream.recv(1 << 20)
                if not chunk:
                    break
                conn.sendall(chunk)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------ the job engine on a GeoTIFF, without QGIS

#: Retries without the real waits (for backends that never recover by waiting).
FAST_RETRY = RetryPolicy(first_delay=0.01)


class CountingClient:
    """The real client, with a count of the blocks it was asked to segment, of those in flight at once
    (the most), and an optional hook called before each."""

    def __init__(self, client, before_segment=None):
        self.client, self.before_segment = client, before_segment
        self.segmented = self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()

    def health(self):
        return self.client.health()

    def embed_classes(self, classes):
        return self.client.embed_classes(classes)

    def segment(self, *args, **kwargs):
        with self.lock:
            count = self.segmented
            self.segmented += 1
        if self.before_segment is not None:
            self.before_segment(count)
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return self.client.segment(*args, **kwargs)
        finally:
            with self.lock:
                self.in_flight -= 1


def source_for(path: Path, nodata=None):
    """Grid, CRS and pixel source of a uint8 RGB GeoTIFF, without QGIS."""
    dataset = gdal.Open(str(path))
    x0, px, _, y0, _, py = dataset.GetGeoTransform()
    grid = Grid(x0, y0, px, -py, dataset.RasterXSize, dataset.RasterYSize)
    recipe = PixelRecipe((1, 2, 3), nodata=tuple((b, nodata) for b in (1, 2, 3)) if nodata is not None else ())
    return grid, dataset.GetProjection(), PixelSource(GdalBandReader(str(path), grid), recipe, grid)


def run_scene_job(client, scene_path: Path, output: Path, **options):
    """:func:`~segearth_qgis.job.engine.run_job` on a GeoTIFF with :data:`LINES` (block size 336 unless given)."""
    grid, crs, source = source_for(scene_path, options.pop("nodata", None))
    progress = options.pop("progress", lambda p: None)
    cancelled = options.pop("cancelled", lambda: False)
    outputs = plan_outputs(str(output), options.pop("probabilities", None), [str(scene_path)],
                           options.pop("overwrite", False))
    concurrency = options.pop("concurrency", 1)
    log = options.pop("log", lambda message: None)
    retry = options.pop("retry", FAST_RETRY)
    make_style = options.pop("make_style", None)
    params = JobParams(LINES, outputs, block_size=options.pop("block_size", 336), **options)
    try:
        return run_job(params, grid, crs, source, client, progress, cancelled, make_style, concurrency=concurrency,
                       log=log, retry=retry)
    finally:
        source.close()


# ------------------------------------------------------------------ the change job on two GeoTIFFs, without QGIS

def run_pair_job(client, before_path: Path, after_path: Path, output: Path, **options):
    """:func:`~segearth_qgis.job.change_engine.run_change_job` on two uint8 RGB GeoTIFFs of one grid, with :data:`LINES`
    (block size 336 unless given); ``before_output`` / ``after_output`` / ``report`` / ``confidence`` name extra
    outputs. Row areas: the pixel's area (a projected grid in metres)."""
    from segearth_qgis.core.change import ChangeRule
    from segearth_qgis.job.change_engine import ChangeOutputs, ChangeParams, run_change_job

    grid, crs, before = source_for(before_path, options.pop("nodata", None))
    _, _, after = source_for(after_path, options.pop("after_nodata", None))
    overwrite = options.pop("overwrite", False)
    inputs = [str(before_path), str(after_path)]

    def plan(name):
        path = options.pop(name, None)
        return plan_outputs(str(path), None, inputs, overwrite) if path else None

    report, confidence = options.pop("report", None), options.pop("confidence", None)
    outputs = ChangeOutputs(plan_outputs(str(output), None, inputs, overwrite), plan("before_output"),
                            plan("after_output"), Path(report) if report else None,
                            Path(confidence) if confidence else None, overwrite)
    params = ChangeParams(LINES, outputs, options.pop("rule", ChangeRule()), options.pop("threshold", 0.0),
                          options.pop("background_index", 0), block_size=options.pop("block_size", 336),
                          min_pixels=options.pop("min_pixels", 0))
    row_areas = np.full(grid.height, grid.pixel_width * grid.pixel_height)
    try:
        return run_change_job(params, grid, crs, before, after, client, row_areas,
                              retry=options.pop("retry", FAST_RETRY), **options)
    finally:
        before.close()
        after.close()


#: The change tests' pair: its side in pixels, the pasted square's rows and columns in the after date, and
#: where in the same image the square was copied from.
PAIR_SIZE, PASTED, PASTED_FROM = 336, (30, 94), (250, 314)


def write_pasted_pair(folder: Path) -> tuple[Path, Path, np.ndarray]:
    """Before: PAIR_SIZE x PAIR_SIZE px of smooth 'land cover' (UTM 33N); after: the same with a 64 x 64
    square pasted from elsewhere in it. Returns both GeoTIFFs and the after date's 3 x H x W uint8 bands."""
    image = smooth_image(PAIR_SIZE, PAIR_SIZE, seed=5)
    after = image.copy()
    (top, bottom), (start, stop) = PASTED, PASTED_FROM
    after[:, top:bottom, top:bottom] = image[:, start:stop, start:stop]
    return (write_geotiff(folder / "before.tif", image, 32633, UTM),
            write_geotiff(folder / "after.tif", after, 32633, UTM), after)
