"""The plugin's backend client against a real backend process it starts itself."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from segearth_qgis.client.backend_client import BackendClient, BackendError, BackendSettings
from segearth_qgis.client.local_backend import split_arguments, start_local_backend
from segearth_qgis.errors import BackendStartError
from tests.helpers import ROOT, wait_for

CLASSES = ["background", "building,roof", "road", "water"]


def test_start_health_segment_embed_stop(local_backend, parity_dir, tmp_path):
    from segearth_backend import load_segmenter

    client = local_backend.client()
    health = client.health()
    assert health["status"] == "ready" and health["auth"] is True and health["model"] == "tiny-clip"
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, size=(130, 170, 3), dtype=np.uint8)
    valid = np.ones((130, 170), bool)
    valid[-10:] = False
    result = client.segment(image, CLASSES, prob_threshold=0.2, valid=valid, probabilities=True)
    engine = load_segmenter(model=str(parity_dir / "tiny-clip.json"), clip_weights=str(parity_dir / "tiny-clip.pt"),
                            upsampler_weights=str(parity_dir / "tiny-simfeatup.ckpt"), device="cpu",
                            cache_dir=tmp_path)
    expected = engine.predict(image, CLASSES, prob_threshold=0.2, valid=valid)
    np.testing.assert_array_equal(result.labels, expected.labels)
    np.testing.assert_allclose(result.probabilities, expected.probabilities, atol=1e-3)
    assert result.meta["names"] == ["background", "building", "road", "water"]
    assert client.embed_classes(["pond", "lake,reservoir"]) ["queries"] == 3


def test_bad_request_is_a_readable_error(local_backend):
    with pytest.raises(BackendError, match=r"refused the request \(422\): .*uint8") as caught:
        local_backend.client().segment(np.zeros((5, 5, 3), np.uint16), CLASSES)
    assert caught.value.status == 422 and caught.value.code == "bad_image"


def test_wrong_token(local_backend):
    client = BackendClient(local_backend.url, token="not-it")
    with pytest.raises(BackendError, match="token is wrong") as caught:
        client.segment(np.zeros((5, 5, 3), np.uint8), CLASSES)
    assert caught.value.status == 401


def test_unreachable_url_is_clear_and_quick():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    start = time.monotonic()
    with pytest.raises(BackendError, match="Cannot reach the SegEarth-OV backend at http://127.0.0.1"):
        BackendClient(f"http://127.0.0.1:{port}").health()
    assert time.monotonic() - start < 30  # a refused connection is reported at once, not after retries


def test_stop_leaves_no_process(tiny_backend_args):
    backend = start_local_backend(sys.executable, [*tiny_backend_args, "--no-warmup", "--upsampler-weights", "none"],
                                  timeout=120)
    pid, url = backend.process.pid, backend.url
    assert backend.client().health()["status"] == "ready"
    backend.stop()
    assert not backend.running() and backend.process.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(BackendError, match="Cannot reach"):
        BackendClient(url).health()  # nothing listens on its port any more
    backend.stop()  # idempotent


def test_wrong_interpreter():
    with pytest.raises(BackendStartError, match="Cannot run the backend interpreter '/no/such/python'"):
        start_local_backend("/no/such/python", timeout=10)


def test_interpreter_without_the_backend_exits_with_its_message():
    start = time.monotonic()
    with pytest.raises(BackendStartError, match=r"(?s)exited during start-up .*No module named segearth_backend"):
        start_local_backend("/usr/bin/python3", timeout=60, env={"PATH": "/usr/bin"})
    assert time.monotonic() - start < 60  # the log tail explains it as soon as the process exits


def test_model_that_cannot_load(tiny_backend_args):
    args = [*tiny_backend_args, "--clip-weights", "/no/such/weights.pt"]
    expected = "(?s)could not load the model: These weight files are missing.*/no/such/weights.pt"
    with pytest.raises(BackendStartError, match=expected):
        start_local_backend(sys.executable, args, timeout=120)


def test_start_timeout_and_cancel_stop_the_process(tiny_backend_args):
    with pytest.raises(BackendStartError, match="did not become ready within 0 s"):
        start_local_backend(sys.executable, tiny_backend_args, timeout=0.2)
    with pytest.raises(BackendStartError, match="cancelled"):
        start_local_backend(sys.executable, tiny_backend_args, timeout=60, cancelled=lambda: True)


def test_no_interpreter_configured():
    with pytest.raises(BackendStartError, match="SEGEARTH_BACKEND_PYTHON"):
        start_local_backend(None, env={})


def test_settings_from_environment():
    env = {"SEGEARTH_BACKEND_URL": "http://gpu-box:8765", "SEGEARTH_BACKEND_TOKEN": "t",
           "SEGEARTH_BACKEND_PYTHON": "/opt/py"}
    settings = BackendSettings.from_env(env, timeout=30.0)
    assert (settings.url, settings.token) == ("http://gpu-box:8765", "t")
    assert (settings.python, settings.timeout) == ("/opt/py", 30)
    assert BackendSettings.from_env({}, url="http://x").url == "http://x"


def test_backend_exits_when_its_parent_dies(tiny_backend_args, tmp_path):
    """A backend started for QGIS does not outlive it, even when QGIS crashes or skips its exit handlers."""
    import subprocess
    import textwrap

    args = [*tiny_backend_args, "--no-warmup", "--upsampler-weights", "none"]
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from segearth_qgis.client.local_backend import start_local_backend
        backend = start_local_backend({sys.executable!r}, {args!r}, timeout=120)
        print(backend.process.pid, flush=True)
        os._exit(0)  # like a crash: no cleanup at all
    """)
    launcher = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    pid = int(launcher.stdout.split()[0])

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    try:
        wait_for(gone, timeout=90, interval=0.2, message="the orphaned backend kept running")
    finally:
        if not gone():
            os.kill(pid, 9)


