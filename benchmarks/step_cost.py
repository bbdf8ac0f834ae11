"""What one training step costs, stage by stage, for NFSD and SDS on the same prior.

    .venv/bin/python benchmarks/step_cost.py                              # tiny random SD, draft preset (≤ 1 min)
    .venv/bin/python benchmarks/step_cost.py --model random:sd21-base     # real SD 2.1-base sizes, random weights
    .venv/bin/python benchmarks/step_cost.py --model random:sd21-base --compile   # CUDA: torch.compile the UNet

Each step is the engine's own ``Trainer.train_step``; ``Trainer.stage_timer`` times its stages:
render (NeRF + background), encode (upsample to the prior's size + VAE encode), unet (the one batched
prior call and the direction), backward (through the VAE encoder and the NeRF), optimizer (grad
clean-up, clip, Adam). After every step the same prior is timed alone on a batch of the same rows
(cond + uncond [+ negative]): the "UNet floor", the least a step can cost. NFSD and SDS steps are
interleaved in one run, so machine noise hits both alike; figures are medians. On CUDA every stage
timer synchronises the device (only here; training itself never does).

NFSD is measured in its worst case: timesteps are drawn from [200, t_max), so its negative row is always
evaluated (3 UNet rows against SDS's 2). In a real run the negative row is dropped whenever t < 200.

``--activation-memory`` instead prints, per step at real scale on CPU, the bytes autograd saves for the
backward and the peak RSS, for the NeRF render at the standard and high presets (occupancy-pruned sampler
as trained, and every sample as the worst case) and for SD 2.1-base's VAE encoder at 512 px in fp32.

Output: a table per method and schedule phase (the preset's render resolutions), peak memory (RSS on CPU,
``torch.cuda.max_memory_allocated`` on CUDA), the projected time of the preset's full run, then summary lines.
The LAST line is machine-readable:
  * default (tiny) run:                 ``nfsd_over_sds=<NFSD step ÷ SDS step>``
  * a real-scale model (``--model``):   ``nfsd_over_sds=<…>`` on the line before, then
                                        ``nfsd_step_over_unet_floor=<NFSD step ÷ its UNet-only time>``
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import torch

from nfsd_server.devices import default_device
from nfsd_server.guidance.prior import Conditions, Prior, PromptKind, load_prior
from nfsd_server.guidance.random_models import save_random_stable_diffusion
from nfsd_server.scene.cameras import sample_orbit_cameras
from nfsd_server.scene.renderer import RendererConfig, make_renderer
from nfsd_server.presets import PRESETS, Preset
from nfsd_server.settings import resolve_settings
from nfsd_server.train import TrainConfig, Trainer

STAGES = ("render", "encode", "unet", "backward", "optimizer")
METHODS = ("nfsd", "sds")


class StageTimer:
    """``Trainer.stage_timer``: wall time per stage of the current step, plus a memory high-water mark."""

    def __init__(self, device: torch.device):
        self.device = device
        self.current: dict[str, float] = {}
        self.peak_rss = 0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def __call__(self, stage: str):
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.current[stage] = self.current.get(stage, 0.0) + time.perf_counter() - start
        self.peak_rss = max(self.peak_rss, psutil.Process().memory_info().rss)


@dataclasses.dataclass
class Samples:
    """Seconds per measured step, for one method in one schedule phase."""

    stages: dict[str, list[float]] = dataclasses.field(default_factory=lambda: {s: [] for s in STAGES})
    step: list[float] = dataclasses.field(default_factory=list)
    floor: list[float] = dataclasses.field(default_factory=list)
    rows: list[int] = dataclasses.field(default_factory=list)
    peak_bytes: int = 0

    def median(self, values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    @property
    def step_over_floor(self) -> float:
        return statistics.median(s / f for s, f in zip(self.step, self.floor))


def timed_step(trainer: Trainer, timer: StageTimer) -> float:
    timer.current = {}
    timer._sync()
    start = time.perf_counter()
    trainer.train_step()
    timer._sync()
    return time.perf_counter() - start


def unet_floor(prior: Prior, trainer: Trainer, rows: int, latent_shape: tuple[int, ...], timer: StageTimer) -> float:
    """Seconds for the prior alone on ``rows`` rows of the step's latent shape (no render, VAE or backward)."""
    generator = torch.Generator().manual_seed(rows)
    latents = torch.randn((rows, *latent_shape), generator=generator).to(prior.device)
    t = torch.full((rows,), 500, dtype=torch.long, device=prior.device)
    cameras = sample_orbit_cameras(rows, generator).to(prior.device)
    kinds = torch.full((rows,), PromptKind.PROMPT, dtype=torch.long, device=prior.device)
    conditions = Conditions(kinds, cameras, trainer.prompts)
    timer._sync()
    start = time.perf_counter()
    with torch.no_grad():
        prior.predict_noise(latents, t, conditions)
    timer._sync()
    return time.perf_counter() - start


