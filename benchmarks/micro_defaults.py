"""The recipe's defaults re-decided on the micro Stable Diffusion: one knob at a time away from the shipped recipe.

Every row is the shipped 3D recipe (NFSD + Janus guard, s = 7.5, draft preset fitted to the model) with one
setting changed: the timestep range and its annealing (``TrainConfig``), the learning rates, the Janus guard's
gain and ramp (``guidance/score.py``'s constants, set in each worker process). Each run is judged as
``micro_3d.py`` judges (outcome, silhouette IoU, colour error, R-precision over 8 views); the captions mix plain
objects with featured ones, since the guard only acts where a caption has a front. Runs go to ``--jobs``
processes of one torch thread each.

    .venv/bin/python benchmarks/micro_defaults.py [--steps 400] [--seeds 0 1] [--knobs "t_min 0.02" ...] [--jobs N]

Last line: ``best_iou=<knob> best_color=<knob> default_iou=… default_color=…``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from micro_3d import TRUTHS, run_table, train_and_judge
from nfsd_contract import resolve_spec
from nfsd_lab.field_judge import OUTCOMES
from nfsd_server.guidance import score
from nfsd_server.train import TrainConfig

DEFAULTS = TrainConfig()
KNOBS = {  # name → (TrainConfig overrides, guidance/score.py overrides)
    "default": ({}, {}),
    "t_min 0.02": ({"t_min": 0.02}, {}),
    "t_min 0.1": ({"t_min": 0.1}, {}),
    "t_max_end 0.98 (no annealing)": ({"t_max_end": 0.98}, {}),
    "t_max_end 0.7": ({"t_max_end": 0.7}, {}),
    "linear annealing": ({"t_anneal_power": 1.0}, {}),
    "lr x0.5": ({"lr_encoding": DEFAULTS.lr_encoding / 2, "lr_networks": DEFAULTS.lr_networks / 2}, {}),
    "lr x2": ({"lr_encoding": DEFAULTS.lr_encoding * 2, "lr_networks": DEFAULTS.lr_networks * 2}, {}),
    "guard gain 3": ({}, {"VIEW_CONTRAST_GAIN": 3.0}),
    "guard gain 30": ({}, {"VIEW_CONTRAST_GAIN": 30.0}),
    "guard ramp 45-90": ({}, {"GUARD_RAMP_DEG": (45.0, 90.0)}),
}
ORIGINAL_SCORE = {"VIEW_CONTRAST_GAIN": score.VIEW_CONTRAST_GAIN, "GUARD_RAMP_DEG": score.GUARD_RAMP_DEG}
CAPTIONS = ["a red ball", "a green torus", "a blue ball with a yellow face", "a red cube with a white label"]


def run(caption: str, knob: str, steps: int, seed: int) -> dict[str, object]:
    config_overrides, score_overrides = KNOBS[knob]
    for name in ("VIEW_CONTRAST_GAIN", "GUARD_RAMP_DEG"):  # a worker runs many knobs: reset before each run
        setattr(score, name, score_overrides.get(name, ORIGINAL_SCORE[name]))
    spec = resolve_spec(caption, steps=steps, seed=seed, preset="draft", prior="stable-diffusion", model="micro")
    return {"knob": knob, **train_and_judge(spec, TrainConfig(**config_overrides))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--captions", nargs="+", default=CAPTIONS, choices=list(TRUTHS))
    parser.add_argument("--knobs", nargs="+", default=list(KNOBS), choices=list(KNOBS))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    print(f"micro model, NFSD + guard s=7.5, draft preset, {args.steps} steps, seeds {args.seeds}, "
          f"{args.jobs} process(es); defaults t_min={DEFAULTS.t_min} t_max {DEFAULTS.t_max_start}→{DEFAULTS.t_max_end} "
          f"power {DEFAULTS.t_anneal_power}, lr {DEFAULTS.lr_encoding}/{DEFAULTS.lr_networks}, "
          f"guard gain {score.VIEW_CONTRAST_GAIN} ramp {score.GUARD_RAMP_DEG}")
    started = time.perf_counter()
    results = run_table(run, args.knobs, "knob", 30, args.captions, args.seeds, args.steps, args.jobs)

    def mean(knob: str, key: str, featured: bool | None = None) -> float:
        rows = [r for r in results[knob] if featured is None or ("with" in r["caption"]) == featured]
        return statistics.mean(r[key] for r in rows) if rows else float("nan")

    print(f"{'knob':<30} {'runs':>4} {'outcomes':<42} {'IoU':>6} {'col_err':>7} {'r_prec':>6} {'IoU plain':>9} "
          f"{'col plain':>9} {'min/run':>7}")
    for knob in args.knobs:
        rows = results[knob]
        outcomes = " ".join(f"{name} {sum(r['outcome'] == name for r in rows)}" for name in OUTCOMES)
        print(f"{knob:<30} {len(rows):>4} {outcomes:<42} {mean(knob, 'silhouette_iou'):6.3f} "
              f"{mean(knob, 'color_error'):7.3f} {mean(knob, 'r_precision'):6.2f} "
              f"{mean(knob, 'silhouette_iou', False):9.3f} {mean(knob, 'color_error', False):9.3f} "
              f"{mean(knob, 'minutes'):7.2f}")
    print(f"total {time.perf_counter() - started:.0f} s")
    best_iou = max(args.knobs, key=lambda k: mean(k, "silhouette_iou"))
    best_color = min(args.knobs, key=lambda k: mean(k, "color_error"))
    default = "default" if "default" in results else args.knobs[0]
    print(f"best_iou={best_iou!r} best_color={best_color!r} default_iou={mean(default, 'silhouette_iou'):.3f} "
          f"default_color={mean(default, 'color_error'):.3f}")


if __name__ == "__main__":
    main()
