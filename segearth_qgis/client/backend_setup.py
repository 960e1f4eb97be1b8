"""Set up the SegEarth-OV backend in its own virtual environment (standard library only, Python >= 3.9).

Run by the plugin's *Set up backend…* dialog, or by hand::

    python3 backend_setup.py --target DIR [--python EXE] [--device auto|cpu|cuda|mps]
                             [--weights download|skip|FOLDER] [--wheelhouse FOLDER] [--yes]

Steps, each announced as ``[k/N] ...`` and each skipped when already done,
so running it again finishes an interrupted set-up instead of starting over:

1. find a base Python >= 3.9 (the one given; on Windows the Python shipped
   with QGIS / OSGeo4W; a ``python3`` on PATH; the running one);
2. create an isolated virtual environment in ``DIR/venv`` (it never sees
   QGIS's Python packages, and QGIS never sees its packages);
3. install PyTorch, the build that fits the machine (an NVIDIA GPU: CUDA;
   Apple Silicon: the default build, which has MPS; otherwise the CPU build),
   from the PyTorch wheel index when it can be reached, else from PyPI;
4. install the backend bundled with the plugin (``segearth_backend``) and
   its dependencies;
5. fetch the model weights, or find them in a folder, or skip them;
6. check the environment with ``segearth-backend info`` and write
   ``DIR/segearth-backend.json`` (the interpreter and weights the plugin uses).

A failure names the step, the command and what to do, and exits with code 1.
Offline machines: ``--wheelhouse FOLDER`` installs from wheels downloaded
elsewhere (see the README, "Offline set-up").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

MINIMUM_PYTHON = (3, 9)
RECORD_NAME = "segearth-backend.json"
DONE_MARKER = "SEGEARTH_SETUP_DONE"
PYTORCH_INDEX = "https://download.pytorch.org/whl"
#: Windows: child processes get no console window (QGIS is a windowed program; each python.exe or pip
#: would open one, and closing it would kill the step). 0 elsewhere, where Popen requires 0.
NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0x08000000) if sys.platform == "win32" else 0
#: What would leak QGIS's Python (or an active virtual environment) into the backend's.
FOREIGN_PYTHON_VARIABLES = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__")
#: macOS: a QGIS started from the Finder has only /usr/bin:/bin:/usr/sbin:/sbin on its PATH.
MACOS_PYTHONS = ("/opt/homebrew/bin/python3", "/usr/local/bin/python3",
                 "/Library/Frameworks/Python.framework/Versions/Current/bin/python3")
#: Approximate downloads in MB (PyTorch and its libraries dominate; the rest is about 60 MB).
DOWNLOAD_MB = {"cpu": 260, "cuda-linux": 3300, "cuda-windows": 2600, "mps": 140, "pypi-linux": 3300}
#: How each --weights choice is said, in the plan, the log and the set-up dialog's list alike.
WEIGHTS_WORDS = {"download": "download now", "skip": "later (at the first job)"}
CLIP_FILES = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")
SIMFEATUP_FILE = "xclip_jbu_one_million_aid.ckpt"


class SetupError(Exception):
    """A step failed; the message names the step, the command and what to do."""


class SetupCancelledError(SetupError):
    """The set-up was cancelled; running it again continues where it stopped."""


class Cancellation:
    """Lets another thread stop a running set-up: the current command is killed, no new one starts."""

    def __init__(self) -> None:
        self.cancelled = False
        self.process: Optional[subprocess.Popen[str]] = None

    def cancel(self) -> None:
        self.cancelled = True
        process = self.process
        if process is not None and process.poll() is None:
            process.kill()

    def check(self) -> None:
        if self.cancelled:
            raise SetupCancelledError("The set-up was cancelled. Run it again to finish: it continues where it "
                                      "stopped.")


@dataclass
class Plan:
    """What the set-up will do (``--plan`` prints it as JSON for the plugin's dialog)."""

    base_python: str
    python_version: str
    target: str
    venv_python: str
    device: str
    device_reason: str
    torch_build: str
    torch_index: Optional[str]
    download_mb: int
    weights: str
    backend_source: str
    backend_version: str
    wheelhouse: Optional[str] = None
    steps: list[str] = field(default_factory=list)
    #: What the PyTorch step asks pip for (pinned where PyTorch's newest builds do not serve the machine).
    torch_packages: list[str] = field(default_factory=lambda: ["torch", "torchvision"])
    #: MB PyTorch from PyPI would download instead when the wheel index cannot be reached (0: no such fallback):
    #: on Linux PyPI's build is the CUDA one, many times the CPU build, so the plan says it before Set up.
    pypi_fallback_mb: int = 0


def weights_wording(weights: str) -> str:
    """``--weights`` in words: "download now", "later (at the first job)" or "from the folder F"."""
    return WEIGHTS_WORDS.get(weights, f"from the folder {weights}")


# ----------------------------------------------------------------------------- facts about this machine

def backend_source(start: Optional[Path] = None) -> Path:
    """The backend to install: ``backend/`` inside the plugin (a packaged zip) or beside it (a checkout)."""
    here = (start or Path(__file__)).resolve().parent
    for candidate in (here.parent / "backend", here.parent.parent / "backend"):
        if (candidate / "pyproject.toml").is_file() and (candidate / "segearth_backend").is_dir():
            return candidate
    raise SetupError("The backend's source is not beside the plugin (no backend/pyproject.toml): reinstall the "
                     "plugin from its zip, or run this script from a checkout of the project.")


def backend_version(source: Path) -> str:
    """``__version__`` of the bundled ``segearth_backend`` (read, not imported: it needs torch)."""
    for line in (source / "segearth_backend" / "__init__.py").read_text(encoding="utf-8").splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise SetupError(f"No __version__ in {source / 'segearth_backend' / '__init__.py'}.")


def clean_env() -> dict[str, str]:
    """This process's environment without what would leak QGIS's Python into the backend's."""
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_PYTHON_VARIABLES}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def python_version(executable: str) -> Optional[tuple[int, int]]:
    """(major, minor) of ``executable`` when it is a working Python with venv and ensurepip, else None."""
    try:
        result = subprocess.run([executable, "-c",
                                 "import sys, venv, ensurepip; print('%d %d' % sys.version_info[:2])"],
                                capture_output=True, text=True, timeout=60, env=clean_env(),
                                stdin=subprocess.DEVNULL, creationflags=NO_WINDOW)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0 or not result.stdout.strip():
        return None
    try:  # the last line: some launchers (pyenv shims, wrappers) print their own lines first
        major, minor = (int(x) for x in result.stdout.strip().splitlines()[-1].split())
    except ValueError:
        return None
    return major, minor