def latent_shape_of(prior: Prior) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(prior.encode(torch.zeros(1, 3, 8, 8, device=prior.device)).shape[1:])


def peak_memory(device: torch.device, timer: StageTimer) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return timer.peak_rss


def reset_peak(device: torch.device, timer: StageTimer) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timer.peak_rss = 0


def measure(
    prior: Prior, preset_name: str, steps: int, warmup: int, resolution: int | None, seed: int = 0,
    compile_unet: bool = False, methods: tuple[str, ...] = METHODS, first_phase_only: bool = False,
) -> dict[tuple[str, int], Samples]:
    """Interleaved NFSD/SDS steps per schedule phase → {(method, side): Samples}."""
    device = prior.device
    schedule = measured_schedule(PRESETS[preset_name], resolution, first_phase_only)
    timer = StageTimer(device)
    trainers = {}
    for method in methods:
        # t ≥ 200 throughout: NFSD's worst case (negative row always on); cost does not depend on t otherwise.
        settings = resolve_settings("a hamburger", method=method, seed=seed, preset=preset_name)
        config = TrainConfig(t_min=0.2, t_max_end=0.5, compile_unet=compile_unet)
        trainers[method] = Trainer(settings, prior, out_dir=None, config=config)
        trainers[method].stage_timer = timer
    latent_shape = latent_shape_of(prior)
    results: dict[tuple[str, int], Samples] = {}
    for phase, (fraction, side) in enumerate(schedule):
        end = schedule[phase + 1][0] if phase + 1 < len(schedule) else 1.0
        for method, trainer in trainers.items():
            # Jump to the middle of the phase (its t range, lit shading, resolution); pin the side if asked.
            trainer.step = int((fraction + end) / 2 * trainer.total)
            if resolution:
                trainer.preset = dataclasses.replace(trainer.preset, resolution_schedule=schedule)
            results[method, side] = Samples()
        for index in range(steps + (warmup if phase == 0 else 0)):
            measured = index >= (warmup if phase == 0 else 0)
            for method, trainer in trainers.items():
                samples = results[method, side]
                reset_peak(device, timer)
                seconds = timed_step(trainer, timer)
                rows = trainer.guidance.last_rows_evaluated
                floor = unet_floor(prior, trainer, rows, latent_shape, timer)
                if measured:
                    samples.step.append(seconds)
                    samples.floor.append(floor)
                    samples.rows.append(rows)
                    for stage in STAGES:
                        samples.stages[stage].append(timer.current.get(stage, 0.0))
                    samples.peak_bytes = max(samples.peak_bytes, peak_memory(device, timer))
    return results


def measured_schedule(preset: Preset, resolution: int | None, first_phase_only: bool) -> tuple[tuple[float, int], ...]:
    if resolution:
        return ((0.0, resolution),)
    return preset.resolution_schedule[:1] if first_phase_only else preset.resolution_schedule


def projected_seconds(results: dict[tuple[str, int], Samples], method: str, preset: Preset, steps_total: int) -> float:
    """The preset's full run: each phase's share of steps × its median step (unmeasured phases: the last measured)."""
    total, samples = 0.0, None
    schedule = preset.resolution_schedule
    for index, (fraction, side) in enumerate(schedule):
        end = schedule[index + 1][0] if index + 1 < len(schedule) else 1.0
        samples = results.get((method, side), samples) or next(s for (m, _), s in results.items() if m == method)
        total += (end - fraction) * steps_total * samples.median(samples.step)
    return total


