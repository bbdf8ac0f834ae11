"""Checkpoints as data, not code: one safetensors file (tensors) whose header carries JSON (everything else).

Nothing here unpickles: a checkpoint cannot run code when it is read. Layout of a file:

- tensors, named by section: ``field.<name>``, ``background.<name>``, ``renderer.<name>``,
  ``optimizer.<param index>.<state key>``, ``generator`` (the job RNG state, uint8);
- header metadata ``{"nfsd_checkpoint": "<JSON>"}`` with ``format``, ``step``, the configs, the GLB metadata and
  the optimizer's param groups plus any non-tensor per-parameter state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_tensors
from torch import Tensor

from nfsd_server.files import write_atomic

FORMAT = 2  # 1 was a torch pickle (no longer read: unpickling can run code)
HEADER_KEY = "nfsd_checkpoint"
LEGACY_NAME = "checkpoint.pt"


class CheckpointError(ValueError):
    """The file is not a checkpoint this version can read; the message names the file and what to do."""


def flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An optimizer ``state_dict`` → (tensors named ``<param>.<key>``, the JSON-able rest)."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state_dict["state"].items():
        for key, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, Tensor], structure: dict[str, Any]) -> dict[str, Any]:
    """Inverse of ``flatten_optimizer``; tuples (Adam's betas) come back as tuples."""
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    for index, values in structure["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = [
        {key: tuple(value) if key == "betas" else value for key, value in group.items()}
        for group in structure["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def write_checkpoint(path: Path, sections: dict[str, dict[str, Tensor]], info: dict[str, Any]) -> None:
    """Atomically write ``sections`` (name → tensors; "" for a bare tensor name) and ``info`` (JSON-able)."""
    tensors: dict[str, Tensor] = {}
    for section, values in sections.items():
        for name, tensor in values.items():
            key = f"{section}.{name}" if name else section
            tensors[key] = tensor.detach().to("cpu").contiguous()
    header = json.dumps({**info, "format": FORMAT}, allow_nan=False)
    write_atomic(path, save_tensors(tensors, metadata={HEADER_KEY: header}))


def read_checkpoint_info(path: Path) -> dict[str, Any]:
    """The JSON part only (cheap: no tensor is read). CheckpointError for anything but our format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not exist" if not path.exists()
            else f"checkpoint {str(path)!r} is a folder, not a file; pass the checkpoint file a run wrote"
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = (handle.metadata() or {}).get(HEADER_KEY)
    except (SafetensorError, OSError, UnicodeDecodeError) as error:
        raise CheckpointError(_not_ours(path, " ".join(str(error).split())[:200])) from None
    if header is None:
        raise CheckpointError(_not_ours(path, "a safetensors file without nfsd metadata"))
    try:
        info = json.loads(header)
    except json.JSONDecodeError as error:
        raise CheckpointError(_not_ours(path, f"its metadata is not JSON ({error})")) from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        found = info.get("format") if isinstance(info, dict) else None
        raise CheckpointError(_not_ours(path, f"format {found!r}, this version reads format {FORMAT}"))
    return info


def checkpoint_sections(path: Path) -> set[str]:
    """The sections a checkpoint holds, from its index alone (no tensor is read)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {key.partition(".")[0] for key in handle.keys()}  # noqa: SIM118 (a safetensors handle)
    except (SafetensorError, OSError) as error:
        raise CheckpointError(_not_ours(Path(path), " ".join(str(error).split())[:200])) from None


def read_checkpoint(path: Path) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any]]:
    """(section → name → tensor on CPU, info). CheckpointError for anything but our format."""
    info = read_checkpoint_info(path)
    sections: dict[str, dict[str, Tensor]] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for key in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                section, _, name = key.partition(".")
                sections.setdefault(section, {})[name] = handle.get_tensor(key)
    except (SafetensorError, OSError) as error:
        raise CheckpointError(_not_ours(path, " ".join(str(error).split())[:200])) from None
    return sections, info


def _not_ours(path: Path, why: str) -> str:
    legacy = " (checkpoints from older versions were pickles and are not loaded: retrain)" if path.suffix == ".pt" else ""
    return f"checkpoint {str(path)!r} is not an nfsd checkpoint: {why}{legacy}"