def test_working_folder_is_removed_and_a_failed_start_keeps_its_log_in_the_logs_folder(tiny_backend_args, tmp_path,
                                                                                       monkeypatch):
    """No /tmp/segearth-backend-* folder piles up; the log of a failure is moved to the logs folder (the
    most recent KEEP_LOGS are kept) and the error says where."""
    import tempfile

    from segearth_qgis.client.local_backend import KEEP_LOGS

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # this test's folders only (others share /tmp)
    (tmp_path / "tmp").mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    for index in range(KEEP_LOGS + 3):  # older logs of failed backends
        (logs / f"backend-20240101-0000{index:02d}-1.log").write_text("old\n")
    env = {**os.environ, "SEGEARTH_LOG_DIR": str(logs)}
    backend = start_local_backend(sys.executable, [*tiny_backend_args, "--no-warmup", "--upsampler-weights", "none"],
                                  env=env, timeout=120)
    folder = backend.workdir
    assert folder.parent == tmp_path / "tmp" and folder.name.startswith("segearth-backend-") and folder.is_dir()
    backend.stop()
    assert not folder.exists() and len(list(logs.iterdir())) == KEEP_LOGS + 3  # stopped on purpose: no log kept
    with pytest.raises(BackendStartError) as caught:
        start_local_backend(sys.executable, [*tiny_backend_args, "--clip-weights", "/no/such/file.pt"], env=env,
                            timeout=120)
    assert "missing" in caught.value.message
    assert not list((tmp_path / "tmp").iterdir())  # nothing left in the temporary folder
    kept = sorted(logs.iterdir())
    assert len(kept) == KEEP_LOGS and "backend-20240101-000000-1.log" not in {p.name for p in kept}  # oldest gone
    newest = kept[-1]
    assert "missing" in newest.read_text() and str(newest) in caught.value.message


def test_a_local_backend_gets_a_fresh_token_in_a_private_file(tiny_backend_args, tmp_path):
    """Never on the command line, never in the environment (where the plugin once put it), never the
    token of a remote backend set for the plugin."""
    env = {**os.environ, "SEGEARTH_BACKEND_TOKEN": "the-remote-backends-token"}
    backend = start_local_backend(sys.executable, [*tiny_backend_args, "--no-warmup", "--upsampler-weights", "none"],
                                  env=env, timeout=120)
    try:
        pid = backend.process.pid
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        environment = Path(f"/proc/{pid}/environ").read_bytes()
        assert backend.token.encode() not in b" ".join(command) and b"SEGEARTH_BACKEND_TOKEN" not in environment
        token_file = Path(command[command.index(b"--token-file") + 1].decode())
        assert token_file.read_text() == backend.token and token_file.stat().st_mode & 0o777 == 0o600
        assert backend.token != "the-remote-backends-token" and len(backend.token) >= 24
        client = backend.client()
        with pytest.raises(BackendError) as refused:
            BackendClient(backend.url, "the-remote-backends-token").embed_classes(["a", "b"])
        assert refused.value.status == 401
        assert client.embed_classes(["a", "b"])["classes"] == 2
    finally:
        backend.stop()
    assert not token_file.exists()


def test_the_backend_never_sees_qgis_python_settings():
    """OSGeo4W and QGIS.app set PYTHONHOME / PYTHONPATH for QGIS's own Python; a backend must not inherit them."""
    from segearth_qgis.client.local_backend import backend_environment

    env = backend_environment({"PYTHONHOME": "C:/OSGeo4W/apps/Python39", "PYTHONPATH": "C:/OSGeo4W/apps/qgis/python",
                               "PYTHONSTARTUP": "C:/OSGeo4W/startup.py", "VIRTUAL_ENV": "/home/me/other-venv",
                               "__PYVENV_LAUNCHER__": "/Applications/QGIS.app/Contents/MacOS/python",
                               "PATH": "/usr/bin"})
    assert env == {"PATH": "/usr/bin"}
    assert backend_environment({"PYTHONPATH": "/qgis", "SEGEARTH_BACKEND_PYTHONPATH": "/src"})["PYTHONPATH"] == "/src"


def test_backend_exits_when_the_pipe_from_its_parent_closes(tiny_backend_args):
    """The sign of a vanished parent that works on Windows too (where a dead parent's pid stays the
    parent pid, and a venv launcher sits between QGIS and the backend): end-of-file on its stdin."""
    backend = start_local_backend(sys.executable, [*tiny_backend_args, "--no-warmup", "--upsampler-weights", "none"],
                                  timeout=120)
    try:
        assert backend.process.stdin is not None
        backend.process.stdin.close()  # what the OS does when QGIS ends, however it ends
        assert backend.process.wait(60) == 0
        assert "standard input closed" in backend.log_path.read_text(encoding="utf-8")
    finally:
        backend.stop()


def test_backend_arguments_keep_windows_paths():
    """SEGEARTH_BACKEND_ARGS: backslashes are path separators on Windows, escapes elsewhere (shell rules)."""
    text = '--clip-weights "C:\\My data\\clip.bin" --upsampler-weights D:\\w\\jbu.ckpt --device cpu'
    assert split_arguments(text, windows=True) == [
        "--clip-weights", "C:\\My data\\clip.bin", "--upsampler-weights", "D:\\w\\jbu.ckpt", "--device", "cpu"]
    assert split_arguments("--clip-weights '/data/my clip.bin' --device cpu", windows=False) == [
        "--clip-weights", "/data/my clip.bin", "--device", "cpu"]
