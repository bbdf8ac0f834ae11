"""NFSD vs SDS, with and without the Janus guard, on the micro Stable Diffusion: does the NeRF become the caption?

For each caption and variant (same steps, same seeds) it trains a draft-preset NeRF on the CPU against the bundled
micro model (``--model micro``) and judges it against the caption's true object: the 3D judge
(``field_judge.judge_field``: outcome faithful / janus / faceless / faded, silhouette IoU, colour error
from albedo at 8 azimuths) and the micro judge's R-precision over the same 8 views (share read as the caption's
shape and colour). Runs go to ``--jobs`` processes of one torch thread each.

    .venv/bin/python benchmarks/micro_3d.py [--steps 400] [--seeds 0 1 2 3] [--captions "a red ball with a yellow face" ...]
                                            [--variants "nfsd s=7.5" ...] [--jobs N]

Last line: ``micro_faithful=<default variant's faithful rate> micro_janus=<its Janus rate> micro_iou=<its mean IoU>``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

from nfsd_contract import JobSpec, resolve_spec
from nfsd_lab.field_judge import OUTCOMES, judge_field
from nfsd_lab.micro.judge import true_object, field_views, r_precision
from nfsd_lab.micro.world import Truth, feature_color_for, object_caption
from nfsd_lab.workers import one_torch_thread
from nfsd_server.guidance.registry import load_prior
from nfsd_server.train import TrainConfig, Trainer

VARIANTS = {  # name → (method, guidance scale, janus guard)
    "nfsd s=7.5": ("nfsd", 7.5, False),
    "nfsd+guard s=7.5": ("nfsd", 7.5, True),
    "sds s=7.5": ("sds", 7.5, False),
    "sds s=100": ("sds", 100.0, False),
}
DEFAULT_GUARD = JobSpec.__dataclass_fields__["janus_guard"].default
DEFAULT_VARIANT = "nfsd+guard s=7.5" if DEFAULT_GUARD else "nfsd s=7.5"
FEATURED = [Truth(shape, color, feature_color_for(shape, color))
            for shape, color in (("ball", "red"), ("ball", "blue"), ("cube", "red"), ("cube", "blue"))]
TRUTHS = {object_caption(t.color, t.shape, t.feature_color): t for t in FEATURED}
TRUTHS.update({object_caption(color, shape): Truth(shape, color, None)
               for shape, color in (("ball", "red"), ("torus", "green"), ("cone", "yellow"))})
# The README's table: half plain, half with the front feature.
TABLE_CAPTIONS = ["a red ball", "a green torus", "a yellow cone", "a red ball with a yellow face",
                  "a blue ball with a yellow face", "a red cube with a white label"]
_PRIOR = None


def run(caption: str, variant: str, steps: int, seed: int) -> dict[str, object]:
    method, scale, guard = VARIANTS[variant]
    spec = resolve_spec(caption, method=method, guidance_scale=scale, steps=steps, seed=seed, preset="draft",
                        janus_guard=guard, prior="stable-diffusion", model="micro")
    return {"variant": variant, **train_and_judge(spec)}


def train_and_judge(spec: JobSpec, config: TrainConfig | None = None) -> dict[str, object]:
    """One NeRF on the micro model (loaded once per process), judged against its caption's true object."""
    global _PRIOR
    if _PRIOR is None:
        _PRIOR = load_prior("stable-diffusion", "micro", "cpu")
    started = time.perf_counter()
    trainer = Trainer(spec, _PRIOR, None, config)
    trainer.run()
    minutes = (time.perf_counter() - started) / 60
    truth = TRUTHS[spec.prompt]
    result = judge_field(trainer.field, true_object(truth), size=48)
    return {"caption": spec.prompt, "seed": spec.seed, "minutes": minutes,
            "r_precision": r_precision(field_views(trainer.field), truth), **result}


def run_table(run, names: list[str], key: str, width: int, captions: list[str], seeds: list[int], steps: int,
              jobs: int) -> dict[str, list[dict]]:
    """``run(caption, name, steps, seed)`` for every caption × name × seed on ``jobs`` processes, a row printed
    as each lands → the results by ``r[key]`` (the name)."""
    header = (f"{'caption':<32} {key:<{width}} {'seed':>4} {'outcome':>8} {'sil_iou':>7} {'col_err':>7} {'r_prec':>6} "
              f"{'min':>5}")
    print(header)
    results: dict[str, list[dict]] = {name: [] for name in names}
    with ProcessPoolExecutor(jobs, initializer=one_torch_thread) as pool:
        futures = [pool.submit(run, c, n, steps, s) for s in seeds for c in captions for n in names]
        for future in as_completed(futures):
            r = future.result()
            results[r[key]].append(r)
            print(f"{r['caption']:<32} {r[key]:<{width}} {r['seed']:>4} {r['outcome']:>8} {r['silhouette_iou']:7.3f} "
                  f"{r['color_error']:7.3f} {r['r_precision']:6.2f} {r['minutes']:5.2f}", flush=True)
    print("-" * len(header))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--captions", nargs="+", default=TABLE_CAPTIONS, choices=list(TRUTHS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    print(f"micro model, draft preset, {args.steps} steps, seeds {args.seeds}, {args.jobs} process(es); "
          f"default janus_guard={DEFAULT_GUARD}")
    started = time.perf_counter()
    results = run_table(run, args.variants, "variant", 17, args.captions, args.seeds, args.steps, args.jobs)

    def rate(variant: str, key: str, value=True) -> float:
        rows = results.get(variant) or []
        return statistics.mean(float(r[key] == value) for r in rows) if rows else float("nan")

    def mean(variant: str, key: str) -> float:
        rows = results.get(variant) or []
        return statistics.mean(r[key] for r in rows) if rows else float("nan")

    for variant in args.variants:
        outcomes = " ".join(f"{name} {sum(r['outcome'] == name for r in results[variant])}" for name in OUTCOMES)
        print(f"{variant:<17} {len(results[variant])} runs: {outcomes}  IoU {mean(variant, 'silhouette_iou'):.3f}  "
              f"colour error {mean(variant, 'color_error'):.3f}  R-precision {mean(variant, 'r_precision'):.2f}  "
              f"{mean(variant, 'minutes'):.2f} min/run")
    print(f"total {time.perf_counter() - started:.0f} s")
    print(f"micro_faithful={rate(DEFAULT_VARIANT, 'outcome', 'faithful'):.2f} "
          f"micro_janus={rate(DEFAULT_VARIANT, 'janus'):.2f} micro_iou={mean(DEFAULT_VARIANT, 'silhouette_iou'):.3f}")


if __name__ == "__main__":
    main()
