"""NFSD backend: prompt → NeRF optimised with Noise-Free Score Distillation → textured GLB."""

__version__ = "0.1.0"
