import dataclasses
from pathlib import Path

import pytest
import torch

from segearth_backend.config import EngineConfig, default_cache_dir, offline
from segearth_backend.device import autocast_dtype, cpu_capabilities, cpu_precision, resolve_device
from segearth_backend.errors import DeviceError


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert autocast_dtype(torch.device("cpu")) is None  # the CPU always runs float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_unknown_device():
    with pytest.raises(DeviceError, match="Unknown device 'tpu'"):
        resolve_device("tpu")


def test_environment_then_overrides():
    env = {"SEGEARTH_MODEL": "m.json", "SEGEARTH_DEVICE": "cpu", "SEGEARTH_CACHE_DIR": "/tmp/x",
           "SEGEARTH_UPSAMPLER_WEIGHTS": "none"}
    config = EngineConfig.from_env(env, device=None, clip_weights="w.pt")
    assert (config.model, config.device) == ("m.json", "cpu")
    assert (config.clip_weights, config.upsampler_weights) == ("w.pt", "none")
    assert config.cache_dir == Path("/tmp/x")
    assert EngineConfig.from_env(env, device="cuda").device == "cuda"
    with pytest.raises(dataclasses.FrozenInstanceError, match="device"):
        config.device = "cpu"  # frozen: one validated configuration


def test_defaults_and_offline_flags():
    config = EngineConfig.from_env({"HOME": "/home/u", "XDG_CACHE_HOME": "/c"})
    assert (config.model, config.clip_weights, config.upsampler_weights) == ("clip-vit-b16", "auto", "auto")
    assert default_cache_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/segearth-ov")
    assert offline({"SEGEARTH_OFFLINE": "1"}) and offline({"HF_HUB_OFFLINE": "true"}) and not offline({})
    with pytest.raises(ValueError, match="batch_size"):
        EngineConfig(batch_size=0)


def _cpuinfo(tmp_path: Path, flags: str) -> str:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Test Xeon\nflags\t\t: {flags}\n", encoding="utf-8")
    return str(path)


def test_bfloat16_falls_back_to_float32_on_a_cpu_without_bf16_instructions(tmp_path):
    slow = cpu_capabilities(_cpuinfo(tmp_path, "fpu sse avx2 avx512f"))
    precision, note = cpu_precision("bf16", slow)
    assert precision == "fp32" and "Test Xeon" in note and "float32" in note
    fast = cpu_capabilities(_cpuinfo(tmp_path, "fpu avx512f avx512_bf16"))
    assert cpu_precision("bf16", fast) == ("bf16", "")
    assert cpu_precision("fp32", slow) == ("fp32", "")
    unknown = cpu_capabilities(str(tmp_path / "no-such-cpuinfo"))
    assert unknown["flags_known"] is False and cpu_precision("bf16", unknown) == ("bf16", "")


def test_a_segmenter_asked_for_bfloat16_on_such_a_cpu_runs_float32_and_says_why(tmp_path, tiny_segmenter,
                                                                                   monkeypatch, caplog):
    from segearth_backend.pipeline import segmenter as segmenter_module

    no_bf16 = cpu_capabilities(_cpuinfo(tmp_path, "fpu avx2 avx512f"))
    monkeypatch.setattr(segmenter_module, "cpu_capabilities", lambda: no_bf16)
    with caplog.at_level("WARNING"):
        engine = segmenter_module.Segmenter(tiny_segmenter.clip, tiny_segmenter.upsampler, torch.device("cpu"),
                                            precision="bf16", feature_cache_mb=0)
    info = engine.describe()
    assert engine.cast is None and info["precision"] == "float32"
    assert "neither AVX512-BF16 nor AMX-BF16" in str(info["precision_note"])
    assert any("running float32" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("owns_model", [True, False])
def test_a_bfloat16_cpu_tower_keeps_no_float32_copy_when_the_engine_owns_the_model(tmp_path, tiny_paths,
                                                                                    monkeypatch, owns_model):
    from segearth_backend.model.clip_loader import load_clip
    from segearth_backend.pipeline import segmenter as segmenter_module

    fast = cpu_capabilities(_cpuinfo(tmp_path, "fpu avx512f avx512_bf16"))
    monkeypatch.setattr(segmenter_module, "cpu_capabilities", lambda: fast)
    clip = load_clip(tiny_paths["model"], tiny_paths["clip_weights"], tmp_path)
    engine = segmenter_module.Segmenter(clip, None, torch.device("cpu"), precision="bf16", feature_cache_mb=0,
                                        owns_model=owns_model)
    assert {p.dtype for p in engine.visual.parameters()} == {torch.bfloat16}
    assert (engine.visual is clip.model.visual) == owns_model  # owned: cast in place, nothing kept beside it
    tower_dtypes = {p.dtype for p in clip.model.visual.parameters()}
    assert tower_dtypes == ({torch.bfloat16} if owns_model else {torch.float32})
    assert {p.dtype for p in clip.model.transformer.parameters()} == {torch.float32}  # the text tower stays float32
    image = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (64, 64, 3), generator=image, dtype=torch.uint8).numpy()
    assert engine.predict(pixels, ["water", "road"]).labels.shape == (64, 64)


def test_the_bfloat16_mode_runs_the_upsampler_kernels_fixup_in_bfloat16(tmp_path, tiny_paths, monkeypatch):
    """bf16 on a CPU with bfloat16 instructions: the composite kernels' fixup matrix products run in
    bfloat16 (several times faster there); float32 keeps them float32."""
    from segearth_backend.pipeline import segmenter as segmenter_module
    from segearth_backend.pipeline.segmenter import load_segmenter
    from segearth_backend.upsampler.jbu import JointBilateralStep

    fast = cpu_capabilities(_cpuinfo(tmp_path, "fpu avx512f avx512_bf16"))
    monkeypatch.setattr(segmenter_module, "cpu_capabilities", lambda: fast)
    seen: list = []
    finish = JointBilateralStep.finish

    def recording_finish(self, fixup_input, compute_dtype=None):
        seen.append(compute_dtype)
        return finish(self, fixup_input, compute_dtype)

    monkeypatch.setattr(JointBilateralStep, "finish", recording_finish)
    pixels = torch.randint(0, 256, (96, 96, 3), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8).numpy()
    for precision, expected in (("bf16", torch.bfloat16), ("fp32", None)):
        seen.clear()
        engine = load_segmenter(model=tiny_paths["model"], clip_weights=tiny_paths["clip_weights"],
                                upsampler_weights=tiny_paths["upsampler_weights"], device="cpu",
                                precision=precision, feature_cache_mb=0, cache_dir=tmp_path)
        assert engine.predict(pixels, ["water", "road"]).labels.shape == (96, 96)
        assert seen and set(seen) == {expected}
