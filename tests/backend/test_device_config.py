import dataclasses
from pathlib import Path

import pytest
import torch

from segearth_backend.config import EngineConfig, default_cache_dir, offline
from segearth_backend.device import autocast_dtype, resolve_device
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
