"""NFSD vs SDS, with and without the Janus guard, on the arena prior: how often does the result have two faces?

For each arena prompt with a distinguishable side (a ball with a face, a cube with a label) and each variant
(same steps, same seeds) it trains a draft-preset NeRF on the CPU against ``ArenaPrior`` (view-ambiguous,
frontal-biased, lit) and judges it with ``arena_evaluation.evaluate_arena`` from albedo renders at 8 azimuths:
Janus (the feature seen from two opposite azimuths), silhouette IoU and colour error against the nearest
instance, and the feature score in front (0°) and behind (180°): how far the albedo moved from the body colour
toward the feature's (0 plain, 1 feature), which also shows a face smeared faintly all around. Per variant it
prints the Janus rate (share of runs that are Janus), mean IoU, mean colour error and mean feature scores.

    .venv/bin/python benchmarks/arena.py [--steps 300] [--seeds 0 1 2] [--prompts "a red ball with a yellow face" ...]
                                         [--variants "nfsd s=7.5" ...] [--smoke]

Last line: ``janus_rate=<default method: NFSD s=7.5, guard as the job spec's default>
nfsd_plain_janus_rate=<NFSD s=7.5 without the guard> sds_janus_rate=<SDS s=100> iou=<default method's mean IoU>``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from nfsd_server.arena_evaluation import evaluate_arena
from nfsd_server.devices import keep_freed_host_memory
from nfsd_server.guidance.arena import ArenaPrior
from nfsd_server.guidance.arena_objects import ARENA_OBJECTS, ASYMMETRIC_PROMPTS
from nfsd_contract import JobSpec, resolve_spec
from nfsd_server.train import Trainer

# name → (method, guidance scale, janus guard)
VARIANTS = {
    "nfsd s=7.5": ("nfsd", 7.5, False),
    "nfsd+guard s=7.5": ("nfsd", 7.5, True),
    "sds s=100": ("sds", 100.0, False),
    "sds s=7.5": ("sds", 7.5, False),
    "sds+guard s=100": ("sds", 100.0, True),
}
DEFAULT_GUARD = JobSpec.__dataclass_fields__["janus_guard"].default
DEFAULT_VARIANT = "nfsd+guard s=7.5" if DEFAULT_GUARD else "nfsd s=7.5"


def run(prompt: str, variant: str, steps: int, seed: int, prior: ArenaPrior, judge_size: int) -> dict[str, object]:
    method, scale, guard = VARIANTS[variant]
    # The settings' prior is only recorded; the trainer distils from the prior it is handed.
    settings = resolve_spec(prompt, method=method, guidance_scale=scale, steps=steps, seed=seed, preset="draft",
                            janus_guard=guard)
    trainer = Trainer(settings, prior, None)
    trainer.run()
    return evaluate_arena(trainer.field, ARENA_OBJECTS[prompt], size=judge_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--prompts", nargs="+", default=list(ASYMMETRIC_PROMPTS), choices=list(ARENA_OBJECTS))
    parser.add_argument("--variants", nargs="+", default=["nfsd s=7.5", "nfsd+guard s=7.5", "sds s=100", "sds s=7.5"],
                        choices=list(VARIANTS))
    parser.add_argument("--smoke", action="store_true", help="seconds, not minutes: 3 steps, one prompt, one seed, "
                        "NFSD with and without the guard and SDS s=100 (plumbing only; the numbers mean nothing)")
    args = parser.parse_args()
    judge_size = 48
    if args.smoke:
        args.steps, args.seeds, args.prompts, judge_size = 3, args.seeds[:1], args.prompts[:1], 16
        args.variants = ["nfsd s=7.5", "nfsd+guard s=7.5", "sds s=100"]

    keep_freed_host_memory()
    prior = ArenaPrior()
    print(f"arena prior (latent {prior.latent_size}²), draft preset, {args.steps} steps, seeds {args.seeds}, CPU; "
          f"default janus_guard={DEFAULT_GUARD}")
    header = (f"{'prompt':<31} {'variant':<17} {'seed':>4} {'janus':>5} {'sil_iou':>7} {'col_err':>7} {'front':>5} {'back':>5}"
              "  feature share at 0°,45°,…,315°")
    print(header)
    print("-" * len(header))
    results: dict[str, list[dict[str, object]]] = {v: [] for v in args.variants}
    started = time.perf_counter()
    for prompt in args.prompts:
        for variant in args.variants:
            for seed in args.seeds:
                s = run(prompt, variant, args.steps, seed, prior, judge_size)
                results[variant].append(s)
                shares = " ".join(f"{f:.2f}" for f in s["feature_fractions"])
                front, back = s["feature_scores"][0], s["feature_scores"][len(s["feature_scores"]) // 2]
                print(f"{prompt:<31} {variant:<17} {seed:>4} {'yes' if s['janus'] else 'no':>5} "
                      f"{s['silhouette_iou']:7.3f} {s['color_error']:7.3f} {front:5.2f} {back:5.2f}  {shares}", flush=True)
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
        print(f"{variant:<17} janus rate {janus:.2f} ({len(results[variant])} runs)  mean IoU {iou:.3f}  "
              f"mean colour error {color:.3f}  feature score front {front:.2f} back {back:.2f}")
    print(f"total {time.perf_counter() - started:.0f} s")
    default, plain, sds = summary(DEFAULT_VARIANT), summary("nfsd s=7.5"), summary("sds s=100")
    print(f"janus_rate={default[0]:.2f} nfsd_plain_janus_rate={plain[0]:.2f} sds_janus_rate={sds[0]:.2f} iou={default[1]:.3f}")


if __name__ == "__main__":
    main()
