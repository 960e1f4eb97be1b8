"""The command line, run as a real subprocess."""

import json
import subprocess
import sys

import pytest

from tests.helpers import subprocess_env


def run(*args, env_extra=None, timeout=300):
    """The CLI of this tree, with none of the caller's engine settings (only ``env_extra``)."""
    env = {k: v for k, v in subprocess_env().items() if not k.startswith("SEGEARTH_") or k == "SEGEARTH_OFFLINE"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "segearth_backend", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_info_prints_what_was_loaded(tiny_paths, tmp_path):
    result = run("info", "--model", tiny_paths["model"], "--clip-weights", tiny_paths["clip_weights"],
                 "--upsampler-weights", tiny_paths["upsampler_weights"], "--device", "cpu",
                 "--cache-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["model"] == "tiny-clip" and info["upsampler"] == "SimFeatUp (JBU-One)"


def test_missing_weights_is_one_clear_line(tmp_path):
    result = run("info", "--upsampler-weights", "none", "--cache-dir", str(tmp_path),
                 env_extra={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert "error: The CLIP weights 'openai'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_bench_writes_a_report(tmp_path):
    out = tmp_path / "bench.json"
    result = run("bench", "--size", "64", "--repeats", "1", "--device", "cpu", "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    (entry,) = report["results"]
    assert entry["weights"] == "random" and entry["image"] == "64x64"
    assert entry["predict_cached_s"] > 0 and entry["embed_class_s"] > 0 and entry["peak_rss_gb"] > 0
    assert set(entry["stages_s"]) == {"text", "image_tower", "upsampler", "logits"}
    assert "predict s" in result.stdout
