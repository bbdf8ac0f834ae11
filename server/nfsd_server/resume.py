"""What a checkpoint means for a job: whether a resume fits it, the init mesh it was trained on, and its field
for a re-export without retraining. (The file format itself is ``checkpoints.py``'s.)"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nfsd_contract import JobSpec
from nfsd_contract import info as field_info
from nfsd_server.checkpoints import CheckpointError, read_checkpoint
from nfsd_server.scene.encoding import HashGridConfig
from nfsd_server.scene.field import FieldConfig, NeRFField
from nfsd_server.scene.mesh_files import mesh_sha256


def check_checkpoint_matches(
    info: dict[str, Any], spec: JobSpec, path: Path, init_mesh_path: Path | None = None,
    init_mesh_sha256: str | None = None,
) -> None:
    """CheckpointError unless the checkpoint was trained with the fields that decide the result
    (``FieldInfo.decides_result``; steps, encoder, dtype and the export's settings may change).

    The init mesh is compared by content, not path (an upload, a copy): ``init_mesh_path`` is its file (None →
    ``spec.init_mesh``), ``init_mesh_sha256`` its hash when the caller has it already (the trainer does)."""
    saved = info.get("settings")
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} has no training settings; start a new run")

    def refuse(key: str, saved_value: Any, value: Any) -> None:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was trained with {key}={saved_value!r}, not {value!r}; "
            "resume with the same settings or start a new run"
        )

    differences = spec.differences(saved)
    for key, saved_value, value in differences:
        if not field_info(key).init_mesh_only:
            refuse(key, saved_value, value)
    # No hash: the checkpoint had no init mesh, or it is from before hashes were recorded (then it cannot be
    # matched to one).
    mesh_file = (init_mesh_path or Path(spec.init_mesh)) if spec.init_mesh else None
    saved_mesh, saved_sha256 = saved.get("init_mesh"), info.get("init_mesh_sha256")
    sha256 = (init_mesh_sha256 or mesh_sha256(mesh_file)) if mesh_file else None
    if (saved_mesh is None) != (spec.init_mesh is None) or saved_sha256 != sha256:
        refuse("init_mesh", _describe_mesh(saved_mesh, saved_sha256), _describe_mesh(spec.init_mesh, sha256))
    for key, saved_value, value in differences:  # what shapes a run only through its mesh
        refuse(key, saved_value, value)


def _describe_mesh(path: str | None, sha256: str | None) -> str | None:
    """'cube.ply (sha256 0123456789ab)' for a message; None without an init mesh."""
    if path is None:
        return None
    return f"{Path(path).name} ({f'sha256 {sha256[:12]}' if sha256 else 'content not recorded'})"


@dataclass(frozen=True)
class CheckpointMesh:
    """The init mesh a checkpoint was trained on: its path then, its content hash (None if not recorded), mode."""

    path: Path
    sha256: str | None
    keep_geometry: bool


def checkpoint_init_mesh(path: Path) -> CheckpointMesh | None:
    """The checkpoint's init mesh (what ``nfsd export`` places and bakes the result on), or None without one."""
    _, info = read_checkpoint(path)
    settings = info.get("settings") or {}
    if not settings.get("init_mesh"):
        return None
    # The file it read: a server job's spec names its mesh by upload id, the checkpoint by path too.
    mesh_file = info.get("init_mesh_path") or settings["init_mesh"]
    return CheckpointMesh(Path(mesh_file), info.get("init_mesh_sha256"), bool(settings.get("keep_geometry")))


def load_checkpoint(path: Path) -> tuple[NeRFField, dict[str, Any]]:
    """(NeRF field on CPU in eval mode, GLB metadata) from a checkpoint, for re-export without retraining."""
    sections, info = read_checkpoint(path)
    try:
        field_config = dict(info["field_config"])
        field_config["grid"] = HashGridConfig(**field_config["grid"])
        nerf = NeRFField(FieldConfig(**field_config))
        nerf.load_state_dict(sections["field"])
        metadata = dict(info["metadata"])
    except KeyError as error:  # str(KeyError) is only the quoted key: say what it is
        what = "tensors" if error.args and error.args[0] == "field" else "entry"
        raise CheckpointError(
            f"checkpoint {str(path)!r} is damaged: it has no {error.args[0]!r} {what}; "
            "export from another checkpoint of the run or train again"
        ) from None
    except (RuntimeError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {str(path)!r} is damaged: {error}"[:500]) from None
    return nerf.eval(), metadata
