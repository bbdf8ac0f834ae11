"""What one training step costs, stage by stage, for NFSD and SDS on the same prior.

    .venv/bin/python benchmarks/step_cost.py                              # tiny random SD, draft preset (≤ 1 min)
    .venv/bin/python benchmarks/step_cost.py --model random:sd21-base     # real SD 2.1-base sizes, random weights
    .venv/bin/python benchmarks/step_cost.py --model random:sd21-base --compile   # CUDA: torch.compile the UNet

Each step is the engine's own ``Trainer.train_step``; ``Trainer.stage_timer`` times its stages:
render (NeRF + background; latent channels in the latent phase), encode (upsample to the prior's size + VAE or
TAESD encode; RGB phase only), unet (the one batched prior call and the direction), backward (through the
encoder and the NeRF), optimizer (grad clean-up, clip, Adam). After every step the same prior is timed alone on
a batch of the same rows (cond + uncond [+ negative]): the "UNet floor", the least a step can cost.

The preset's run is cut into segments where its phase (``Preset.latent_fraction``) or its render side changes;
steps run round robin over segments and methods (NFSD, SDS), so machine noise hits all alike. Figures are
medians (default 3 measured steps per segment on CPU at real scale, 20 on CUDA) with the min–max spread.
On CUDA every stage timer synchronises the device (only here; training itself never does).

NFSD evaluates its negative row only where t ≥ 200 (3 UNet rows, else 2), so it is measured both ways: "nfsd"
draws t from [200, t_max) and "nfsd t<200" from [20, 200). The projected NFSD run weights the two, segment by
segment, by the share of its steps whose t (as the default ``TrainConfig`` anneals it) is ≥ 200. SDS always
evaluates 2 rows. The UNet floor of a row count is the median of every floor measured with that many rows
(the prior's cost does not depend on the segment), so the ratio's denominator is not one noisy sample.

``--janus-guard`` also measures NFSD with the Janus guard (its two row counts, projected like NFSD) and prints
``guard_over_nfsd=<projected guard run ÷ projected NFSD run>`` before the last three lines.

Output: a table per segment, peak memory (RSS on CPU, ``torch.cuda.max_memory_allocated`` on CUDA), the
projected time of the preset's full run (each segment's share of the steps × its median step) and of its
UNet-only time, each with the range it would take were every step its segment's fastest or slowest measured
one, then, as the last three lines:
  ``minutes_per_asset=<projected NFSD run, in minutes>``
  ``nfsd_over_sds=<projected NFSD run ÷ projected SDS run>``
  ``run_over_unet_floor=<projected NFSD run ÷ the sum of its steps' UNet-only times>``
and with ``--compile`` a fourth, ``run_over_compiled_unet_floor=`` (the same ratio: its floor is the compiled UNet).
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

from nfsd_contract import DEFAULT_ENCODER, ENCODERS
from nfsd_contract.constants import PRESET_ENCODERS, PRESET_STEPS
from nfsd_server.guidance.score import NFSD_SMALL_T
from nfsd_server.devices import default_device, keep_freed_host_memory
from nfsd_server.guidance.prior import Conditions, Prior, PromptKind
from nfsd_server.guidance.registry import load_prior
from nfsd_server.guidance.random_models import save_random_stable_diffusion
from nfsd_server.scene.cameras import sample_orbit_cameras
from nfsd_server.scene.renderer import RendererConfig, make_renderer
from nfsd_server.presets import PRESETS, Preset
from nfsd_contract import resolve_spec
from nfsd_server.train import COMPILE_ROWS, TrainConfig, Trainer, timestep_range

STAGES = ("render", "encode", "unet", "backward", "optimizer")
# What is measured: (method, the TrainConfig timestep range that pins its UNet rows).
VARIANTS = {
    "nfsd": ("nfsd", dict(t_min=0.2, t_max_end=0.5)),  # t ≥ 200: cond + uncond + negative
    "nfsd t<200": ("nfsd", dict(t_min=0.02, t_max_start=0.19, t_max_end=0.19)),  # cond + uncond
    "sds": ("sds", dict(t_min=0.2, t_max_end=0.5)),
}
# With --janus-guard: NFSD with the Janus guard (one more row per image at t ≥ 200: 4 rows there; below 200 it
# adds none, 2 rows as plain NFSD), measured beside plain NFSD as above, and projected the same way.
GUARD_VARIANTS = {
    "guard": ("nfsd", dict(t_min=0.2, t_max_end=0.5)),
    "guard t<200": ("nfsd", dict(t_min=0.02, t_max_start=0.19, t_max_end=0.19)),
}


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


@dataclasses.dataclass(frozen=True)
class Segment:
    """A stretch [start, end) of the run (fractions of its steps) with one phase and one render side."""

    start: float
    end: float
    phase: str  # "latent" (render into the prior's latent space) or "rgb" (render, then encode)
    side: int  # rendered side in px (the latent side in the latent phase)

    @property
    def label(self) -> str:
        return f"{self.phase} {self.side}"


def run_segments(preset: Preset, prior: Prior) -> list[Segment]:
    """The preset's run cut where its phase (latent_fraction) or its render side (resolution_schedule) changes."""
    has_latent = prior.latent_channels is not None and preset.latent_fraction > 0
    schedule = preset.resolution_schedule
    cuts = sorted({0.0, 1.0, *(f for f, _ in schedule), *((preset.latent_fraction,) if has_latent else ())})
    segments: list[Segment] = []
    for start, end in zip(cuts, cuts[1:]):
        if end <= start:
            continue
        phase = "latent" if has_latent and start < preset.latent_fraction else "rgb"
        side = prior.latent_side() if phase == "latent" else [s for f, s in schedule if f <= start][-1]
        if segments and (segments[-1].phase, segments[-1].side) == (phase, side):
            segments[-1] = dataclasses.replace(segments[-1], end=end)
        else:
            segments.append(Segment(start, end, phase, side))
    return segments