def python_candidates(given: Optional[str]) -> list[str]:
    """Where to look for a base Python, most wanted first."""
    candidates = []
    if given:
        return [given]
    if sys.platform == "win32":  # QGIS / OSGeo4W ship a full Python beside qgis.exe
        for root in dict.fromkeys([Path(sys.prefix), Path(sys.exec_prefix), Path(sys.executable).parent]):
            candidates += [str(root / "python.exe"), str(root / "python3.exe")]
    if sys.platform == "darwin":
        candidates += [path for path in MACOS_PYTHONS if Path(path).is_file()]
    for name in ("python3", "python", "py"):
        found = shutil.which(name)
        if found and not (sys.platform == "darwin" and found == "/usr/bin/python3" and not _apple_tools()):
            candidates.append(found)
    if Path(sys.executable).name.lower().startswith("python"):
        candidates.append(sys.executable)
    return list(dict.fromkeys(candidates))


def _apple_tools() -> bool:
    """macOS: Apple's command-line developer tools are installed (without them /usr/bin/python3 is a stub
    that opens an installation dialog when run)."""
    try:
        return subprocess.run(["xcode-select", "-p"], capture_output=True, timeout=20,
                              stdin=subprocess.DEVNULL).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_base_python(given: Optional[str]) -> tuple[str, str]:
    """The first candidate Python >= 3.9 with venv: (path, "3.x")."""
    tried = []
    for candidate in python_candidates(given):
        version = python_version(candidate)
        if version is not None and version >= MINIMUM_PYTHON:
            return candidate, f"{version[0]}.{version[1]}"
        tried.append(f"{candidate} ({f'{version[0]}.{version[1]}' if version else 'not a Python with venv'})")
    hint = {"win32": "Install Python 3.9+ from python.org",
            "darwin": "Install Python 3.9+ from python.org or Homebrew"}.get(
        sys.platform, "Install Python 3.9+ (on Debian/Ubuntu also python3-venv)")
    raise SetupError("No Python 3.9 or newer with the venv module was found (tried: " + ", ".join(tried or ["none"])
                     + f"). {hint} and give it with --python.")


