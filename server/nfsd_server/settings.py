"""One validated description of a generation job, built once at the boundary and passed down unchanged.

The CLI (``nfsd generate``) and the server (``POST /v1/jobs``) both call ``resolve_settings``; the trainer,
the exporter and the GLB metadata read the resulting ``GenerationSettings`` as it is. Every range check of a
job setting lives here (the HTTP schema declares the same limits from ``nfsd_blender.contract`` so clients
can read them, but the values are checked here).
"""

from __future__ import annotations

import secrets
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nfsd_blender import contract
from nfsd_server import __version__
from nfsd_server.presets import CONCRETE_ENCODERS, PRESETS


def check_poly_budget(poly_budget: int) -> None:
    if not contract.MIN_POLY_BUDGET <= poly_budget <= contract.MAX_POLY_BUDGET:
        raise ValueError(
            f"poly_budget must be {contract.MIN_POLY_BUDGET}..{contract.MAX_POLY_BUDGET} faces, got {poly_budget}"
        )


def check_texture_size(texture_size: int) -> None:
    if texture_size not in contract.TEXTURE_SIZES:
        raise ValueError(f"texture_size must be one of {contract.TEXTURE_SIZES}, got {texture_size}")


def check_text(value: str, name: str) -> None:
    if len(value) > contract.MAX_PROMPT_CHARS:
        raise ValueError(f"{name} is {len(value)} characters; the limit is {contract.MAX_PROMPT_CHARS}")
    bad = next((char for char in value if unicodedata.category(char) == "Cc"), None)
    if bad is not None:
        raise ValueError(f"{name} contains the control character {bad!r}; use plain text on one line")


def check_visible(value: str, name: str) -> None:
    # Letters, numbers, punctuation or symbols: spaces and zero-width characters alone describe nothing.
    if not any(unicodedata.category(char)[0] in "LNPS" for char in value):
        raise ValueError(f'{name} is empty (no visible characters); describe the object, e.g. "a red ball"')


def check_init_mesh(init_mesh: str | None, shape_strength: float, keep_geometry: bool) -> None:
    if not 0.0 <= shape_strength <= 1.0:
        raise ValueError(f"shape_strength must be in 0..1 (0: only the prompt, 1: the mesh's shape), got {shape_strength}")
    if init_mesh is None:
        if keep_geometry:
            raise ValueError("keep_geometry needs an init_mesh: the geometry to keep and texture")
        return
    path = Path(init_mesh)
    if path.suffix.lower().lstrip(".") not in contract.INIT_MESH_FORMATS:
        raise ValueError(f"init_mesh {init_mesh!r} must be one of {contract.INIT_MESH_FORMATS} (by its extension)")
    if not path.is_file():
        raise ValueError(f"init_mesh {init_mesh!r} does not exist; pass a GLB, OBJ or PLY file")


@dataclass(frozen=True)
class GenerationSettings:
    """What the artist asked for, every default resolved: exactly what runs and what the GLB records."""

    prompt: str
    negative_prompt: str
    method: str
    guidance_scale: float
    seed: int
    steps: int
    preset: str
    poly_budget: int
    texture_size: int
    prior: str
    model: str | None
    dtype: str  # the UNet's precision; the server's dtype policy resolves "auto" per device
    # Start from the artist's mesh (issue 17): a GLB/OBJ/PLY file; its contents are checked by
    # ``scene.init_mesh.load_mesh`` at the boundary (CLI, upload), which is too slow to repeat here.
    init_mesh: str | None = None
    shape_strength: float = contract.DEFAULT_SHAPE_STRENGTH
    keep_geometry: bool = False  # texture mode: the mesh's own vertices and faces, only colour is generated
    encoder: str = "vae"  # RGB-phase encoder, resolved: the model's VAE (the analytic prior's own) or TAESD
    # Perp-Neg view negatives against multi-faced (Janus) objects; guidance/distillation.py, benchmarks/arena.py.
    janus_guard: bool = False

    def __post_init__(self) -> None:
        check_visible(self.prompt, "the prompt")
        check_text(self.prompt, "prompt")
        check_text(self.negative_prompt, "negative_prompt")
        if self.method not in contract.METHODS:
            raise ValueError(f"method must be one of {contract.METHODS}, got {self.method!r}")
        if not 0 < self.guidance_scale <= contract.MAX_GUIDANCE_SCALE:
            raise ValueError(
                f"guidance_scale must be > 0 and ≤ {contract.MAX_GUIDANCE_SCALE:g}, got {self.guidance_scale}"
            )
        if not 0 <= self.seed <= contract.MAX_SEED:
            raise ValueError(f"seed must be in 0..{contract.MAX_SEED}, got {self.seed}")
        if not 1 <= self.steps <= contract.MAX_STEPS:
            raise ValueError(f"steps must be a positive integer ≤ {contract.MAX_STEPS}, got {self.steps}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {self.preset!r}")
        check_poly_budget(self.poly_budget)
        check_texture_size(self.texture_size)
        if self.prior not in contract.PRIORS:
            raise ValueError(f"prior must be one of {contract.PRIORS}, got {self.prior!r}")
        if self.dtype not in contract.DTYPES:
            raise ValueError(f"dtype must be one of {contract.DTYPES}, got {self.dtype!r}")
        check_init_mesh(self.init_mesh, self.shape_strength, self.keep_geometry)
        if self.encoder not in CONCRETE_ENCODERS:  # "auto" is resolved by resolve_settings
            raise ValueError(f"encoder must be one of {CONCRETE_ENCODERS}, got {self.encoder!r}")
        if self.prior == "analytic" and self.encoder != "vae":
            raise ValueError(
                f"the analytic prior has one fixed encoder, not {self.encoder!r}; use encoder vae (or a Stable Diffusion model)"
            )

    def metadata(self) -> dict[str, Any]:
        """What the GLB carries in its extras, so an artist can reproduce the asset.

        The init-mesh settings only when there was one, and then the file's name, not a path on the server.
        """
        values = asdict(self)
        if self.init_mesh is None:
            for key in ("init_mesh", "shape_strength", "keep_geometry"):
                del values[key]
        else:
            values["init_mesh"] = Path(self.init_mesh).name
        return {**values, "software": f"nfsd_server {__version__}"}