def measure(
    prior: Prior, preset_name: str, preset: Preset, steps: int, warmup: int, seed: int = 0,
    compile_unet: bool = False, variants: tuple[str, ...] = tuple(VARIANTS), encoder: str = "vae",
    verbose: bool = False, capture_render: bool = False, compile_backend: str = "inductor",
) -> dict[tuple[str, str], Samples]:
    """Steps interleaved over segments and variants (round robin) → {(variant, segment label): Samples}.

    ``preset`` is the one whose run is measured (``PRESETS[preset_name]`` with any overrides applied)."""
    device = prior.device
    segments = run_segments(preset, prior)
    timer = StageTimer(device)
    trainers = {}
    for variant in variants:
        method, t_range = {**VARIANTS, **GUARD_VARIANTS}[variant]
        # Cost does not depend on t except through the rows evaluated, which the t range pins.
        settings = resolve_spec("a hamburger", method=method, seed=seed, preset=preset_name,
                                prior="stable-diffusion", model="benchmark", encoder=encoder,
                                janus_guard=variant in GUARD_VARIANTS)
        config = TrainConfig(**t_range, compile_unet=compile_unet, capture_render=capture_render,
                             capture_backend=compile_backend)
        trainers[variant] = Trainer(settings, prior, out_dir=None, config=config)
        trainers[variant].preset = preset
        trainers[variant].stage_timer = timer
        # As a run has it: the occupancy grid built from the field (jumping mid-run skips the step-0 build), and
        # a compiled UNet compiled for the run's row counts before any step.
        trainers[variant].renderer.update(0, trainers[variant].field)
        started = time.perf_counter()
        trainers[variant].warm_up()
        if compile_unet and verbose:
            print(f"  {variant}: compiled for rows {trainers[variant].unet_row_counts()} in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
    results = {(variant, segment.label): Samples() for variant in variants for segment in segments}
    latent_shape = latent_shape_of(prior)
    for index in range(warmup + steps):
        measured = index >= warmup
        for segment in segments:
            for variant, trainer in trainers.items():
                # Inside the segment (its phase, t range, lit shading, side), one step further each round.
                trainer.step = int((segment.start + segment.end) / 2 * trainer.total) + index
                assert trainer.phase() == segment.phase, (trainer.phase(), segment)
                samples = results[variant, segment.label]
                reset_peak(device, timer)
                seconds = timed_step(trainer, timer)
                rows = trainer.guidance.last_rows_evaluated
                floor = unet_floor(prior, trainer, rows, latent_shape, timer)
                if verbose:
                    print(f"  {'step' if measured else 'warm-up'} {index}: {variant} {segment.label}: "
                          f"{seconds:.2f} s, unet-only {floor:.2f} s", flush=True)
                if measured:
                    samples.step.append(seconds)
                    samples.floor.append(floor)
                    samples.rows.append(rows)
                    for stage in STAGES:
                        samples.stages[stage].append(timer.current.get(stage, 0.0))
                    samples.peak_bytes = max(samples.peak_bytes, peak_memory(device, timer))
    return results


def negative_row_share(segment: Segment, steps_total: int, num_train_timesteps: int) -> float:
    """Share of the segment's steps whose t (drawn as the default TrainConfig anneals it) is ≥ NFSD_SMALL_T."""
    config, shares = TrainConfig(), []
    for step in range(int(segment.start * steps_total), max(int(segment.end * steps_total), int(segment.start * steps_total) + 1)):
        t_lo, t_hi = timestep_range(config, step / steps_total, num_train_timesteps)
        shares.append(min(max((t_hi - max(t_lo, NFSD_SMALL_T)) / (t_hi - t_lo), 0.0), 1.0))
    return statistics.fmean(shares)


def pooled_floors(results: dict[tuple[str, str], Samples]) -> dict[int, float]:
    """{UNet rows: median UNet-only seconds over every measurement with that many rows}."""
    by_rows: dict[int, list[float]] = {}
    for samples in results.values():
        for rows, floor in zip(samples.rows, samples.floor):
            by_rows.setdefault(rows, []).append(floor)
    return {rows: statistics.median(floors) for rows, floors in by_rows.items()}


@dataclasses.dataclass(frozen=True)
class Projection:
    """A method's full run in seconds: median steps, and the fastest / slowest measured steps throughout."""

    seconds: float
    low: float
    high: float
    floor: float  # the sum of its steps' UNet-only times


def project(results: dict[tuple[str, str], Samples], method: str, segments: list[Segment], steps_total: int,
            num_train_timesteps: int) -> Projection:
    """The preset's full run: each segment's share of the steps × its step time. NFSD's steps mix its two
    variants by the segment's share of t ≥ 200 steps; the UNet-only time uses the pooled floors."""
    floors = pooled_floors(results)
    totals = {"seconds": 0.0, "low": 0.0, "high": 0.0, "floor": 0.0}
    for segment in segments:
        steps = (segment.end - segment.start) * steps_total
        if method in ("nfsd", "guard"):
            with_negative = negative_row_share(segment, steps_total, num_train_timesteps)
            mix = ((method, with_negative), (f"{method} t<200", 1.0 - with_negative))
        else:
            mix = ((method, 1.0),)
        for variant, weight in mix:
            samples = results[variant, segment.label]
            totals["seconds"] += weight * steps * samples.median(samples.step)
            totals["low"] += weight * steps * min(samples.step)
            totals["high"] += weight * steps * max(samples.step)
            totals["floor"] += weight * steps * floors[int(statistics.median(samples.rows))]
    return Projection(**totals)


def spread(values: list[float]) -> str:
    return f"{1e3 * min(values):.0f}–{1e3 * max(values):.0f}" if values else "–"


def report(results: dict[tuple[str, str], Samples], device: torch.device, preset_name: str, steps_total: int,
           segments: list[Segment], num_train_timesteps: int) -> tuple[Projection, float, float]:
    """Print the tables; return (the NFSD run's projection, NFSD run ÷ SDS run, NFSD run ÷ its UNet-only time)."""
    memory_name = "peak VRAM (max_memory_allocated)" if device.type == "cuda" else "peak RSS"
    floors = pooled_floors(results)
    for segment in segments:
        n = len(results["nfsd", segment.label].step)
        share = negative_row_share(segment, steps_total, num_train_timesteps)
        print(f"\n-- {segment.phase} phase, render {segment.side}×{segment.side} px, steps "
              f"{segment.start:.0%}–{segment.end:.0%} of the run, t ≥ {NFSD_SMALL_T} in {share:.0%} of them  "
              f"(median ms over {n} steps; step spread min–max) --")
        print(f"{'variant':11}" + "".join(f"{s:>11}" for s in (*STAGES, "other", "step", "unet-only", "step/floor"))
              + f"{'rows':>5}{'step spread':>14}  {memory_name}")
        for variant in dict.fromkeys(v for v, _ in results):
            samples = results[variant, segment.label]
            stage_ms = {s: 1e3 * samples.median(samples.stages[s]) for s in STAGES}
            step_ms = 1e3 * samples.median(samples.step)
            other_ms = step_ms - sum(stage_ms.values())
            floor_ms = 1e3 * floors[int(statistics.median(samples.rows))]
            cells = [*stage_ms.values(), other_ms, step_ms, floor_ms]
            print(f"{variant:11}" + "".join(f"{v:11.1f}" for v in cells) + f"{step_ms / floor_ms:11.3f}"
                  + f"{statistics.median(samples.rows):5.0f}{spread(samples.step):>14}  {samples.peak_bytes / 2**30:.2f} GiB")
    print("\nUNet floor by rows (median over all its measurements): "
          + ", ".join(f"{rows} rows {1e3 * seconds:.1f} ms" for rows, seconds in sorted(floors.items())))
    projections = {}
    for method in ("nfsd", "sds", "guard"):
        if (method, segments[0].label) not in results:
            continue
        p = projections[method] = project(results, method, segments, steps_total, num_train_timesteps)
        print(f"projected {method} run ({steps_total} steps, preset {preset_name}): {p.seconds / 60:.1f} min "
              f"(range {p.low / 60:.1f}–{p.high / 60:.1f}); its UNet-only time {p.floor / 60:.1f} min; "
              f"run ÷ UNet-only {p.seconds / p.floor:.3f} (range {p.low / p.floor:.3f}–{p.high / p.floor:.3f})")
    nfsd, sds = projections["nfsd"], projections["sds"]
    print(f"nfsd ÷ sds range {nfsd.low / sds.high:.3f}–{nfsd.high / sds.low:.3f}")
    if "guard" in projections:
        guard = projections["guard"]
        print(f"guard ÷ nfsd run {guard.seconds / nfsd.seconds:.3f} (range {guard.low / nfsd.high:.3f}–"
              f"{guard.high / nfsd.low:.3f}); UNet-only {guard.floor / nfsd.floor:.3f}")
        print(f"guard_over_nfsd={guard.seconds / nfsd.seconds:.3f}")
    return nfsd, nfsd.seconds / sds.seconds, nfsd.seconds / nfsd.floor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="e.g. random:sd21-base (real sizes, random weights) or a diffusers folder / "
                        "hub id; default: a tiny random SD saved to a temp folder")
    parser.add_argument("--preset", help="training preset (default: draft for the tiny model, standard otherwise)")
    parser.add_argument("--steps", type=int, help="measured steps per method and phase "
                        "(default: 10 tiny, 3 real scale on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, help="unmeasured rounds first (default: 2, 0 real scale on CPU)")
    parser.add_argument("--resolution", type=int, help="render side in px for every step, instead of the preset's schedule")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--encode-size", type=int, help="opt-in trade: VAE-encode at this side (e.g. 256) and "
                        "upsample the latents, instead of encoding at the model's 512 px")
    parser.add_argument("--encoder", choices=ENCODERS, default=DEFAULT_ENCODER,
                        help="the RGB phase's encoder: auto (the preset's), vae (the model's) or taesd (a random "
                        "AutoencoderTiny of TAESD's size for random:* models)")
    parser.add_argument("--latent-fraction", type=float, help="instead of the preset's latent_fraction (0..1)")
    parser.add_argument("--verbose", action="store_true", help="print every step's time as it is measured")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (TrainConfig.compile_unet), "
                        "compiled before the measured steps (Trainer.warm_up); the floor is the compiled UNet's, and a "
                        "last line run_over_compiled_unet_floor= follows")
    parser.add_argument("--capture", action="store_true", help="capture the render (TrainConfig.capture_render: "
                        "torch.compile, CUDA graphs on CUDA); its compiles happen in the warm-up rounds")
    parser.add_argument("--compile-rows", choices=COMPILE_ROWS, default="static",
                        help="with --compile: a static graph per row count, or one graph with the row count dynamic")
    parser.add_argument("--compile-backend", default="inductor",
                        help="with --compile and --capture: torch.compile's backend (eager: the CPU smoke test of those paths)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--janus-guard", action="store_true", help="also measure NFSD with the Janus guard "
                        "(two more variants) and print guard_over_nfsd=<projected guard run ÷ NFSD run> before the last three lines")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a benchmark never downloads
    logging.basicConfig(level=logging.WARNING)
    keep_freed_host_memory()  # as the nfsd commands run (cli.main)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else default_device()
    real_scale = args.model is not None
    preset = args.preset or ("standard" if real_scale else "draft")
    cpu_real = real_scale and device.type == "cpu"
    # Medians need ≥ 3 steps per phase; warm-up steps run every segment once more.
    steps = args.steps or (3 if cpu_real else 20 if device.type == "cuda" else 10)
    warmup = args.warmup if args.warmup is not None else (0 if cpu_real else 2)

    preset_used = PRESETS[preset]
    if args.resolution:
        preset_used = dataclasses.replace(preset_used, resolution_schedule=((0.0, args.resolution),))
    if args.latent_fraction is not None:
        preset_used = dataclasses.replace(preset_used, latent_fraction=args.latent_fraction)
    encoder = PRESET_ENCODERS[preset] if args.encoder == "auto" else args.encoder

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nfsd-bench-") as scratch:
        model = args.model or str(save_random_stable_diffusion(Path(scratch) / "tiny-sd", name="tiny"))
        prior = load_prior("stable-diffusion", model, device, encode_size=args.encode_size, encoder=encoder)
        loaded = time.perf_counter() - started
        print(f"model {args.model or 'tiny (random, temp folder)'} on {device} "
              f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
              f"{getattr(prior, 'dtypes', torch.float32)}, loaded in {loaded:.1f} s; preset {preset}; "
              f"{warmup} warm-up + {steps} measured rounds of every variant in every segment; renderer "
              f"{type(make_renderer(RendererConfig(), device)).__name__}"
              + f"; RGB-phase encoder {encoder}{' (the preset' + chr(39) + 's)' if args.encoder == 'auto' else ''}"
              + f"; latent_fraction {preset_used.latent_fraction}"
              + (f"; encode at {prior.encode_size} px (opt-in)" if args.encode_size else "")
              + (f"; UNet torch.compile'd ({args.compile_rows} rows, {args.compile_backend})" if args.compile else "")
              + ("; render captured" if args.capture else ""),
              flush=True)
        variants = (*VARIANTS, *GUARD_VARIANTS) if args.janus_guard else tuple(VARIANTS)
        if args.capture:  # one captured graph per trainer, phase, side and shading: more than dynamo's default 8
            torch._dynamo.config.recompile_limit = 64
        if args.compile:  # before the trainers, so the backend is this one (Trainer's compile is then a no-op)
            prior.compile(dynamic_rows=args.compile_rows == "dynamic", backend=args.compile_backend)
        results = measure(prior, preset, preset_used, steps, warmup, compile_unet=args.compile, capture_render=args.capture,
                          compile_backend=args.compile_backend,
                          variants=variants, encoder=encoder, verbose=args.verbose)
        segments = run_segments(preset_used, prior)
    steps_total = PRESET_STEPS[preset]
    nfsd, nfsd_over_sds, run_over_floor = report(results, device, preset, steps_total, segments,
                                                 prior.num_train_timesteps)
    print(f"benchmark wall time {time.perf_counter() - started:.0f} s; process peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (includes loading)")
    print(f"minutes_per_asset={nfsd.seconds / 60:.1f}")
    print(f"nfsd_over_sds={nfsd_over_sds:.3f}")
    print(f"run_over_unet_floor={run_over_floor:.3f}")
    if args.compile:  # the floor above was the compiled UNet's
        print(f"run_over_compiled_unet_floor={run_over_floor:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
