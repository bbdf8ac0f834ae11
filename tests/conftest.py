"""Shared test setup: isolate every per-user folder before anything (bpy, huggingface) reads it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Must happen at import, before any test module imports bpy or huggingface_hub.
_SANDBOX = Path(tempfile.mkdtemp(prefix="nfsd-tests-"))
for _name, _sub in {
    "HOME": "home",
    "XDG_CONFIG_HOME": "home/.config",
    "XDG_CACHE_HOME": "home/.cache",
    "XDG_DATA_HOME": "home/.local/share",
    "BLENDER_USER_RESOURCES": "blender",
    "HF_HOME": "huggingface",
}.items():
    (_SANDBOX / _sub).mkdir(parents=True, exist_ok=True)
    os.environ[_name] = str(_SANDBOX / _sub)
# No hub access here, ever: fail fast instead of waiting on the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


import pytest  # noqa: E402  (after the environment is isolated)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    """A tiny random Stable Diffusion saved as a diffusers folder, to load through the real from_pretrained."""
    from nfsd_server.guidance.random_models import save_random_stable_diffusion

    return save_random_stable_diffusion(tmp_path_factory.mktemp("tiny-sd") / "model", name="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_sd_prior(tiny_sd_dir):
    from nfsd_server.guidance.registry import load_prior

    return load_prior("stable-diffusion", str(tiny_sd_dir), "cpu")


@pytest.fixture
def quiet_compiler():
    """torch.compile from a clean cache, without its tracer's DEBUG records (pytest captures thousands of them
    per compile: slower, and noise in a failure's report)."""
    import logging

    import torch

    torch._dynamo.reset()
    tracer = logging.getLogger("torch")
    level = tracer.level
    tracer.setLevel(logging.WARNING)
    yield
    tracer.setLevel(level)
    torch._dynamo.reset()
