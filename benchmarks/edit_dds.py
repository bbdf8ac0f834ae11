"""Edit, don't regenerate: a finished asset edited by delta denoising (DDS), on the micro Stable Diffusion.

Per seed it trains the source ("a red ball", draft preset, the product's defaults), then from that same start,
with the product's edit recipe (``TrainConfig.edit_lr_scale``, ``edit.EDIT_ANCHOR_WEIGHT``, the Janus guard on):
  dds           the edit job as it ships (``nfsd edit``): s·(δ_C(z; y_edit) − δ_C(z̃; y_source)), the shape anchor
  dds+δ_D       the same plus NFSD's domain term of the edit's render (lab variant)
  nfsd          plain NFSD with the new prompt, same start, recipe and anchor: what DDS's difference buys
  keep shape    the edit with the geometry frozen (a recolour)
and a fresh run of the new prompt from nothing, judged every ``--every`` steps, to count how many steps a new
run needs to reach the DDS edit's colour error. Judged against the micro world's true objects (the 3D judge
``field_judge``: colour error, outcome) and against the source (volume IoU of {density > surface}).

    .venv/bin/python benchmarks/edit_dds.py [--seeds 0 1] [--source-steps 400] [--edit-steps 100] [--scales 7.5 ...]
                                            [--variants dds "keep shape" ...] [--jobs N]

Last line: ``edit_color_error=<dds> fresh_color_error=<fresh at the same steps> edit_iou=<dds vs source>
steps_ratio=<edit steps / fresh steps to the same colour error>``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from nfsd_contract import resolve_spec
from nfsd_lab.field_judge import judge_field
from nfsd_lab.micro.judge import true_object
from nfsd_lab.micro.world import Truth, feature_color_for
from nfsd_lab.workers import one_torch_thread
from nfsd_server.guidance.distillation import DeltaDenoising, make_guidance
from nfsd_server.guidance.registry import load_prior
from nfsd_server.guidance.score import needs_negative
from nfsd_server.train import CHECKPOINT_NAME, Callbacks, TrainConfig, Trainer

SOURCE = "a red ball"
EDITS = {  # edit prompt → its true object
    "a blue ball": Truth("ball", "blue", None),
    "a red ball with a yellow face": Truth("ball", "red", feature_color_for("ball", "red")),
}
VARIANTS = ("dds", "dds+δ_D", "nfsd", "keep shape")
_PRIOR = None


class DeltaDenoisingWithDomain(DeltaDenoising):
    """DDS plus NFSD's δ_D of the edit's own render (ε(z; ∅), less ε(z; p_neg) at t ≥ 200): a lab variant."""

    def edit_direction(self, prior, latents_noisy, source_noisy, t, cameras, prompts, source_prompts):
        from nfsd_server.guidance.distillation import predict_rows

        edit_delta, source_delta, _ = self.deltas(prior, latents_noisy, source_noisy, t, cameras, prompts,
                                                  source_prompts)
        eps = predict_rows(prior, latents_noisy, t, cameras, prompts, needs_negative(t.cpu()))
        use_neg = needs_negative(t.cpu()).to(latents_noisy.device).view(-1, 1, 1, 1)
        domain = torch.where(use_neg, eps.uncond - eps.negative, eps.uncond)
        return domain + self.guidance_scale * (edit_delta - source_delta)


def prior():
    global _PRIOR
    if _PRIOR is None:
        _PRIOR = load_prior("stable-diffusion", "micro", "cpu")
    return _PRIOR


def volume_iou(field, other, resolution: int = 48) -> float:
    axis = torch.linspace(-field.bound, field.bound, resolution)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).view(-1, 3)
    with torch.no_grad():
        a, b = field.density(points) > field.surface_density, other.density(points) > other.surface_density
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def judged(field, truth: Truth) -> dict:
    result = judge_field(field, true_object(truth), size=48)
    return {"color_error": result["color_error"], "outcome": result["outcome"]}


def source_run(seed: int, steps: int, folder: Path) -> Path:
    spec = resolve_spec(SOURCE, steps=steps, seed=seed, preset="draft", prior="stable-diffusion", model="micro")
    trainer = Trainer(spec, prior(), folder)
    trainer.run()
    return folder / CHECKPOINT_NAME


def edit_run(source: Path, prompt: str, variant: str, steps: int, seed: int, scale: float, lr_scale: float,
             strength: float, every: int) -> dict:
    """The edit's result, and its colour error every ``every`` steps (``curve``)."""
    spec = resolve_spec(prompt, steps=steps, seed=seed, preset="draft", prior="stable-diffusion", model="micro",
                        edit_of=str(source), source_prompt=SOURCE, keep_shape=variant == "keep shape",
                        guidance_scale=scale, edit_strength=strength)
    trainer = Trainer(spec, prior(), None, TrainConfig(edit_lr_scale=lr_scale))
    if variant == "dds+δ_D":
        trainer.guidance = DeltaDenoisingWithDomain(scale, janus_guard=spec.janus_guard)
    elif variant == "nfsd":
        trainer.guidance = make_guidance("nfsd", scale, janus_guard=spec.janus_guard)
    curve, judge_seconds = [], 0.0

    def judge_every(step, total, loss, eta):
        nonlocal judge_seconds
        if step % every == 0 and step < total:
            judging = time.perf_counter()
            curve.append((step, judged(trainer.field, EDITS[prompt])["color_error"]))
            judge_seconds += time.perf_counter() - judging

    started = time.perf_counter()
    trainer.run(Callbacks(on_progress=judge_every))
    seconds = time.perf_counter() - started - judge_seconds
    result = judged(trainer.field, EDITS[prompt])
    curve.append((steps, result["color_error"]))
    return {"seconds": seconds, "iou_vs_source": volume_iou(trainer.field, trainer.source_field), "curve": curve,
            **result}


