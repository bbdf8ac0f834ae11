"""NFSD vs SDS, with and without the Janus guard, on the arena prior: how often does the result have two faces?

For each arena prompt (default: the ball with a face) and each variant (same steps, same seeds) it trains a
draft-preset NeRF on the CPU against ``ArenaPrior`` (view-ambiguous, frontal-biased, lit) and judges it with
``arena_evaluation.evaluate_arena`` from albedo renders at 8 azimuths: Janus (the feature seen from two opposite
azimuths), silhouette IoU and colour error against the nearest instance, and the feature score in front (0°)
and behind (180°): how far the albedo moved from the body colour toward the feature's (0 plain, 1 feature),
which also shows a face smeared faintly all around, or erased. Per variant it prints the Janus rate (share of
runs that are Janus), how many runs ended in each outcome (faithful, janus, faceless: the face erased, faded:
colours collapsed to white), mean IoU, mean colour error and mean feature scores. Runs go to ``--jobs`` processes of
one torch thread each (about 2.3 min of wall time per 600-step run on 2 cores with 2 jobs).

    .venv/bin/python benchmarks/arena.py [--steps 600] [--seeds 0 1 … 7] [--prompts "a red ball with a yellow face" ...]
                                         [--variants "nfsd s=7.5" ...] [--jobs N] [--strips DIR] [--smoke]

Last line: ``janus_rate=<default method: NFSD s=7.5, guard as the job spec's default>
nfsd_plain_janus_rate=<NFSD s=7.5 without the guard> sds_janus_rate=<SDS s=100> iou=<default method's mean IoU>``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from nfsd_contract import JobSpec, resolve_spec
from nfsd_lab.arena import ArenaPrior
from nfsd_server.devices import keep_freed_host_memory
from nfsd_lab.arena_evaluation import OUTCOMES, evaluate_arena, render_albedo
from nfsd_lab.arena_objects import ARENA_OBJECTS, ASYMMETRIC_PROMPTS
from nfsd_lab.experiments import score_clip_hook
from nfsd_lab.workers import one_torch_thread
from nfsd_server.train import Trainer

# name → (method, guidance scale, janus guard, Debiased-SDS score clip (start, end) or None)
DEBIASED_CLIP = (1.0, 2.0)  # ramped over the run (nfsd_lab.experiments.score_clip_hook)
VARIANTS = {
    "nfsd s=7.5": ("nfsd", 7.5, False, None),
    "nfsd+guard s=7.5": ("nfsd", 7.5, True, None),
    "nfsd+guard+clip s=7.5": ("nfsd", 7.5, True, DEBIASED_CLIP),
    "nfsd+clip s=7.5": ("nfsd", 7.5, False, DEBIASED_CLIP),
    "sds s=100": ("sds", 100.0, False, None),
    "sds s=7.5": ("sds", 7.5, False, None),
    "sds+guard s=100": ("sds", 100.0, True, None),
}
DEFAULT_GUARD = JobSpec.__dataclass_fields__["janus_guard"].default
DEFAULT_VARIANT = "nfsd+guard s=7.5" if DEFAULT_GUARD else "nfsd s=7.5"


def run(prompt: str, variant: str, steps: int, seed: int, judge_size: int, strips: str | None = None) -> dict[str, object]:
    method, scale, guard, score_clip = VARIANTS[variant]
    prior = _worker_prior()
    # The settings' prior is only recorded; the trainer distils from the prior it is handed.
    settings = resolve_spec(prompt, method=method, guidance_scale=scale, steps=steps, seed=seed, preset="draft",
                            janus_guard=guard)
    trainer = Trainer(settings, prior, None)
    if score_clip is not None:
        trainer.grad_hook = score_clip_hook(*score_clip)
    trainer.run()
    result = evaluate_arena(trainer.field, ARENA_OBJECTS[prompt], size=judge_size)
    if strips:
        save_strip(trainer.field, Path(strips) / f"{prompt.replace(' ', '_')}__{variant.replace(' ', '_')}__{seed}.png")
    return {"prompt": prompt, "variant": variant, "seed": seed, **result}


def save_strip(field, path: Path, size: int = 64) -> None:
    """The judge's eight albedo renders side by side (0°, 45°, …, 315°) on white."""
    from PIL import Image

    albedo, opacity = render_albedo(field, size)
    images = albedo * opacity[..., None] + (1 - opacity[..., None])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((torch.cat(list(images), dim=1).clamp(0, 1) * 255).byte().cpu().numpy()).save(path)


_PRIOR: ArenaPrior | None = None


