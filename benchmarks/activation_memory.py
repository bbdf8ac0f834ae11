"""Activation memory of one training step at real scale on CPU: what autograd keeps for the backward.

    .venv/bin/python benchmarks/activation_memory.py [--threads N]

Per step, the bytes autograd saves for the backward and the peak RSS, for the NeRF render at the standard and
high presets (occupancy-pruned sampler as trained, and every sample as the worst case; the high preset's
stratified case is projected from the standard one's bytes per sample, ~8.4 M samples do not fit) and for SD
2.1-base's VAE encoder at 512 px in fp32 (random weights: memory does not depend on them).
"""

from __future__ import annotations

import argparse

import psutil
import torch

from nfsd_server.presets import PRESETS
from nfsd_server.scene.cameras import sample_orbit_cameras
from nfsd_server.scene.renderer import RendererConfig


class SavedTensors:
    """Bytes autograd keeps for the backward (activations; parameters excluded), counted once per storage."""

    def __init__(self, parameters):
        self.parameters = {p.untyped_storage().data_ptr() for p in parameters}
        self.storages: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.parameters:
            self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def total(self) -> int:
        return sum(self.storages.values())


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 5 ms on a thread."""

    def __enter__(self):
        import threading

        self.base = self.peak = psutil.Process().memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        process = psutil.Process()
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, psutil.Process().memory_info().rss)

    @property
    def delta(self) -> int:
        return self.peak - self.base


def nerf_activation_memory(preset_name: str, renderer_kind: str) -> tuple[int, int, float]:
    """One NeRF step at the preset's real scale on CPU (largest render side, lit): render → a stand-in
    image gradient → backward. Returns (bytes saved for the backward, peak RSS above the start, fraction of
    samples the field evaluated). The prior's part (VAE encoder, UNet) is measured separately."""
    from nfsd_server.scene.cameras import camera_rays
    from nfsd_server.scene.field import FieldConfig, LearnedBackground, NeRFField
    from nfsd_server.scene.renderer import OccupancyGridRenderer, StratifiedRenderer

    preset = PRESETS[preset_name]
    side = max(s for _, s in preset.resolution_schedule)
    generator = torch.Generator().manual_seed(0)
    field = NeRFField(FieldConfig(grid=preset.grid, hidden_dim=preset.hidden_dim))
    background = LearnedBackground()
    renderer_config = RendererConfig(n_samples=preset.n_samples)
    renderer = OccupancyGridRenderer(renderer_config) if renderer_kind == "occupancy" else StratifiedRenderer(renderer_config)
    renderer.update(0, field)  # the starting blob's grid
    seen = [0]
    forward = field.forward

    def counting_forward(points):
        seen[0] += points.shape[0]
        return forward(points)

    field.forward = counting_forward
    cameras = sample_orbit_cameras(preset.batch_size, generator)
    origins, directions = camera_rays(cameras, side, side)
    saved = SavedTensors([*field.parameters(), *background.parameters()])
    with PeakRSS() as rss:
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda tensor: tensor):
            render = renderer(field, background, origins, directions, "diffuse", cameras.light_dir, generator)
        render.rgb.backward(torch.randn(render.rgb.shape, generator=generator))
    return saved.total, rss.delta, seen[0] / (origins.shape[0] * side * side * preset.n_samples)


def vae_encoder_activation_memory(side: int = 512) -> tuple[int, int]:
    """SD 2.1-base's VAE encoder (random weights, fp32 as the dtype policy runs it) on one side² image:
    (bytes saved for the backward, peak RSS above the start)."""
    from diffusers import AutoencoderKL

    from nfsd_server.guidance.random_models import CONFIGS

    vae = AutoencoderKL(**CONFIGS["sd21-base"]["vae"]).requires_grad_(False)
    images = torch.rand(1, 3, side, side, requires_grad=True)
    saved = SavedTensors(vae.parameters())
    with PeakRSS() as rss:
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda tensor: tensor):
            latents = vae.encode(images).latent_dist.mean
        latents.backward(torch.randn_like(latents))
    return saved.total, rss.delta


def report_activation_memory() -> None:
    """Peak activation memory per step on CPU at real scale, standard and high presets."""
    gib = 2**30
    print(f"activation memory per step, CPU, real scale (batch 1, largest render side, lit), {torch.get_num_threads()} threads")
    print(f"{'preset':9}{'sampler':12}{'render':>8}{'samples':>12}{'evaluated':>10}{'saved for backward':>20}{'peak RSS':>10}")
    per_sample = None
    for preset_name in ("standard", "high"):
        preset = PRESETS[preset_name]
        side = max(s for _, s in preset.resolution_schedule)
        samples = side * side * preset.n_samples
        for kind in ("occupancy", "stratified"):
            if kind == "stratified" and preset_name == "high":  # ~8.4M samples: projected, not run (RAM)
                print(f"{preset_name:9}{kind:12}{side:>6}px{samples:>12,}{'100%':>10}"
                      f"{per_sample * samples / gib:>17.2f} GiB{'(projected)':>12}")
                continue
            saved, rss, evaluated = nerf_activation_memory(preset_name, kind)
            if kind == "stratified":
                per_sample = saved / samples
            print(f"{preset_name:9}{kind:12}{side:>6}px{samples:>12,}{evaluated:>10.0%}{saved / gib:>17.2f} GiB"
                  f"{rss / gib:>6.2f} GiB")
    saved, rss = vae_encoder_activation_memory()
    print(f"VAE encoder (SD 2.1-base, fp32, 512 px): saved for backward {saved / gib:.2f} GiB, peak RSS {rss / gib:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report_activation_memory()


if __name__ == "__main__":
    main()