def fresh_run(prompt: str, steps: int, every: int, seed: int) -> list[tuple[int, float]]:
    """(step, colour error) every ``every`` steps of a new run of ``prompt`` from nothing."""
    spec = resolve_spec(prompt, steps=steps, seed=seed, preset="draft", prior="stable-diffusion", model="micro")
    trainer = Trainer(spec, prior(), None)
    curve = []
    while trainer.step < steps:
        trainer.train_step()
        if trainer.step % every == 0:
            curve.append((trainer.step, judged(trainer.field, EDITS[prompt])["color_error"]))
    return curve


def one_seed(seed: int, args) -> dict:
    one_torch_thread()
    with tempfile.TemporaryDirectory() as folder:
        source = source_run(seed, args.source_steps, Path(folder))
        rows = {(prompt, variant, scale, lr): edit_run(source, prompt, variant, args.edit_steps, seed, scale, lr,
                                                       args.strength, args.every)
                for prompt in args.prompts for variant in args.variants for scale in args.scales
                for lr in args.lr_scales
                if not (variant == "keep shape" and EDITS[prompt].feature_color)}
    fresh = fresh_run(args.prompts[0], args.source_steps, args.every, seed)
    return {"seed": seed, "rows": rows, "fresh": fresh}


def steps_to_reach(curve: list[tuple[int, float]], error: float) -> float:
    """The first judged step of ``curve`` at or under ``error`` (inf: never)."""
    return next((step for step, value in curve if value <= error), float("inf"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--source-steps", type=int, default=400)
    parser.add_argument("--edit-steps", type=int, default=100)
    parser.add_argument("--every", type=int, default=25, help="judge the edits and the fresh run every this many steps")
    parser.add_argument("--scales", type=float, nargs="+", default=[7.5], help="the edits' guidance scales")
    parser.add_argument("--lr-scales", type=float, nargs="+", default=[TrainConfig.edit_lr_scale],
                        help="the edits' learning rates as multiples of a new run's")
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--prompts", nargs="+", default=list(EDITS), choices=list(EDITS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    print(f"micro model, draft preset: source {SOURCE!r} {args.source_steps} steps, edits {args.edit_steps} steps, "
          f"s={args.scales}, lr ×{args.lr_scales}, edit_strength={args.strength:g}, seeds {args.seeds}")
    started = time.perf_counter()
    with ProcessPoolExecutor(min(args.jobs, len(args.seeds))) as pool:
        results = list(pool.map(one_seed, args.seeds, [args] * len(args.seeds)))
    print(f"{'edit prompt':<32} {'variant':<11} {'s':>5} {'lr×':>4} {'seed':>4} {'col_err':>7} {'iou_src':>7} {'outcome':>9} "
          f"{'secs':>5}  colour error every {args.every} steps")
    for result in results:
        for (prompt, variant, scale, lr), row in result["rows"].items():
            curve = " ".join(f"{error:.3f}" for _, error in row["curve"])
            print(f"{prompt:<32} {variant:<11} {scale:>5g} {lr:>4g} {result['seed']:>4} {row['color_error']:>7.3f} "
                  f"{row['iou_vs_source']:>7.3f} {row['outcome']:>9} {row['seconds']:>5.0f}  {curve}")
    print(f"fresh runs of {args.prompts[0]!r} (step: colour error):")
    for result in results:
        print(f"  seed {result['seed']}: " + " ".join(f"{step}:{error:.3f}" for step, error in result["fresh"]))
    # Per recolour variant: its edit steps over the steps a new run needs to reach the edit's colour error.
    target, ratios = args.prompts[0], {}
    for variant in args.variants:
        for scale, lr in ((scale, lr) for scale in args.scales for lr in args.lr_scales):
            rows = [(r["fresh"], r["rows"][(target, variant, scale, lr)]) for r in results
                    if (target, variant, scale, lr) in r["rows"]]
            if rows:
                fresh_steps = statistics.mean(steps_to_reach(fresh, row["color_error"]) for fresh, row in rows)
                ratios[variant, scale, lr] = (args.edit_steps / fresh_steps,
                                          statistics.mean(row["color_error"] for _, row in rows),
                                          statistics.mean(row["iou_vs_source"] for _, row in rows))
    for (variant, scale, lr), (ratio, error, iou) in ratios.items():
        print(f"  {target!r} {variant:<11} s={scale:<5g} lr ×{lr:<4g} colour error {error:.3f} IoU vs source {iou:.3f} "
              f"steps ratio {ratio:.2f}")
    first = ("dds", args.scales[0], args.lr_scales[0])
    shipped = first if first in ratios else next(iter(ratios))
    at_same = statistics.mean(dict(r["fresh"]).get(args.edit_steps, float("nan")) for r in results)
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min")
    ratio, error, iou = ratios[shipped]
    print(f"edit_color_error={error:.3f} fresh_color_error={at_same:.3f} edit_iou={iou:.3f} steps_ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
