"""The contract between the Blender add-on and the backend: every value both sides must agree on.

Standard library only, and no bpy: the add-on imports it as ``from . import contract`` (it ships inside the
add-on zip) and the server as ``from nfsd_blender import contract`` (installed with the backend package).
Nothing here is typed anywhere else; ``tests/test_contract.py`` greps the tree to keep it that way.
"""

from __future__ import annotations

API_PREFIX = "/v1"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
TOKEN_ENV = "NFSD_TOKEN"

# NFSD's p_neg (Katzir et al. 2024, §4): the fixed negative prompt of the δ_D term for t ≥ 200.
NFSD_NEGATIVE_PROMPT = (
    "unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, low-resolution, gloomy"
)

METHODS = ("nfsd", "sds")
# Nominal classifier-free guidance: NFSD's s = 7.5; SDS needs s ≈ 100 to drown its noisy residual.
DEFAULT_GUIDANCE_SCALE = {"nfsd": 7.5, "sds": 100.0}
MAX_GUIDANCE_SCALE = 500.0

PRESETS = ("draft", "standard", "high")
DEFAULT_PRESET = "standard"

PRIORS = ("stable-diffusion", "analytic")
DEFAULT_PRIOR = "stable-diffusion"
DEFAULT_MODEL = "stabilityai/stable-diffusion-2-1-base"

# The UNet's precision (the server's dtype policy decides the rest): auto = fp16 on CUDA, fp32 elsewhere.
DTYPES = ("auto", "fp16", "bf16", "fp32")
DEFAULT_DTYPE = "auto"

# What encodes RGB renders into the latent space in the RGB phase (the latent phase needs none): the model's
# own VAE (exact, no extra download), or TAESD (diffusers AutoencoderTiny: ~100× cheaper, approximate latents,
# a ~10 MB download). "auto" is the preset's choice: TAESD where a step's cost matters most, the VAE for high.
ENCODERS = ("auto", "vae", "taesd")
DEFAULT_ENCODER = "auto"
PRESET_ENCODERS = {"draft": "taesd", "standard": "taesd", "high": "vae"}
TAESD_DOWNLOAD_BYTES = 9_800_000  # madebyollin/taesd: AutoencoderTiny, 2.45M fp32 parameters (the add-on says so before a job)

TEXTURE_SIZES = (512, 1024, 2048)
DEFAULT_TEXTURE_SIZE = 1024

MIN_POLY_BUDGET = 100
MAX_POLY_BUDGET = 500_000
DEFAULT_POLY_BUDGET = 20_000

MAX_STEPS = 100_000
MAX_SEED = 2**31 - 1
MAX_PROMPT_CHARS = 1000
MAX_MODEL_CHARS = 4096

# An artist's own mesh to start from (issue 17): formats read, and the limits checked before anything is loaded.
INIT_MESH_FORMATS = ("glb", "obj", "ply")
MAX_INIT_MESH_FACES = 500_000
MAX_INIT_MESH_BYTES = 50 * 1024 * 1024
# How strongly the mesh holds the shape, 0 (only the prompt) .. 1 (the mesh's shape, detail from the prompt).
DEFAULT_SHAPE_STRENGTH = 0.7

JOB_STATES = ("queued", "running", "exporting", "done", "failed", "cancelled")
FINISHED_STATES = frozenset({"done", "failed", "cancelled"})

# The body of POST /v1/jobs, in order; ``job_request`` is the only place a client builds one.
REQUEST_FIELDS = (
    "prompt", "negative_prompt", "method", "guidance_scale", "seed", "steps", "preset",
    "poly_budget", "texture_size", "prior", "model", "dtype", "encoder", "init_mesh", "shape_strength",
    "keep_geometry",
)


def job_request(
    prompt: str,
    *,
    negative_prompt: str = NFSD_NEGATIVE_PROMPT,
    method: str = "nfsd",
    guidance_scale: float | None = None,
    seed: int | None = None,
    steps: int | None = None,
    preset: str = DEFAULT_PRESET,
    poly_budget: int = DEFAULT_POLY_BUDGET,
    texture_size: int = DEFAULT_TEXTURE_SIZE,
    prior: str | None = None,
    model: str | None = None,
    dtype: str = DEFAULT_DTYPE,
    encoder: str = DEFAULT_ENCODER,
    init_mesh: str | None = None,
    shape_strength: float | None = None,
    keep_geometry: bool = False,
) -> dict:
    """The JSON body of ``POST /v1/jobs``. ``None`` (and 0 steps, an empty model) mean "the server's default".

    Values are normalised the way the server reads them (lower-case method, int texture size) but not
    range-checked: the server answers 422 with the field's name, which the add-on shows as it is.
    """
    return {
        "prompt": prompt.strip(),
        "negative_prompt": negative_prompt,
        "method": method.lower(),
        "guidance_scale": float(guidance_scale) if guidance_scale else None,
        "seed": None if seed is None else int(seed),
        "steps": int(steps) if steps else None,
        "preset": preset,
        "poly_budget": int(poly_budget),
        "texture_size": int(texture_size),
        "prior": prior or None,
        "model": model or None,
        "dtype": dtype,
        "encoder": encoder,
        "init_mesh": init_mesh or None,  # an id from POST /v1/meshes
        "shape_strength": None if shape_strength is None else float(shape_strength),
        "keep_geometry": bool(keep_geometry),
    }
