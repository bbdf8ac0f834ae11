"""The paper's first experiment on the micro model: score distillation straight into its latent, per variant.

Every caption's latent (4 × 8 × 8) starts from the same N(0, 1) draw per seed and is optimised for ``--steps``
steps by plain SGD (``--optimizer adam``: Adam rescales each direction by its own variance, so a noise-free
direction takes larger steps than a noisy one; SGD gives equal directions equal steps) along one direction of
``nfsd_server.guidance.score`` (the engine's own functions, so what is measured is what ships): SDS at s = 7.5 and
100, NFSD at 7.5, NFSD with its t < 200 rule off (the negative prompt at every t), and s·δ_C alone (a
diagnostic: NFSD without its domain term). t is drawn as the trainer draws it, its upper end annealed
(``--t-min`` low enough that the t < 200 rule acts). No VSD baseline: it needs a second ε network fitted on the
particles, not built here.

Judged against the world's true renders of each caption (nothing of the model) and beside the model's own DDIM
samples at s = 7.5:
- fidelity: the micro judge's shape-and-colour accuracy (R-precision-like);
- ``nn``: distance to the data, the mean over results of the smallest mean |Δ| per pixel to the caption's true
  renders (nominal object, 16 views, unlit and lit), lower is nearer;
- smoothness: high-frequency energy (a Laplacian's mean square) over the true renders' (< 1 over-smoothed);
- saturation: the object's mean HSV saturation over the truth's (> 1 over-saturated), and the share of its
  pixels with a channel clipped at 0 or 1.

    .venv/bin/python benchmarks/distill_2d.py [--seeds 0 1 2 3] [--steps 400] [--lr 0.3] [--optimizer sgd]

Writes ``docs/distill_2d.png`` (seed 0: one row per variant, then DDIM samples and true renders; a column per
caption). Last line: ``nfsd_nn=… sds75_nn=… sds100_nn=…`` (the distance to the data; the paper's FID stand-in).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from micro_samples import save_grid
from nfsd_contract.constants import NFSD_NEGATIVE_PROMPT
from nfsd_lab.micro.judge import accuracy, judge, silhouettes
from nfsd_lab.micro.sampling import ddim_sample
from nfsd_lab.micro.world import Truth, caption_truths, render_truth
from nfsd_server.guidance.registry import load_prior
from nfsd_server.guidance.score import nfsd_direction, sds_direction, timestep_weight
from nfsd_server.scene.cameras import make_cameras
from nfsd_server.train import TrainConfig, timestep_range

GRID = Path(__file__).resolve().parents[1] / "docs" / "distill_2d.png"


@dataclass(frozen=True)
class Variant:
    name: str
    method: str  # "sds" | "nfsd"
    guidance: float
    small_t_rule: bool = True  # NFSD: δ_D = ε(∅) below t = 200; off: ε(∅) − ε(p_neg) at every t
    domain_term: bool = True  # NFSD without δ_D: s·δ_C alone (a diagnostic: which of NFSD's two terms does what)


VARIANTS = (
    Variant("SDS s=7.5", "sds", 7.5),
    Variant("SDS s=100", "sds", 100.0),
    Variant("NFSD s=7.5", "nfsd", 7.5),
    Variant("NFSD, no t<200 rule", "nfsd", 7.5, small_t_rule=False),
    Variant("s·δ_C alone, s=7.5", "nfsd", 7.5, domain_term=False),
)


def benchmark_captions() -> list[tuple[str, Truth]]:
    """Two colours of every shape, plus every featured caption of the first colour per featured shape."""
    rows, per_shape = [], {}
    for caption, truth in caption_truths():
        if truth.feature_color is None and per_shape.get(truth.shape, 0) < 2:
            per_shape[truth.shape] = per_shape.get(truth.shape, 0) + 1
            rows.append((caption, truth))
    featured = {}
    for caption, truth in caption_truths():
        if truth.feature_color is not None and featured.get(truth.shape, 0) < 2:
            featured[truth.shape] = featured.get(truth.shape, 0) + 1
            rows.append((caption, truth))
    return rows


def distill(prior, captions: list[str], variant: Variant, seeds: list[int], steps: int, lr: float, t_min: float,
            optimizer_name: str = "sgd") -> Tensor:
    """(len(seeds) × len(captions), C, h, w) optimised latents, seed-major."""
    n = len(captions)
    embeddings = prior._embed(list(captions) + ["", NFSD_NEGATIVE_PROMPT])
    cond = embeddings[:n].repeat(len(seeds), 1, 1)
    null = embeddings[n:n + 1].expand(len(cond), -1, -1)
    negative = embeddings[n + 1:].expand(len(cond), -1, -1)
    side = prior.latent_side()
    latents = torch.cat([torch.randn(n, prior.latent_channels, side, side, generator=torch.Generator().manual_seed(s))
                         for s in seeds]).requires_grad_(True)
    optimizer = (torch.optim.Adam if optimizer_name == "adam" else torch.optim.SGD)([latents], lr=lr)
    generator = torch.Generator().manual_seed(1234)
    total = prior.num_train_timesteps
    schedule = dataclasses.replace(TrainConfig(), t_min=t_min)  # the trainer's annealed t range
    # NFSD's negative rows only where its domain term is used: s·δ_C alone needs cond and ∅.
    embeddings = [cond, null] + ([negative] if variant.method == "nfsd" and variant.domain_term else [])
    for step in range(steps):
        t_lo, t_hi = timestep_range(schedule, step / max(1, steps - 1), total)
        t = torch.randint(t_lo, t_hi, (len(latents),), generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        alphas = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = alphas.sqrt() * latents.detach() + (1 - alphas).sqrt() * noise
        with torch.no_grad():
            eps = prior._denoise(torch.cat([noisy] * len(embeddings)), t.repeat(len(embeddings)),
                                 torch.cat(embeddings)).chunk(len(embeddings))
            if variant.method == "sds":
                direction = sds_direction(eps[0], eps[1], noise, variant.guidance)
            elif not variant.domain_term:
                direction = variant.guidance * (eps[0] - eps[1])
            else:
                t_rule = t if variant.small_t_rule else torch.full_like(t, total - 1)
                direction = nfsd_direction(eps[0], eps[1], eps[2], t_rule, variant.guidance)
        optimizer.zero_grad()
        latents.grad = timestep_weight(prior.alphas_cumprod, t) * direction
        optimizer.step()
    return latents.detach()


def true_renders(truth: Truth, size: int) -> Tensor:
    """(32, 3, S, S): the nominal object from 8 azimuths × elevations 15° and 40°, unlit and lit from the camera."""
    azimuths = torch.arange(8).float().repeat(2) * 45.0
    elevations = torch.tensor([15.0] * 8 + [40.0] * 8)
    cameras = make_cameras(elevations, azimuths, torch.full((16,), 2.25), torch.full((16,), 45.0))
    cameras.light_dir = cameras.c2w[:, :3, 3] / cameras.c2w[:, :3, 3].norm(dim=-1, keepdim=True)
    unlit, _ = render_truth(truth, cameras, size)
    lit, _ = render_truth(truth, cameras, size, shading="diffuse")
    return torch.cat([unlit, lit])


def high_frequency(images: Tensor) -> Tensor:
    """(N,) mean square of the luminance's Laplacian."""
    gray = images.mean(1, keepdim=True)
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    return F.conv2d(gray, kernel).pow(2).mean((1, 2, 3))