def _nvidia_smi() -> Optional[str]:
    found = shutil.which("nvidia-smi")
    if found is None and sys.platform == "win32":  # older Windows drivers do not put it on the PATH
        legacy = Path(os.environ.get("PROGRAMFILES", r"C:\Program Files")) / "NVIDIA Corporation" / "NVSMI"
        found = str(legacy / "nvidia-smi.exe") if (legacy / "nvidia-smi.exe").is_file() else None
    return found


def _smi(*arguments: str) -> Optional[str]:
    smi = _nvidia_smi()
    if smi is None:
        return None
    try:
        result = subprocess.run([smi, *arguments], capture_output=True, text=True, timeout=20,
                                stdin=subprocess.DEVNULL, creationflags=NO_WINDOW)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def nvidia_gpu() -> Optional[str]:
    """The first NVIDIA GPU's name (nvidia-smi), or None."""
    names = [line.strip() for line in (_smi("--query-gpu=name", "--format=csv,noheader") or "").splitlines()
             if line.strip()]
    return names[0] if names else None


def driver_cuda() -> Optional[tuple[int, int]]:
    """The newest CUDA version the NVIDIA driver supports ("CUDA Version: 12.8" in nvidia-smi's header)."""
    for line in (_smi() or "").splitlines():
        if "CUDA Version:" in line:
            try:
                major, minor = line.split("CUDA Version:", 1)[1].split()[0].split(".")[:2]
                return int(major), int(minor)
            except (IndexError, ValueError):
                return None
    return None


def choose_device(requested: str) -> tuple[str, str]:
    """(device, why): ``auto`` picks CUDA for an NVIDIA GPU, MPS on Apple Silicon, else the CPU."""
    if requested != "auto":
        return requested, "as asked"
    gpu = nvidia_gpu()
    if gpu:
        return "cuda", f"NVIDIA GPU found: {gpu}"
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "mps", "Apple Silicon (Metal)"
    return "cpu", "no NVIDIA GPU found (nvidia-smi)"


def torch_build(device: str) -> tuple[str, Optional[str], int]:
    """(label, wheel index URL or None for PyPI's default, approximate download MB) for ``device``."""
    if device == "cuda":
        if sys.platform == "win32":  # PyPI's Windows wheels are CPU-only
            # CUDA 12.8 builds run on every current GPU (12.6 has no code for RTX 50 cards) but need a
            # driver that supports 12.8; an older driver gets the 12.6 build.
            driver = driver_cuda()
            build = "cu126" if driver is not None and driver < (12, 8) else "cu128"
            return f"CUDA {build[2:4]}.{build[4:]}", f"{PYTORCH_INDEX}/{build}", DOWNLOAD_MB["cuda-windows"]
        return "CUDA (PyPI's default Linux build)", None, DOWNLOAD_MB["cuda-linux"]
    if device == "mps":
        return "default build (with MPS)", None, DOWNLOAD_MB["mps"]
    if sys.platform == "darwin":
        return "default build", None, DOWNLOAD_MB["mps"]
    return "CPU", f"{PYTORCH_INDEX}/cpu", DOWNLOAD_MB["cpu"]


def intel_mac() -> bool:
    return sys.platform == "darwin" and platform.machine() == "x86_64"


def torch_packages() -> list[str]:
    """pip requirements of the PyTorch step. Intel Macs: PyTorch's last build for them is 2.2, built
    against NumPy 1 (with NumPy 2 it imports but fails at the first tensor conversion)."""
    if intel_mac():
        return ["torch<2.3", "torchvision<0.18", "numpy<2"]
    return ["torch", "torchvision"]


def reachable(url: str, timeout: float = 5.0) -> bool:
    """One short connection attempt to ``url``'s host (True when a proxy is configured: pip goes through it)."""
    from urllib.parse import urlparse
    from urllib.request import getproxies

    if getproxies().get(urlparse(url).scheme or "https"):
        return True

    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname or "", parsed.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def data_folder() -> Path:
    """The plugin's per-user data folder (the backend environment, the logs of failed backends)."""
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", Path.home())) / "segearth-ov"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "segearth-ov"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "segearth-ov"


def default_target() -> Path:
    """Where the environment goes when no --target is given (in the per-user data folder)."""
    return data_folder() / "backend"


