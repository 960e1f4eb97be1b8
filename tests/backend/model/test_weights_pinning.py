"""The SimFeatUp download is pinned: a fixed commit of the authors' repository and a sha256 check."""

from __future__ import annotations

import hashlib
import http.server
import threading

import pytest

from segearth_backend.config import EngineConfig
from segearth_backend.errors import ChecksumError, ConfigError
from segearth_backend.model.simfeatup_weights import (
    SIMFEATUP_COMMIT,
    SIMFEATUP_URL,
    download,
    resolve_upsampler_weights,
    simfeatup_cache_path,
)

PAYLOAD = bytes(range(256)) * 1024  # 256 KiB
GOOD = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/x.ckpt"
    httpd.shutdown()
    httpd.server_close()


def test_url_is_pinned_to_a_commit():
    assert f"/raw/{SIMFEATUP_COMMIT}/" in SIMFEATUP_URL and "/main/" not in SIMFEATUP_URL
    assert len(SIMFEATUP_COMMIT) == 40 and int(SIMFEATUP_COMMIT, 16) >= 0


def test_matching_hash_is_kept(server, tmp_path):
    target = download(server, tmp_path / "a.ckpt", sha256=GOOD.upper())
    assert target.read_bytes() == PAYLOAD


def test_mismatching_hash_is_not_kept(server, tmp_path):
    with pytest.raises(ChecksumError, match=f"has sha256 {GOOD}, expected 0{{64}}: .* not kept"):
        download(server, tmp_path / "a.ckpt", sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_unpinned_download_logs_its_hash(server, tmp_path, caplog):
    download(server, tmp_path / "a.ckpt")
    assert GOOD in caplog.text and "SEGEARTH_SIMFEATUP_SHA256" in caplog.text


def test_environment_override_reaches_the_download(server, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGEARTH_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("SEGEARTH_SIMFEATUP_SHA256", "f" * 64)
    config = EngineConfig.from_env(cache_dir=tmp_path)
    assert config.simfeatup_sha256 == "f" * 64
    with pytest.raises(ChecksumError):
        resolve_upsampler_weights("simfeatup", tmp_path, url=server, progress=None, sha256=config.simfeatup_sha256)
    assert not simfeatup_cache_path(tmp_path).exists()
    assert resolve_upsampler_weights("simfeatup", tmp_path, url=server, progress=None, sha256=GOOD).is_file()


def test_malformed_override_is_refused(monkeypatch):
    monkeypatch.setenv("SEGEARTH_SIMFEATUP_SHA256", "not-a-hash")
    with pytest.raises(ConfigError, match="64 lower-case hexadecimal digits"):
        EngineConfig.from_env()
