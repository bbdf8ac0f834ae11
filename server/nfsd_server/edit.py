"""An edit's source: the finished asset it starts from, read from its checkpoint, checked and kept frozen.

An edit job (``JobSpec.edit_of``) trains a copy of the source's field toward the new prompt with Delta Denoising
(``guidance.distillation.DeltaDenoising``) against a frozen copy rendered from the same cameras; the source's
checkpoint is only ever read.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from nfsd_contract import JobSpec
from nfsd_server.checkpoints import CheckpointError, checkpoint_sections, read_checkpoint, read_checkpoint_info
from nfsd_server.scene.encoding import HashGridConfig
from nfsd_server.scene.field import BACKGROUNDS, FieldConfig

# The pull back toward the source's silhouette per rendered pixel, at edit_strength 0 (× (1 − strength)):
# the squared opacity difference summed over a render's pixels, as the distillation loss sums its latent's.
# benchmarks/edit_dds.py: 1, 10 and 100 at strength 0 (volume IoU against the source 0.92, 0.94, 0.96).
EDIT_ANCHOR_WEIGHT = 100.0


class EditError(ValueError):
    """This asset cannot be edited (what to do instead is in the message)."""


@dataclass(frozen=True)
class EditSource:
    """A finished asset as its checkpoint holds it: what made it, its field and background, and the file's hash
    (an edit's resume must find the same source)."""

    path: Path
    spec: JobSpec
    field_config: FieldConfig
    background_kind: str
    sections: dict[str, dict[str, Tensor]]
    sha256: str


def read_edit_spec(path: Path | str) -> JobSpec:
    """What made the asset the checkpoint at ``path`` holds, checked as an edit's source from the checkpoint's
    header and index alone (a boundary asks this; the run reads the tensors, ``read_edit_source``)."""
    path = Path(path)
    return _checked_spec(read_checkpoint_info(path), checkpoint_sections(path), path)


def read_edit_source(path: Path | str) -> EditSource:
    """The checkpoint at ``path`` as an edit's source; CheckpointError or EditError saying what is wrong."""
    path = Path(path)
    sections, info = read_checkpoint(path)
    spec = _checked_spec(info, set(sections), path)
    field_config = dict(info["field_config"])
    field_config["grid"] = HashGridConfig(**field_config["grid"])
    with open(path, "rb") as file:
        sha256 = hashlib.file_digest(file, "sha256").hexdigest()
    return EditSource(path, spec, FieldConfig(**field_config), str(info.get("background_kind", "learned")), sections,
                      sha256)


def _checked_spec(info: dict[str, Any], sections: set[str], path: Path) -> JobSpec:
    try:
        spec = JobSpec.from_dict(info["settings"])
        field_config = dict(info["field_config"])
        FieldConfig(**{**field_config, "grid": HashGridConfig(**field_config["grid"])})
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be edited: it is damaged ({error})"[:500]) from None
    if spec.init_mesh is not None:
        what = "keeps the artist's mesh (texture mode): generate its texture again with another prompt" \
            if spec.keep_geometry else "was shaped by an artist's mesh: generate from that mesh again"
        raise EditError(f"the asset of {spec.prompt!r} {what}; edits start from text-made assets")
    if str(info.get("background_kind", "learned")) not in BACKGROUNDS or "field" not in sections:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be edited: it holds no field to start from")
    return spec


def edit_defaults(source: JobSpec, request: dict[str, Any]) -> dict[str, Any]:
    """``request`` (job field → value, None = the default) with what an edit inherits from its ``source`` (what
    made the asset) where the request says nothing: the prior and model (the edit asks the model that made it),
    the preset, and the source prompt (what the asset shows now)."""
    inherited = {"prior": source.prior, "model": source.model, "preset": source.preset,
                 "source_prompt": source.prompt}
    return request | {name: value for name, value in inherited.items() if request.get(name) is None}
