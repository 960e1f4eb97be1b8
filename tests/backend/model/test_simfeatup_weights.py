"""Finding and downloading the SimFeatUp checkpoint, over a real loopback HTTP server."""

import http.server
import threading

import pytest

from segearth_backend.errors import WeightsNotFoundError
from segearth_backend.model.simfeatup_weights import (
    SIMFEATUP_URL,
    download,
    resolve_upsampler_weights,
    simfeatup_cache_path,
)

PAYLOAD = bytes(range(256)) * 1024  # 256 KiB


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path == "/full.ckpt":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/cut.ckpt":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[:1000])
        elif self.path == "/tiny.ckpt":
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"<html")
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_is_complete_and_reports_progress(server, tmp_path):
    seen = []
    target = download(server + "/full.ckpt", tmp_path / "w" / "a.ckpt", progress=lambda d, t: seen.append((d, t)))
    assert target.read_bytes() == PAYLOAD
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert list(target.parent.iterdir()) == [target]  # no temp files left


@pytest.mark.parametrize("path, fragment", [("/cut.ckpt", "stopped after 1000"), ("/tiny.ckpt", "only 5 bytes")])
def test_incomplete_download_leaves_nothing(server, tmp_path, path, fragment):
    target = tmp_path / "a.ckpt"
    with pytest.raises(ValueError, match=fragment):
        download(server + path, target)
    assert list(tmp_path.iterdir()) == []


def test_resolve_downloads_once_into_the_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGEARTH_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    path = resolve_upsampler_weights("simfeatup", tmp_path, url=server + "/full.ckpt", progress=None)
    assert path == simfeatup_cache_path(tmp_path) and path.read_bytes() == PAYLOAD
    # Second time: served from the cache even with a dead URL.
    assert resolve_upsampler_weights("simfeatup", tmp_path, url=server + "/missing") == path


def test_failed_download_says_where_to_put_the_file(server, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGEARTH_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(WeightsNotFoundError, match=r"could not be downloaded \(HTTP Error 404") as caught:
        resolve_upsampler_weights("simfeatup", tmp_path, url=server + "/missing")
    assert str(simfeatup_cache_path(tmp_path)) in str(caught.value)


def test_offline_mode_does_not_try_the_network(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="downloads are off") as caught:
        resolve_upsampler_weights("simfeatup", tmp_path)
    assert SIMFEATUP_URL in str(caught.value) and str(simfeatup_cache_path(tmp_path)) in str(caught.value)


def test_none_path_and_missing_path(tmp_path):
    assert resolve_upsampler_weights("none", tmp_path) is None
    assert resolve_upsampler_weights("Bilinear", tmp_path) is None
    existing = tmp_path / "mine.ckpt"
    existing.write_bytes(b"x")
    assert resolve_upsampler_weights(str(existing), tmp_path) == existing
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        resolve_upsampler_weights(str(tmp_path / "other.ckpt"), tmp_path)
    assert simfeatup_cache_path(tmp_path) == tmp_path / "simfeatup" / "xclip_jbu_one_million_aid.ckpt"