def report(results: dict[tuple[str, int], Samples], device: torch.device, preset_name: str,
           steps_total: int, resolution_pinned: bool = False) -> tuple[float, float]:
    """Print the tables; return (NFSD ÷ SDS, NFSD ÷ its UNet floor), both over all phases' medians."""
    memory_name = "peak VRAM (max_memory_allocated)" if device.type == "cuda" else "peak RSS"
    sides = sorted({side for _, side in results})
    for side in sides:
        print(f"\n-- render {side}×{side} px  (median ms over {len(results['nfsd', side].step)} steps) --")
        print(f"{'method':7}" + "".join(f"{s:>11}" for s in (*STAGES, "other", "step", "unet-only", "step/floor"))
              + f"{'rows':>6}  {memory_name}")
        for method in METHODS:
            samples = results.get((method, side))
            if samples is None:
                continue
            stage_ms = {s: 1e3 * samples.median(samples.stages[s]) for s in STAGES}
            step_ms = 1e3 * samples.median(samples.step)
            other_ms = step_ms - sum(stage_ms.values())
            cells = [*stage_ms.values(), other_ms, step_ms, 1e3 * samples.median(samples.floor)]
            print(f"{method:7}" + "".join(f"{v:11.1f}" for v in cells) + f"{samples.step_over_floor:11.3f}"
                  + f"{statistics.median(samples.rows):6.0f}  {samples.peak_bytes / 2**30:.2f} GiB")
    print()
    for method in METHODS:
        if any(m == method for m, _ in results):
            seconds = projected_seconds(results, method, PRESETS[preset_name], steps_total)
            caveat = ", negative row every step" if method == "nfsd" else ""
            if len(sides) < len(PRESETS[preset_name].resolution_schedule) and not resolution_pinned:
                caveat += f", unmeasured phases at the {sides[-1]} px cost"
            print(f"projected {method} run ({steps_total} steps, preset {preset_name}{caveat}): {seconds / 60:.1f} min")
    nfsd_step = statistics.median(s for side in sides for s in results["nfsd", side].step)
    sds_step = statistics.median(s for side in sides for s in results["sds", side].step)
    nfsd_floor = statistics.median(r for side in sides for r in (
        s / f for s, f in zip(results["nfsd", side].step, results["nfsd", side].floor)))
    return nfsd_step / sds_step, nfsd_floor


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="e.g. random:sd21-base (real sizes, random weights) or a diffusers folder / "
                        "hub id; default: a tiny random SD saved to a temp folder")
    parser.add_argument("--preset", help="training preset (default: draft for the tiny model, standard otherwise)")
    parser.add_argument("--steps", type=int, help="measured steps per method and phase "
                        "(default: 10 tiny, 1 real scale on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, help="unmeasured steps first (default: 2, 1 real scale on CPU)")
    parser.add_argument("--resolution", type=int, help="render side in px for every step, instead of the preset's schedule")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--all-phases", action="store_true", help="measure every render resolution of the preset's "
                        "schedule (default except real scale on CPU, where only the first is measured)")
    parser.add_argument("--encode-size", type=int, help="opt-in trade: VAE-encode at this side (e.g. 256) and "
                        "upsample the latents, instead of encoding at the model's 512 px")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (TrainConfig.compile_unet)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--activation-memory", action="store_true", help="only print the peak activation memory "
                        "of one step at real scale (standard and high presets, CPU) and exit")
    args = parser.parse_args(argv)
    if args.activation_memory:
        if args.threads:
            torch.set_num_threads(args.threads)
        report_activation_memory()
        return 0

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a benchmark never downloads
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else default_device()
    real_scale = args.model is not None
    preset = args.preset or ("standard" if real_scale else "draft")
    cpu_real = real_scale and device.type == "cpu"
    steps = args.steps or (1 if cpu_real else 20 if device.type == "cuda" else 10)
    warmup = args.warmup if args.warmup is not None else (1 if cpu_real else 2)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nfsd-bench-") as scratch:
        model = args.model or str(save_random_stable_diffusion(Path(scratch) / "tiny-sd", name="tiny"))
        prior = load_prior("stable-diffusion", model, device, encode_size=args.encode_size)
        loaded = time.perf_counter() - started
        print(f"model {args.model or 'tiny (random, temp folder)'} on {device} "
              f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
              f"{getattr(prior, 'dtypes', torch.float32)}, loaded in {loaded:.1f} s; preset {preset}; "
              f"{warmup} warm-up + {steps} measured steps per method and phase; renderer "
              f"{type(make_renderer(RendererConfig(), device)).__name__}"
              + (f"; VAE encode at {prior.encode_size} px (opt-in)" if args.encode_size else "")
              + ("; UNet torch.compile'd" if args.compile else ""))
        results = measure(prior, preset, steps, warmup, args.resolution, compile_unet=args.compile,
                          first_phase_only=cpu_real and not args.all_phases)
    steps_total = PRESETS[preset].steps
    nfsd_over_sds, nfsd_over_floor = report(results, device, preset, steps_total, resolution_pinned=bool(args.resolution))
    print(f"benchmark wall time {time.perf_counter() - started:.0f} s; process peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (includes loading)")
    print(f"nfsd_over_sds={nfsd_over_sds:.3f}")
    if real_scale:
        print(f"nfsd_step_over_unet_floor={nfsd_over_floor:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