def saturation_and_clipping(images: Tensor) -> tuple[Tensor, Tensor]:
    """(N,) each: the object's (silhouette's) mean HSV saturation, and the share of its pixels clipped at 0 or 1."""
    masks = silhouettes(images)
    high, low = images.amax(1), images.amin(1)
    saturation = (high - low) / high.clamp_min(1e-6)
    clipped = ((images >= 0.995) | (images <= 0.005)).any(1).float()
    area = masks.flatten(1).sum(-1).clamp_min(1)
    return (saturation * masks).flatten(1).sum(-1) / area, (clipped * masks).flatten(1).sum(-1) / area


def measure(images: Tensor, truths: list[Truth], references: dict[Truth, Tensor]) -> dict[str, float]:
    """One variant's row: fidelity, nn distance, smoothness and saturation ratios (means over its images)."""
    scores = accuracy(judge(images), truths)
    nn, smooth, saturation = [], [], []
    reference_hf = {truth: high_frequency(refs).mean() for truth, refs in references.items()}
    reference_sat = {truth: saturation_and_clipping(refs)[0].mean() for truth, refs in references.items()}
    sat, clipped = saturation_and_clipping(images)
    hf = high_frequency(images)
    for i, truth in enumerate(truths):
        nn.append(float((references[truth] - images[i]).abs().mean((1, 2, 3)).min()))
        smooth.append(float(hf[i] / reference_hf[truth]))
        saturation.append(float(sat[i] / reference_sat[truth]))
    return {"fidelity": scores["both"], "nn": sum(nn) / len(nn), "smooth": sum(smooth) / len(smooth),
            "saturation": sum(saturation) / len(saturation), "clipped": float(clipped.mean())}