def venv_python(target: Path) -> Path:
    return target / "venv" / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def make_plan(args: argparse.Namespace) -> Plan:
    if args.weights not in ("download", "skip") and not Path(args.weights).expanduser().is_dir():
        raise SetupError(f"--weights must be 'download', 'skip' or a folder holding the weight files; "
                         f"{args.weights!r} is none of them.")
    base, version = find_base_python(args.python)
    if intel_mac() and tuple(int(part) for part in version.split(".")) > (3, 12):
        raise SetupError(f"PyTorch has no build for Intel Macs and Python {version} (its last, 2.2, is for Python "
                         "3.9 to 3.12): give such a Python with --python (python.org has installers), or use a "
                         "shared backend server (its URL in the panel's Backend box).")
    device, why = choose_device(args.device)
    label, index, megabytes = torch_build(device)
    if args.index_url is not None:
        index = args.index_url or None
    if args.wheelhouse:
        index, megabytes = None, 0
    source = backend_source()
    target = Path(args.target).expanduser().resolve()
    steps = ["Python", "virtual environment", f"PyTorch ({label})", "SegEarth-OV backend", "weights", "check"]
    return Plan(base, version, str(target), str(venv_python(target)), device, why, label, index, megabytes,
                args.weights, str(source), backend_version(source), args.wheelhouse, steps, torch_packages(),
                pypi_fallback_mb=pypi_download_mb() if index and not args.wheelhouse else 0)


def pypi_download_mb() -> int:
    """Approximate MB of PyTorch from PyPI here: the CUDA build on Linux, the CPU build elsewhere."""
    if sys.platform.startswith("linux"):
        return DOWNLOAD_MB["pypi-linux"]
    return DOWNLOAD_MB["mps"] if sys.platform == "darwin" else DOWNLOAD_MB["cpu"]


def fallback_words(plan: Plan) -> str:
    """What happens when the PyTorch index cannot be reached, for the plan ('' when nothing would change)."""
    if not plan.pypi_fallback_mb:
        return ""
    return (f"if the PyTorch index cannot be reached: PyTorch from PyPI instead, about {plan.pypi_fallback_mb} MB"
            + (" (PyPI's Linux build includes CUDA)" if sys.platform.startswith("linux") else ""))


# ----------------------------------------------------------------------------- running the steps

Say = Callable[[str], None]


def say(text: str) -> None:
    print(text, flush=True)


_NO_CANCEL = Cancellation()


def run(step: str, command: Sequence[str], advice: str, env: Optional[dict[str, str]] = None,
        echo: Say = say, cancel: Cancellation = _NO_CANCEL) -> str:
    """Run ``command``, forwarding its output line by line; SetupError (step, command, advice) on failure."""
    cancel.check()
    echo("    $ " + " ".join(command))
    try:
        process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   encoding="utf-8", errors="replace", env=env or clean_env(),
                                   stdin=subprocess.DEVNULL, bufsize=1, creationflags=NO_WINDOW)
    except OSError as error:
        raise SetupError(f"Step '{step}' could not run {command[0]}: {error}. {advice}") from None
    cancel.process = process
    if cancel.cancelled:  # asked between the start of the command and now
        process.kill()
    lines = []
    try:
        for line in process.stdout or ():
            line = line.rstrip()
            lines.append(line)
            if line and not line.startswith("WARNING: Location"):
                echo("    " + line)
        code = process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        cancel.process = None
    cancel.check()
    if code != 0:
        tail = "\n".join(lines[-12:])
        raise SetupError(f"Step '{step}' failed (exit code {code}) running:\n  {' '.join(command)}\nLast output:\n"
                         f"{tail}\nWhat to do: {advice}")
    return "\n".join(lines)


def pip_install(python: Path, packages: Sequence[str], plan: Plan, step: str, index: Optional[str] = None,
                echo: Say = say, cancel: Cancellation = _NO_CANCEL) -> None:
    command = [str(python), "-m", "pip", "install", "--progress-bar", "off"]
    if plan.wheelhouse:
        command += ["--no-index", "--find-links", plan.wheelhouse]
    elif index:
        command += ["--index-url", index]
    advice = ("check the internet connection (or a proxy: set HTTPS_PROXY), then run the set-up again; it continues "
              "where it stopped. Offline: make a wheelhouse elsewhere and pass --wheelhouse.")
    run(step, [*command, *packages], advice, echo=echo, cancel=cancel)


