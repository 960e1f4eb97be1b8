"""Plugin-test helpers: generated GeoTIFFs, the class list used across tests, waiting on Qt, the job engine on a
GeoTIFF without QGIS, and a flaky proxy."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from osgeo import gdal, osr

from segearth_qgis.core.grid import Grid
from segearth_qgis.core.pixels import PixelRecipe
from segearth_qgis.job import JobParams, run_job
from segearth_qgis.outputs import plan_outputs
from segearth_qgis.raster_io import GdalBandReader, PixelSource
from segearth_qgis.retry import RetryPolicy

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


def smooth_image(rows: int, cols: int, bands: int = 3, seed: int = 0) -> np.ndarray:
    """Blocky uint8 'land cover' (``bands x rows x cols``) so classes form regions, plus noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(bands, rows // 32 + 1, cols // 32 + 1))
    image = np.kron(coarse, np.ones((32, 32)))[:, :rows, :cols]
    return np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)


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
    """:func:`~segearth_qgis.job.run_job` on a GeoTIFF with :data:`LINES` (block size 336 unless given)."""
    grid, crs, source = source_for(scene_path, options.pop("nodata", None))
    progress = options.pop("progress", lambda p: None)
    cancelled = options.pop("cancelled", lambda: False)
    outputs = plan_outputs(str(output), options.pop("probabilities", None), [str(scene_path)],
                           options.pop("overwrite", False))
    concurrency = options.pop("concurrency", 1)
    log = options.pop("log", lambda message: None)
    retry = options.pop("retry", FAST_RETRY)
    params = JobParams(LINES, outputs, block_size=options.pop("block_size", 336), **options)
    try:
        return run_job(params, grid, crs, source, client, progress, cancelled, concurrency=concurrency, log=log,
                       retry=retry)
    finally:
        source.close()


# ------------------------------------------------------------------ the change job on two GeoTIFFs, without QGIS

def run_pair_job(client, before_path: Path, after_path: Path, output: Path, **options):
    """:func:`~segearth_qgis.change_job.run_change_job` on two uint8 RGB GeoTIFFs of one grid, with :data:`LINES`
    (block size 336 unless given); ``before_output`` / ``after_output`` / ``report`` / ``confidence`` name extra
    outputs. Row areas: the pixel's area (a projected grid in metres)."""
    from segearth_qgis.change_job import ChangeOutputs, ChangeParams, run_change_job
    from segearth_qgis.core.change import ChangeRule

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
