"""The values the add-on and the backend must agree on: names, defaults, limits, the port.

The job's fields themselves (with these as their defaults and limits) are listed once, in ``spec.py``.
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
# Training steps when a job names none; the engine's presets (nfsd_server.presets) hold the rest of each.
PRESET_STEPS = {"draft": 400, "standard": 5000, "high": 10000}
DEFAULT_PRESET = "standard"

PRIORS = ("stable-diffusion", "analytic")
DEFAULT_PRIOR = "stable-diffusion"
DEFAULT_MODEL = "stabilityai/stable-diffusion-2-1-base"
# Models that ship inside the backend (offline, no download), by short name → the model menu's line.
BUNDLED_MODEL_LABELS = {"micro": "Micro demo model (bundled, offline)"}

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

# An artist's own mesh to start from: formats read, and the limits checked before anything is loaded.
INIT_MESH_FORMATS = ("glb", "obj", "ply")
MAX_INIT_MESH_FACES = 500_000
MAX_INIT_MESH_BYTES = 50 * 1024 * 1024
# How strongly the mesh holds the shape, 0 (only the prompt) .. 1 (the mesh's shape, detail from the prompt).
DEFAULT_SHAPE_STRENGTH = 0.7

# An edit of a finished asset: how far it may move from its source, 0 (not at all) .. 1 (as far as the prompt pulls).
DEFAULT_EDIT_STRENGTH = 0.5
# An edit's steps when it names none: this share of its preset's (it starts from a finished asset).
EDIT_STEPS_FRACTION = 0.25

JOB_STATES = ("queued", "running", "exporting", "done", "failed", "cancelled")
FINISHED_STATES = frozenset({"done", "failed", "cancelled"})