def summarise(per_seed: list[dict[str, float]]) -> tuple[str, dict[str, float]]:
    """(the table's cells: mean ± half the spread across seeds, the means)."""
    keys = per_seed[0]
    mean = {k: sum(s[k] for s in per_seed) / len(per_seed) for k in keys}
    spread = {k: max(s[k] for s in per_seed) - min(s[k] for s in per_seed) for k in keys}
    return "  ".join(f"{mean[k]:6.3f} ±{spread[k] / 2:5.3f}" for k in keys), mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="micro")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--t-min", type=float, default=0.02)
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    parser.add_argument("--grid", type=Path, default=GRID)
    args = parser.parse_args()
    torch.set_num_threads(1)

    prior = load_prior("stable-diffusion", args.model, "cpu")
    rows = benchmark_captions()
    captions, truths = [c for c, _ in rows], [t for _, t in rows]
    n = len(rows)
    references = {truth: true_renders(truth, prior.image_size) for truth in truths}
    print(f"{n} captions ({sum(t.feature_color is not None for t in truths)} featured) × seeds {args.seeds}, "
          f"{args.steps} steps, {args.optimizer} lr {args.lr}, t from {args.t_min:.2f} T")
    print(f"{'variant':22s} {'fidelity':>14s} {'nn (to data)':>14s} {'HF / truth':>14s} {'sat / truth':>14s} "
          f"{'clipped':>14s}  min")
    table, grid = {}, []
    started = time.perf_counter()
    samples = [ddim_sample(prior, captions, guidance=7.5, seed=seed) for seed in args.seeds]
    line, table["ddim"] = summarise([measure(s, truths, references) for s in samples])
    print(f"{'DDIM samples s=7.5':22s} {line}  {(time.perf_counter() - started) / 60:4.1f}")
    for variant in VARIANTS:
        started = time.perf_counter()
        latents = distill(prior, captions, variant, args.seeds, args.steps, args.lr, args.t_min, args.optimizer)
        images = prior.decode(latents)
        per_seed = [measure(images[k * n:(k + 1) * n], truths, references) for k in range(len(args.seeds))]
        line, table[variant.name] = summarise(per_seed)
        grid.append(images[:n])
        print(f"{variant.name:22s} {line}  {(time.perf_counter() - started) / 60:4.1f}")
    nominal = torch.stack([references[truth][0] for truth in truths])  # azimuth 0, unlit: the front
    save_grid(torch.cat(grid + [samples[0], nominal]), args.grid, columns=n)
    print(f"grid: {args.grid} (rows: {', '.join(v.name for v in VARIANTS)}, DDIM, truth)")
    print(f"nfsd_nn={table['NFSD s=7.5']['nn']:.4f} sds75_nn={table['SDS s=7.5']['nn']:.4f} "
          f"sds100_nn={table['SDS s=100']['nn']:.4f}")


if __name__ == "__main__":
    main()
