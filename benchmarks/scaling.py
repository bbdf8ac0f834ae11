"""How an NFSD step's cost grows with render resolution and hash-grid size (tiny random SD, so the NeRF dominates).

    .venv/bin/python benchmarks/scaling.py            # CPU by default here; a few minutes

Starts from the draft preset and changes one knob at a time: the rendered side (64/128/256 px, draft grid),
then the hash grid (levels 8/16 × table 2^14/2^16/2^19, at 64 px). Each row: median ms of the render, the
backward (VAE encoder + NeRF) and the whole step, plus the NeRF's parameter count. Medians over interleaved
repeats; a shared machine makes single figures noisy, the trend is the point.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_cost import measure  # noqa: E402  (sibling script)

from nfsd_server.devices import default_device  # noqa: E402
from nfsd_server.guidance.registry import load_prior  # noqa: E402
from nfsd_server.guidance.random_models import save_random_stable_diffusion  # noqa: E402
from nfsd_server.scene.encoding import HashGridConfig  # noqa: E402
from nfsd_server.presets import PRESETS  # noqa: E402


def variants() -> list[tuple[str, int, HashGridConfig]]:
    """(label, render side, grid): resolution sweep on the draft grid, then grid sweep at 64 px."""
    draft = PRESETS["draft"]
    rows = [(f"side {side}", side, draft.grid) for side in (64, 128, 256)]
    for levels in (8, 16):
        for log2 in (14, 16, 19):
            grid = HashGridConfig(n_levels=levels, log2_table_size=log2, base_resolution=16, max_resolution=2048)
            rows.append((f"L{levels} T2^{log2}", 64, grid))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="measured steps per row (after 1 warm-up)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device) if args.device else default_device()

    with tempfile.TemporaryDirectory(prefix="nfsd-scaling-") as scratch:
        prior = load_prior("stable-diffusion", str(save_random_stable_diffusion(Path(scratch) / "tiny-sd")), device)
        draft = PRESETS["draft"]
        print(f"NFSD step cost on {device}, tiny random SD, draft preset ({draft.n_samples} samples/ray, "
              f"hidden {draft.hidden_dim}) with one knob changed; median ms over {args.steps} steps")
        print(f"{'variant':14}{'side':>6}{'levels':>8}{'log2 T':>8}{'params':>11}{'render':>10}{'backward':>10}{'step':>10}")
        for label, side, grid in variants():
            preset = dataclasses.replace(draft, grid=grid, resolution_schedule=((0.0, side),), latent_fraction=0.0)
            samples = measure(prior, "draft", preset, args.steps, warmup=1, variants=("nfsd",))["nfsd", f"rgb {side}"]
            params = grid.n_levels * 2**grid.log2_table_size * grid.features_per_level
            ms = {key: 1e3 * samples.median(samples.stages[key]) for key in ("render", "backward")}
            print(f"{label:14}{side:>6}{grid.n_levels:>8}{grid.log2_table_size:>8}{params:>11,}"
                  f"{ms['render']:10.1f}{ms['backward']:10.1f}{1e3 * samples.median(samples.step):10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
