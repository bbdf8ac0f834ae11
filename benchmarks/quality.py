"""NFSD vs SDS on the analytic prior: does the NeRF become the prompt's reference object?

For each reference prompt and each variant (same steps, same seeds) it trains a draft-preset NeRF on the CPU
and reports silhouette IoU and mean albedo error over held-out views, and volume IoU / Chamfer distance of the
density's surface against the reference shape. Variants: NFSD s=7.5, SDS s=7.5, SDS s=100, and NFSD with
the t < 200 switch disabled (the negative prompt used at every t), to see what the switch does.
Each variant runs under each schedule: ``latent-first`` (the preset's ``latent_fraction``: the first part
renders the analytic prior's latent channels directly) and ``rgb-only`` (latent_fraction 0: every step
renders RGB and encodes), so the two can be compared row by row.

    .venv/bin/python benchmarks/quality.py [--steps 300] [--seeds 0] [--prompts "a red ball" ...]
                                           [--variants "nfsd s=7.5"] [--schedules latent-first rgb-only]
                                           [--latent-fraction F]   # latent-first with F instead of the preset's

Last line: ``nfsd_iou=<mean silhouette IoU of NFSD s=7.5>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from nfsd_server.devices import keep_freed_host_memory
from nfsd_server.guidance.analytic import AnalyticPrior
from nfsd_server.guidance.distillation import NFSDGuidance, predict_rows
from nfsd_lab.evaluation import evaluate_nerf, evaluate_shape
from nfsd_server.guidance.references import REFERENCES
from nfsd_contract import resolve_spec
from nfsd_server.train import Trainer


class NFSDWithoutSwitch(NFSDGuidance):
    """Ablation: δ_D = ε(∅) − ε(p_neg) at every t (the paper switches to ε(∅) alone below t = 200)."""

    def direction(self, prior, latents_noisy, noise, t, cameras, prompts):
        eps = predict_rows(prior, latents_noisy, t, cameras, prompts, torch.ones(t.shape[0], dtype=torch.bool))
        return (eps.uncond - eps.negative) + self.guidance_scale * (eps.cond - eps.uncond)


VARIANTS = {
    "nfsd s=7.5": ("nfsd", 7.5, None),
    "sds s=7.5": ("sds", 7.5, None),
    "sds s=100": ("sds", 100.0, None),
    "nfsd no-switch s=7.5": ("nfsd", 7.5, NFSDWithoutSwitch),
}


SCHEDULES = ("latent-first", "rgb-only")


def run(prompt: str, variant: str, steps: int, seed: int, prior: AnalyticPrior, schedule: str,
        latent_fraction: float | None = None) -> dict[str, float]:
    method, scale, guidance_class = VARIANTS[variant]
    settings = resolve_spec(prompt, method=method, guidance_scale=scale, steps=steps, seed=seed, preset="draft")
    trainer = Trainer(settings, prior, None)
    if schedule == "rgb-only":
        trainer.preset = dataclasses.replace(trainer.preset, latent_fraction=0.0)
    elif latent_fraction is not None:
        trainer.preset = dataclasses.replace(trainer.preset, latent_fraction=latent_fraction)
    if guidance_class is not None:
        trainer.guidance = guidance_class(scale)
    trainer.run()
    reference = REFERENCES[prompt]
    return {**evaluate_nerf(trainer.field, reference), **evaluate_shape(trainer.field, reference)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--prompts", nargs="+", default=list(REFERENCES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=SCHEDULES)
    parser.add_argument("--latent-fraction", type=float, help="latent-first with this fraction (default: the preset's)")
    args = parser.parse_args()

    keep_freed_host_memory()  # as the nfsd commands run (cli.main)
    prior = AnalyticPrior()
    from nfsd_server.presets import PRESETS

    fraction = PRESETS["draft"].latent_fraction if args.latent_fraction is None else args.latent_fraction
    print(f"analytic prior, draft preset, latent-first = latent_fraction {fraction}, {args.steps} steps, "
          f"seeds {args.seeds}, CPU")
    header = (f"{'prompt':<15} {'variant':<22} {'schedule':<13} {'sil_iou':>7} {'col_err':>7} {'vol_iou':>7} "
              f"{'chamfer':>7}  mean albedo")
    print(header)
    print("-" * len(header))
    sil_by_variant: dict[str, list[float]] = {f"{v} {sch}": [] for v in args.variants for sch in args.schedules}
    started = time.perf_counter()
    for prompt in args.prompts:
        for variant in args.variants:
            for schedule in args.schedules:
                for seed in args.seeds:
                    s = run(prompt, variant, args.steps, seed, prior, schedule, args.latent_fraction)
                    sil_by_variant[f"{variant} {schedule}"].append(s["silhouette_iou"])
                    albedo = ", ".join(f"{c:.2f}" for c in s["mean_color"])
                    print(
                        f"{prompt:<15} {variant:<22} {schedule:<13} {s['silhouette_iou']:7.3f} {s['color_error']:7.3f} "
                        f"{s['volume_iou']:7.3f} {s['chamfer']:7.3f}  ({albedo}) seed {seed}",
                        flush=True,
                    )
    print("-" * len(header))
    for variant, values in sil_by_variant.items():
        print(f"mean silhouette IoU {variant:<35} {statistics.mean(values):.3f}")
    print(f"total {time.perf_counter() - started:.0f} s")
    print(f"nfsd_iou={statistics.mean(sil_by_variant.get(f'nfsd s=7.5 {args.schedules[0]}', [float('nan')])):.3f}")


if __name__ == "__main__":
    main()
