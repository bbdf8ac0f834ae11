"""NFSD backend: prompt → NeRF optimised with Noise-Free Score Distillation → textured GLB."""

__version__ = "0.1.0"

NFSD_NEGATIVE_PROMPT = (
    "unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, low-resolution, gloomy"
)
