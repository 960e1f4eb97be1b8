"""The command line, run as a real subprocess."""

import json
import subprocess
import sys
import time

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


def test_check_weights_loads_the_files_keys_against_the_model(tiny_paths, tmp_path):
    """Exit 0 when the files fit the model, 4 (with the keys that do not fit) when they are another model's."""
    weights = ("--clip-weights", tiny_paths["clip_weights"], "--upsampler-weights", tiny_paths["upsampler_weights"],
               "--cache-dir", str(tmp_path))
    fits = run("check-weights", "--model", tiny_paths["model"], *weights)
    assert fits.returncode == 0 and "present and fit the model" in fits.stdout, fits.stderr
    other = run("check-weights", "--model", "clip-vit-b16", *weights)
    assert other.returncode == 4 and "Traceback" not in other.stderr
    assert "do not fit the model" in other.stdout and "missing keys" in other.stdout
    assert "ln_final.weight (64,) instead of (512,)" in other.stdout and "clip-vit-b16" in other.stdout


def test_missing_weights_offline_fail_at_once_naming_every_file(tmp_path):
    start = time.monotonic()
    result = run("info", "--cache-dir", str(tmp_path), "--device", "cpu", env_extra={"SEGEARTH_OFFLINE": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert time.monotonic() - start < 60  # no download retries (they took 50 s before)
    assert "These weight files are missing" in result.stderr and "offline mode" in result.stderr
    assert "open_clip_pytorch_model.bin" in result.stderr  # the CLIP weights, with where to get them
    assert str(tmp_path / "simfeatup" / "xclip_jbu_one_million_aid.ckpt") in result.stderr  # and where it goes
    assert "--clip-weights" in result.stderr and "Weights" in result.stderr


def test_missing_weight_files_are_all_named(tmp_path):
    result = run("info", "--clip-weights", str(tmp_path / "clip.pt"), "--upsampler-weights",
                 str(tmp_path / "up.ckpt"), "--cache-dir", str(tmp_path), "--device", "cpu")
    assert result.returncode == 2
    assert str(tmp_path / "clip.pt") in result.stderr and str(tmp_path / "up.ckpt") in result.stderr


def test_unreachable_download_servers_fail_fast(tmp_path):
    """Without the offline flag, one short probe (not minutes of retries) finds that nothing can be downloaded."""
    from segearth_backend.model.weights_check import hosts_reachable

    if hosts_reachable(["https://huggingface.co", "https://github.com"]):
        pytest.skip("this machine can reach the download servers (the download would really start)")
    start = time.monotonic()
    env = {"SEGEARTH_OFFLINE": "", "HF_HUB_OFFLINE": ""}
    result = run("info", "--cache-dir", str(tmp_path), "--device", "cpu", env_extra=env)
    assert result.returncode == 2 and "cannot be reached" in result.stderr
    assert time.monotonic() - start < 60


@pytest.mark.slow
def test_bench_writes_a_report(tmp_path):
    out = tmp_path / "bench.json"
    result = run("bench", "--size", "64", "--repeats", "1", "--device", "cpu", "--out", str(out),
                 "--sample", str(tmp_path / "no-sample.tif"))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    (entry,) = report["results"]
    assert entry["weights"] == "random" and entry["image"] == "64x64" and report["cpu"]["model"]
    assert entry["first_run_s"] > 0 and entry["plain_tower_s"] > 0 and entry["embed_class_s"] > 0
    assert entry["first_run_vs_tower"] == pytest.approx(entry["first_run_s"] / entry["plain_tower_s"], rel=0.01)
    assert entry["requery_vs_fresh_engine"] == {"max_abs_dp": pytest.approx(0, abs=1e-5), "labels_equal": 1.0}
    assert set(entry["first_run_stages_s"]) == {"text", "image_tower", "upsampler", "logits", "total"}
    assert "image_tower" not in entry["requery_stages_s"] and entry["bf16_speedup"] > 0
    assert "CPU:" in result.stdout and "re-query" in result.stdout and "sample" in result.stdout
