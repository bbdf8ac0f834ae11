"""The micro Stable Diffusion judged as a text-to-image model: DDIM samples at s = 7.5 for every caption.

Every object caption of the world (seen pairs, then the held-out ones) is sampled with 30 DDIM steps per seed
and judged by ``nfsd_lab.micro.judge`` (true renders, nothing of the model): shape, colour, and the feature (a
featured caption's sample shows its feature colour; a plain one's shows none); the judge's own ceiling is printed
first, on the world's clean renders. Writes the sample grid (seed 0) to ``docs/micro_samples.png``.

    .venv/bin/python benchmarks/micro_samples.py [--model micro] [--seeds 0 1 2] [--guidance 7.5]

Last line: ``micro_shape=<seen shape accuracy> micro_color=<seen colour accuracy> micro_feature=<seen featured
captions showing their feature> micro_heldout=<held-out both>``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from PIL import Image

from nfsd_lab.micro.judge import accuracy, judge
from nfsd_lab.micro.sampling import ddim_sample
from nfsd_lab.micro.world import DEGRADATIONS, caption_truths, sample_world
from nfsd_server.guidance.registry import load_prior

GRID = Path(__file__).resolve().parents[1] / "docs" / "micro_samples.png"


def save_grid(images: torch.Tensor, path: Path, columns: int = 8, zoom: int = 3) -> None:
    side = images.shape[-1] + 2
    rows = (len(images) + columns - 1) // columns
    grid = torch.ones(3, rows * side, columns * side)
    for index, image in enumerate(images):
        r, c = divmod(index, columns)
        grid[:, r * side + 1:(r + 1) * side - 1, c * side + 1:(c + 1) * side - 1] = image
    picture = Image.fromarray((grid.permute(1, 2, 0) * 255).round().byte().numpy())
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.resize((picture.width * zoom, picture.height * zoom), Image.NEAREST).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="micro")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--grid", type=Path, default=GRID)
    args = parser.parse_args()

    images, captions, truths = sample_world(600, seed=12345)
    clean = [i for i, c in enumerate(captions) if not any(words in c for words in DEGRADATIONS.values())]
    ceiling = accuracy(judge(images[clean].float() / 255), [truths[i] for i in clean])
    print(f"judge on {len(clean)} clean world renders: shape {ceiling['shape']:.3f} colour {ceiling['color']:.3f} "
          f"feature {ceiling['feature']:.3f} (featured renders, 30 % seen from the side or back) "
          f"no feature {ceiling['no_feature']:.3f} (plain)")

    prior = load_prior("stable-diffusion", args.model, "cpu")
    results = {}
    for held_out in (False, True):
        rows = caption_truths(held_out)
        scores = []
        for seed in args.seeds:
            started = time.perf_counter()
            samples = ddim_sample(prior, [c for c, _ in rows], guidance=args.guidance, seed=seed)
            scores.append(accuracy(judge(samples), [t for _, t in rows]))
            if seed == args.seeds[0] and not held_out:
                grid_rows = samples
            if seed == args.seeds[0] and held_out:
                save_grid(torch.cat([grid_rows, samples]), args.grid)
            elapsed = time.perf_counter() - started
        mean = {key: sum(s[key] for s in scores) / len(scores) for key in scores[0]}
        spread = {key: max(s[key] for s in scores) - min(s[key] for s in scores) for key in scores[0]}
        name = "held-out" if held_out else "seen"
        print(f"{name:8s} {len(rows):3d} captions × {len(args.seeds)} seeds: shape {mean['shape']:.3f} "
              f"colour {mean['color']:.3f} both {mean['both']:.3f} (spread {spread['both']:.3f}) feature "
              f"{mean['feature']:.3f} no feature {mean['no_feature']:.3f} ("
              f"{elapsed:.1f} s per seed)")
        results[name] = mean
    print(f"grid: {args.grid}")
    print(f"micro_shape={results['seen']['shape']:.3f} micro_color={results['seen']['color']:.3f} "
          f"micro_feature={results['seen']['feature']:.3f} micro_heldout={results['held-out']['both']:.3f}")


if __name__ == "__main__":
    main()