def resolve_settings(
    prompt: str,
    *,
    negative_prompt: str = contract.NFSD_NEGATIVE_PROMPT,
    method: str = "nfsd",
    guidance_scale: float | None = None,
    seed: int | None = None,
    steps: int | None = None,
    preset: str = contract.DEFAULT_PRESET,
    poly_budget: int = contract.DEFAULT_POLY_BUDGET,
    texture_size: int = contract.DEFAULT_TEXTURE_SIZE,
    prior: str | None = None,
    model: str | None = None,
    dtype: str = contract.DEFAULT_DTYPE,
    init_mesh: str | None = None,
    shape_strength: float | None = None,
    keep_geometry: bool = False,
    encoder: str = contract.DEFAULT_ENCODER,
    default_prior: str = "analytic",
    janus_guard: bool = False,
    default_model: str | None = None,
) -> GenerationSettings:
    """Fill every ``None`` with its default (the only place defaults are chosen) and validate.

    prior None → ``default_prior``, or stable-diffusion when a model is named. model None → ``default_model``
    for stable-diffusion (the analytic prior takes none). seed None → a random one, recorded so it can be reused.
    encoder "auto" → the preset's (``Preset.encoder``), or the analytic prior's one fixed encoder ("vae").
    Raises ValueError naming the bad setting.
    """
    prior = prior or ("stable-diffusion" if model else default_prior)
    if prior == "stable-diffusion":
        model = model or default_model
    if preset not in PRESETS:  # checked again in __post_init__, but needed here to look up the preset's steps
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}")
    if method not in contract.DEFAULT_GUIDANCE_SCALE:
        raise ValueError(f"method must be one of {contract.METHODS}, got {method!r}")
    if encoder not in contract.ENCODERS:
        raise ValueError(f"encoder must be one of {contract.ENCODERS}, got {encoder!r}")
    if encoder == "auto":
        encoder = "vae" if prior == "analytic" else PRESETS[preset].encoder
    return GenerationSettings(
        prompt=prompt.strip(),
        negative_prompt=negative_prompt,
        method=method,
        guidance_scale=contract.DEFAULT_GUIDANCE_SCALE[method] if guidance_scale is None else float(guidance_scale),
        seed=secrets.randbelow(contract.MAX_SEED + 1) if seed is None else seed,
        steps=PRESETS[preset].steps if steps is None else steps,
        preset=preset,
        poly_budget=poly_budget,
        texture_size=texture_size,
        prior=prior,
        model=model if prior == "stable-diffusion" else None,
        dtype=dtype,
        init_mesh=None if init_mesh is None else str(init_mesh),
        shape_strength=contract.DEFAULT_SHAPE_STRENGTH if shape_strength is None else float(shape_strength),
        keep_geometry=bool(keep_geometry),
        encoder=encoder,
        janus_guard=bool(janus_guard),
    )
