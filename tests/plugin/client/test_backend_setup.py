"""backend_setup.py without installing anything: the plan, the choices, the messages (run as a script and imported)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from segearth_qgis.client import backend_setup
from tests.helpers import ROOT, minimal_env

SCRIPT = ROOT / "segearth_qgis" / "client" / "backend_setup.py"


def test_the_plan_as_json_names_python_device_build_size_and_weights(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--plan", "--target", str(tmp_path / "env"), "--device",
                             "cpu", "--weights", "skip", "--python", sys.executable], capture_output=True, text=True,
                            timeout=120, env=minimal_env(tmp_path))
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["base_python"] == sys.executable
    assert plan["python_version"] == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert plan["device"] == "cpu" and plan["torch_build"] == "CPU" and plan["download_mb"] > 100
    assert plan["torch_index"] == "https://download.pytorch.org/whl/cpu"
    assert plan["pypi_fallback_mb"] == backend_setup.DOWNLOAD_MB["pypi-linux"]  # said before anything happens
    assert plan["torch_packages"] == ["torch", "torchvision"]  # pinned only on Intel Macs
    assert plan["venv_python"] == str(tmp_path / "env" / "venv" / "bin" / "python")
    assert plan["backend_source"] == str(ROOT / "backend") and plan["weights"] == "skip"
    from segearth_backend import __version__

    assert plan["backend_version"] == __version__
    assert not (tmp_path / "env").exists()  # a plan changes nothing


def test_the_script_needs_only_the_standard_library():
    """It runs with any Python >= 3.9, before anything is installed."""
    import ast

    tree = ast.parse(SCRIPT.read_text(encoding="utf-8"))
    modules = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert modules <= set(sys.stdlib_module_names) | {"__future__"}, modules - set(sys.stdlib_module_names)


def test_devices_and_builds():
    assert backend_setup.choose_device("cpu") == ("cpu", "as asked")
    device, why = backend_setup.choose_device("auto")
    assert device == "cpu" and "no NVIDIA GPU" in why  # this machine has none
    assert backend_setup.torch_build("cuda")[0].startswith("CUDA")
    assert backend_setup.torch_build("mps")[1] is None  # the default build carries MPS


def test_no_usable_python_is_explained(tmp_path):
    with pytest.raises(backend_setup.SetupError, match=r"No Python 3\.9 or newer.*--python"):
        backend_setup.find_base_python(str(tmp_path / "no-python"))


def test_a_failed_step_names_the_step_the_command_and_what_to_do():
    lines = []
    with pytest.raises(backend_setup.SetupError) as caught:
        backend_setup.run("PyTorch", [sys.executable, "-c", "import sys; print('pip says no'); sys.exit(4)"],
                          "check the internet connection", echo=lines.append)
    message = str(caught.value)
    assert "Step 'PyTorch' failed (exit code 4)" in message and sys.executable in message
    assert "pip says no" in message and "What to do: check the internet connection" in message
    assert any("pip says no" in line for line in lines)  # the output streamed while it ran


def test_cancel_kills_the_running_command_and_says_how_to_continue():
    import threading

    cancel = backend_setup.Cancellation()
    threading.Timer(0.5, cancel.cancel).start()
    with pytest.raises(backend_setup.SetupCancelledError, match="continues where it stopped"):
        backend_setup.run("PyTorch", [sys.executable, "-c", "import time; print('started', flush=True); "
                                      "time.sleep(60)"], "", echo=lambda line: None, cancel=cancel)


def test_weights_are_found_in_a_folder(tmp_path):
    (tmp_path / "models" / "clip").mkdir(parents=True)
    (tmp_path / "models" / "clip" / "open_clip_pytorch_model.bin").write_bytes(b"x")
    (tmp_path / "xclip_jbu_one_million_aid.ckpt").write_bytes(b"y")
    found = backend_setup.find_weights(tmp_path)
    assert found == {"clip_weights": str(tmp_path / "models" / "clip" / "open_clip_pytorch_model.bin"),
                     "upsampler_weights": str(tmp_path / "xclip_jbu_one_million_aid.ckpt")}


def test_the_backend_source_is_found_in_a_zip_layout_and_in_a_checkout(tmp_path):
    assert backend_setup.backend_source() == ROOT / "backend"
    plugin = tmp_path / "segearth_qgis"
    (plugin / "backend" / "segearth_backend").mkdir(parents=True)
    (plugin / "backend" / "pyproject.toml").write_text("[project]\n")
    assert backend_setup.backend_source(plugin / "client" / "backend_setup.py") == plugin / "backend"
    with pytest.raises(backend_setup.SetupError, match="reinstall the plugin"):
        backend_setup.backend_source(tmp_path / "elsewhere" / "client" / "backend_setup.py")


def test_the_environment_never_sees_qgis_python(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/usr/share/qgis/python")
    monkeypatch.setenv("PYTHONHOME", "/qgis")
    env = backend_setup.clean_env()
    assert "PYTHONPATH" not in env and "PYTHONHOME" not in env and env["PYTHONNOUSERSITE"] == "1"


def test_default_target_is_a_per_user_data_folder():
    target = backend_setup.default_target()
    assert str(target).endswith(str(Path("segearth-ov") / "backend")) and str(Path.home()) in str(target)


def test_make_plan_respects_the_wheelhouse(tmp_path):
    args = argparse.Namespace(target=str(tmp_path), python=sys.executable, device="cpu", weights="skip",
                              wheelhouse=str(tmp_path / "wheels"), index_url=None)
    plan = backend_setup.make_plan(args)
    assert plan.torch_index is None and plan.download_mb == 0 and plan.wheelhouse == str(tmp_path / "wheels")


def test_output_that_is_not_utf8_is_still_a_clear_failure():
    lines = []
    with pytest.raises(backend_setup.SetupError, match="exit code 3"):
        backend_setup.run("backend", [sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'caf\\xe9\\n'); "
                                      "sys.exit(3)"], "", echo=lines.append)
    assert any("caf" in line for line in lines)


def test_a_python_that_talks_before_answering_is_still_understood(tmp_path):
    chatty = tmp_path / "python3"
    chatty.write_text(f"#!/bin/sh\necho 'pyenv: using 3.x'\nexec {sys.executable} \"$@\"\n")
    chatty.chmod(0o755)
    assert backend_setup.python_version(str(chatty)) == sys.version_info[:2]


def test_weights_must_be_download_skip_or_an_existing_folder(tmp_path):
    args = argparse.Namespace(target=str(tmp_path), python=sys.executable, device="cpu", weights="downlaod",
                              wheelhouse=None, index_url=None)
    with pytest.raises(backend_setup.SetupError, match="'download', 'skip' or a folder"):
        backend_setup.make_plan(args)


def test_the_weights_search_stops_at_its_depth(tmp_path):
    deep = tmp_path / "a" / "b" / "c" / "d" / "e"
    deep.mkdir(parents=True)
    (deep / "xclip_jbu_one_million_aid.ckpt").write_bytes(b"x")
    assert backend_setup.find_weights(tmp_path) == {}
    assert backend_setup.find_weights(tmp_path, depth=6) == {"upsampler_weights": str(deep /
                                                                                    "xclip_jbu_one_million_aid.ckpt")}


def test_an_interrupted_environment_is_made_again(tmp_path):
    """Found in review: cancelled during `venv`, the next run said "already there" and failed without pip."""
    target = tmp_path / "backend"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target / "venv")], check=True)
    python = target / "venv" / "bin" / "python"
    assert python.is_file() and not backend_setup.pip_works(python)
    args = argparse.Namespace(target=str(target), python=sys.executable, device="cpu", weights="skip",
                              wheelhouse=None, index_url=None)
    plan = backend_setup.make_plan(args)
    lines = []
    cancel = backend_setup.Cancellation()
    echo = lines.append

    def stop_after_step_two(text: str) -> None:
        echo(text)
        if text.startswith("[3/6]"):
            cancel.cancel()

    with pytest.raises(backend_setup.SetupCancelledError):
        backend_setup.set_up(plan, echo=stop_after_step_two, cancel=cancel)
    assert not any("already there" in line for line in lines)
    assert backend_setup.pip_works(python)


def fake_nvidia_smi(folder: Path, header_cuda: str) -> None:
    """An ``nvidia-smi`` executable that answers as a driver supporting CUDA ``header_cuda`` would."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--query-gpu=name" ]; then echo "NVIDIA GeForce RTX 5090"; exit 0; fi\n'
        f'echo "| NVIDIA-SMI 570.86.10   Driver Version: 570.86.10   CUDA Version: {header_cuda}     |"\n')
    script.chmod(0o755)


def test_the_gpu_and_its_driver_cuda_version_come_from_nvidia_smi(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path / "bin", "12.8")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    assert backend_setup.nvidia_gpu() == "NVIDIA GeForce RTX 5090"
    assert backend_setup.driver_cuda() == (12, 8)
    assert backend_setup.choose_device("auto") == ("cuda", "NVIDIA GPU found: NVIDIA GeForce RTX 5090")
    fake_nvidia_smi(tmp_path / "bin", "12.4")
    assert backend_setup.driver_cuda() == (12, 4)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no nvidia-smi: no GPU, no version
    assert backend_setup.nvidia_gpu() is None and backend_setup.driver_cuda() is None


def test_a_proxy_counts_as_reaching_the_wheel_index(monkeypatch):
    """Behind a proxy a direct connection fails although pip gets through: do not fall back to PyPI then
    (on Windows PyPI's torch has no CUDA); if pip does fail on the index, the set-up tries PyPI."""
    unreachable = "https://127.0.0.1:9/whl/cpu"
    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert not backend_setup.reachable(unreachable, timeout=2)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert backend_setup.reachable(unreachable, timeout=2)
