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