def _worker_prior() -> ArenaPrior:
    """One arena prior per process (its canonical renders are cached on it)."""
    global _PRIOR
    if _PRIOR is None:
        _PRIOR = ArenaPrior()
    return _PRIOR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 600 steps: at 300 the face had not formed anywhere yet (a uniformly orange ball, feature share ≤ 0.08).
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    # The ball only by default: the cube collapses under NFSD on this prior with or without the guard (silhouette
    # IoU 0.02 at seed 0; SDS s=100 keeps it at 0.83), a failure of its own that would hide the guard's effect.
    parser.add_argument("--prompts", nargs="+", default=[ASYMMETRIC_PROMPTS[0]], choices=list(ARENA_OBJECTS))
    parser.add_argument("--variants", nargs="+", default=["nfsd s=7.5", "nfsd+guard s=7.5", "sds s=100", "sds s=7.5"],
                        choices=list(VARIANTS))
    parser.add_argument("--smoke", action="store_true", help="seconds, not minutes: 3 steps, one prompt, one seed, "
                        "NFSD with and without the guard and SDS s=100 (plumbing only; the numbers mean nothing)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="runs in parallel, one torch thread each (default: one per core)")
    parser.add_argument("--strips", help="save each run's eight judge renders to this folder as a PNG strip")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    judge_size = 48
    if args.smoke:
        args.steps, args.seeds, args.prompts, judge_size = 3, args.seeds[:1], args.prompts[:1], 16
        args.variants = ["nfsd s=7.5", "nfsd+guard s=7.5", "sds s=100"]

    keep_freed_host_memory()
    print(f"arena prior (latent {_worker_prior().latent_size}²), draft preset, {args.steps} steps, seeds {args.seeds}, CPU, "
          f"{args.jobs} process(es); default janus_guard={DEFAULT_GUARD}")
    header = (f"{'prompt':<31} {'variant':<17} {'seed':>4} {'outcome':>8} {'sil_iou':>7} {'col_err':>7} {'front':>5} "
              f"{'back':>5}  feature share at 0°,45°,…,315°")
    print(header)
    print("-" * len(header))
    results: dict[str, list[dict[str, object]]] = {v: [] for v in args.variants}
    started = time.perf_counter()
    runs = [(prompt, variant, seed) for seed in args.seeds for prompt in args.prompts for variant in args.variants]

    def report(s: dict[str, object]) -> None:
        results[s["variant"]].append(s)
        shares = " ".join(f"{f:.2f}" for f in s["feature_fractions"])
        front, back = s["feature_scores"][0], s["feature_scores"][len(s["feature_scores"]) // 2]
        print(f"{s['prompt']:<31} {s['variant']:<17} {s['seed']:>4} {s['outcome']:>8} "
              f"{s['silhouette_iou']:7.3f} {s['color_error']:7.3f} {front:5.2f} {back:5.2f}  {shares}", flush=True)

    if args.jobs == 1:
        for prompt, variant, seed in runs:
            report(run(prompt, variant, args.steps, seed, judge_size, args.strips))
    else:  # one torch thread per process: independent runs scale better across cores than one run's ops do
        with ProcessPoolExecutor(args.jobs, initializer=one_torch_thread) as pool:
            futures = [pool.submit(run, prompt, variant, args.steps, seed, judge_size, args.strips)
                       for prompt, variant, seed in runs]
            for future in as_completed(futures):
                report(future.result())
    print("-" * len(header))

    def summary(variant: str) -> tuple[float, float, float, float, float]:
        runs = results.get(variant)
        if not runs:
            return (float("nan"),) * 5
        scores = [r["feature_scores"] for r in runs]
        return (statistics.mean(float(r["janus"]) for r in runs), statistics.mean(r["silhouette_iou"] for r in runs),
                statistics.mean(r["color_error"] for r in runs), statistics.mean(s[0] for s in scores),
                statistics.mean(s[len(s) // 2] for s in scores))

    for variant in args.variants:
        janus, iou, color, front, back = summary(variant)
        # Does a variant that avoids the second face keep the first? The true ball's patch covers half its disc.
        kept = [r["feature_fractions"][0] for r in results[variant] if not r["janus"]]
        kept_text = f"{statistics.mean(kept):.2f}" if kept else "n/a"
        outcomes = " ".join(f"{name} {sum(r['outcome'] == name for r in results[variant])}" for name in OUTCOMES)
        print(f"{variant:<17} janus rate {janus:.2f} ({len(results[variant])} runs: {outcomes})  mean IoU {iou:.3f}  "
              f"mean colour error {color:.3f}  feature score front {front:.2f} back {back:.2f}  "
              f"front feature share where not Janus {kept_text}")
    print(f"total {time.perf_counter() - started:.0f} s")
    default, plain, sds = summary(DEFAULT_VARIANT), summary("nfsd s=7.5"), summary("sds s=100")
    print(f"janus_rate={default[0]:.2f} nfsd_plain_janus_rate={plain[0]:.2f} sds_janus_rate={sds[0]:.2f} iou={default[1]:.3f}")


if __name__ == "__main__":
    main()