def pip_works(python: Path) -> bool:
    """The environment is complete: its pip runs (an interrupted ``venv`` leaves a Python without pip)."""
    try:
        result = subprocess.run([str(python), "-m", "pip", "--version"], capture_output=True, timeout=120,
                                env=clean_env(), stdin=subprocess.DEVNULL, creationflags=NO_WINDOW)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def installed_version(python: Path, distribution: str) -> Optional[str]:
    code = f"import importlib.metadata as m\ntry: print(m.version({distribution!r}))\nexcept Exception: print('')"
    try:
        result = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120,
                                env=clean_env(), stdin=subprocess.DEVNULL, creationflags=NO_WINDOW)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def torch_error(python: Path) -> Optional[str]:
    """None when torch and torchvision import together (a mismatched pair fails here, not at the first job);
    else the last lines of the import's error (on Windows often a missing Visual C++ runtime)."""
    try:
        result = subprocess.run([str(python), "-c", "import torch, torchvision"], capture_output=True, text=True,
                                encoding="utf-8", errors="replace", timeout=300, env=clean_env(),
                                stdin=subprocess.DEVNULL, creationflags=NO_WINDOW)
    except (OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    if result.returncode == 0:
        return None
    return "\n".join(result.stderr.strip().splitlines()[-6:]) or f"exit code {result.returncode}"


def find_weights(folder: Path, depth: int = 4) -> dict[str, str]:
    """Known weight files under ``folder``, at most ``depth`` folders down (the walk stops there)."""
    found: dict[str, str] = {}
    for root, folders, files in os.walk(folder):
        level = len(Path(root).relative_to(folder).parts)
        folders[:] = sorted(folders) if level < depth - 1 else []
        for name in sorted(files):
            if name in CLIP_FILES and "clip_weights" not in found:
                found["clip_weights"] = str(Path(root) / name)
            if name == SIMFEATUP_FILE and "upsampler_weights" not in found:
                found["upsampler_weights"] = str(Path(root) / name)
    return found


def set_up(plan: Plan, echo: Say = say, cancel: Cancellation = _NO_CANCEL) -> dict[str, object]:
    """Run every step of ``plan``; returns the record written to ``<target>/segearth-backend.json``.

    Raises:
        SetupError: a step failed (the message says which, the command and what to do).
        SetupCancelledError: ``cancel.cancel()`` was called; a second run continues.
    """
    total = len(plan.steps)
    target = Path(plan.target)
    python = Path(plan.venv_python)

    def step(number: int, text: str) -> None:
        cancel.check()
        echo(f"[{number}/{total}] {text}")

    step(1, f"Python: {plan.base_python} ({plan.python_version})")
    step(2, f"Virtual environment: {target / 'venv'}")
    if python.is_file() and python_version(str(python)) is not None and pip_works(python):
        echo("    already there")
    else:
        target.mkdir(parents=True, exist_ok=True)
        run("virtual environment", [plan.base_python, "-m", "venv", "--clear", str(target / "venv")],
            "on Debian/Ubuntu install python3-venv; check that the folder is writable.", echo=echo, cancel=cancel)
    step(3, f"PyTorch: {plan.torch_build} (about {plan.download_mb} MB to download)" if plan.download_mb
         else f"PyTorch: {plan.torch_build} (from {plan.wheelhouse})")
    _install_torch(plan, python, echo, cancel)
    step(4, f"SegEarth-OV backend {plan.backend_version} from {plan.backend_source}")
    if installed_version(python, "segearth-backend") == plan.backend_version:
        echo("    already installed")
    else:
        pip_install(python, [plan.backend_source], plan, "backend", echo=echo, cancel=cancel)
    record: dict[str, object] = {"python": str(python), "version": plan.backend_version, "device": plan.device,
                                 "weights": plan.weights, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    step(5, f"Weights: {weights_wording(plan.weights)}")
    record.update(_get_weights(plan, python, echo, cancel))
    step(6, "Check")
    info = run("check", [str(python), "-m", "segearth_backend", "info", "--environment"],
               "read the output above; remove the environment folder and run the set-up again.", echo=echo,
               cancel=cancel)
    try:
        record["environment"] = json.loads(info[info.index("{"):])
    except ValueError:
        record["environment"] = {}
    path = target / RECORD_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
    os.replace(tmp, path)
    echo(f"{DONE_MARKER} {path}")
    return record


def _install_torch(plan: Plan, python: Path, echo: Say, cancel: Cancellation) -> None:
    """Step 3: PyTorch from its wheel index (PyPI when that cannot be reached or fails), checked by importing it."""
    if torch_error(python) is None:
        echo(f"    already installed: torch {installed_version(python, 'torch')}")
        return
    index = plan.torch_index
    if index and not plan.wheelhouse and not reachable(index):
        echo(f"    the PyTorch wheel index ({index}) cannot be reached: installing from PyPI instead, about "
             f"{plan.pypi_fallback_mb or pypi_download_mb()} MB to download (as the plan said)")
        index = None
    try:
        pip_install(python, plan.torch_packages, plan, "PyTorch", index, echo=echo, cancel=cancel)
    except SetupCancelledError:
        raise
    except SetupError:
        if index is None or plan.wheelhouse:
            raise
        # e.g. a proxy that lets PyPI through but not the PyTorch index (the probe above cannot tell)
        echo(f"    installing from {index} failed: trying PyPI instead, about "
             f"{plan.pypi_fallback_mb or pypi_download_mb()} MB to download (as the plan said)")
        pip_install(python, plan.torch_packages, plan, "PyTorch", None, echo=echo, cancel=cancel)
    error = torch_error(python)
    if error is not None:
        advice = (" On Windows, 'DLL load failed' usually means the Microsoft Visual C++ Redistributable "
                  "(x64) is missing: install it and run the set-up again." if sys.platform == "win32" else "")
        raise SetupError("Step 'PyTorch' installed torch and torchvision, but they do not import together:\n"
                         f"{error}\nWhat to do:{advice or ''} If the error does not say what is missing, "
                         f"remove {Path(plan.target) / 'venv'} and run the set-up again.")


def _get_weights(plan: Plan, python: Path, echo: Say, cancel: Cancellation) -> dict[str, str]:
    """Step 5: download the weights, find them in a folder, or skip; the files found, for the record."""
    if plan.weights == "skip":
        echo("    not now: the backend downloads them at the first job (without internet: choose the files in the "
             "panel, Weights…)")
        return {}
    if plan.weights == "download":
        run("weights", [str(python), "-m", "segearth_backend", "fetch-weights"],
            "without internet, download the files listed above elsewhere and run again with --weights FOLDER.",
            echo=echo, cancel=cancel)
        return {}
    found = find_weights(Path(plan.weights).expanduser())
    for key in ("clip_weights", "upsampler_weights"):
        echo(f"    {key}: {found.get(key, 'not found in this folder')}")
    if not found:
        raise SetupError(f"Step 'weights': no weight file ({', '.join((*CLIP_FILES, SIMFEATUP_FILE))}) was found "
                         f"in {plan.weights}. Copy them there, or choose 'download' or 'skip'.")
    return found


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target", default=str(default_target()), help="folder for the environment")
    parser.add_argument("--python", help="base Python (3.9 or newer) to create the environment with")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    parser.add_argument("--weights", default="download", help="download, skip, or a folder holding the files")
    parser.add_argument("--wheelhouse", help="install from this folder of wheels only (offline)")
    parser.add_argument("--index-url", help="PyTorch wheel index ('' for PyPI's default); default: by device")
    parser.add_argument("--plan", action="store_true", help="print the plan as JSON and stop")
    parser.add_argument("--yes", action="store_true", help="do not ask before starting")
    args = parser.parse_args(argv)
    try:
        plan = make_plan(args)
        if args.plan:
            print(json.dumps(asdict(plan), indent=2))
            return 0
        say(f"Setting up the SegEarth-OV backend {plan.backend_version} in {plan.target}")
        say(f"  device: {plan.device} ({plan.device_reason}); PyTorch: {plan.torch_build}; about "
            f"{plan.download_mb} MB to download" + (f"; {fallback_words(plan)}" if fallback_words(plan) else ""))
        if not args.yes and sys.stdin.isatty() and input("Continue? [Y/n] ").strip().lower() not in ("", "y", "yes"):
            return 1
        set_up(plan)
    except SetupError as error:
        print(f"SET-UP FAILED: {error}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("SET-UP INTERRUPTED: run it again to finish; it continues where it stopped.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
