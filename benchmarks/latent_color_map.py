"""How well the colour→latent map (``Prior.latent_color_map``) predicts what the encoder makes of flat colours.

For each encoder it fits the map as the prior does, and, for comparison, on flat images 4 latent pixels wide
averaged over every latent pixel (all of them border), then reports the relative error ‖W·c + b − z‖ / ‖z‖ of
each against the interior latents (``color_map_interior``) of flat images of 16 random colours encoded at
several sides. The map is used at the prior's ``image_size`` (every RGB render is resized to it before the
encoder), so that column is the one that counts; the others show how much a flat latent depends on the size.

    .venv/bin/python benchmarks/latent_color_map.py [--model DIR_OR_ID | random:tiny] [--sides 16 32 64 128 256]

Last line: ``residual_vae=<error at image_size> residual_taesd=<…>``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from nfsd_server.guidance.prior import color_map_interior, flat_fit_colors
from nfsd_server.guidance.registry import load_prior


def relative_error(weight, bias, colors, latents) -> float:
    predicted = colors @ weight.T + bias
    return float(((predicted - latents).norm(dim=1) / latents.norm(dim=1)).mean())


@torch.no_grad()
def encode_at(prior, colors: torch.Tensor, side: int) -> list[torch.Tensor]:
    """The encoder itself (no resize to image_size) on flat side × side images: K latents (C, h, w)."""
    images = colors[:, :, None, None].expand(-1, 3, side, side)
    return [prior._encode_pixels(image[None])[0] for image in images]


def border_fit(prior) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat images 4 latent pixels wide, averaged over every (border) latent pixel."""
    colors = flat_fit_colors()
    latents = torch.stack([z.mean(dim=(1, 2)) for z in encode_at(prior, colors, prior.latent_scale * 4)])
    solution = torch.linalg.lstsq(torch.cat([colors, torch.ones(len(colors), 1)], dim=1), latents).solution
    return solution[:3].T, solution[3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:tiny", help="a diffusers folder or hub id; random:tiny builds one")
    parser.add_argument("--sides", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    args = parser.parse_args()
    model = args.model
    if model == "random:tiny":
        from nfsd_server.guidance.random_models import save_random_stable_diffusion

        model = str(save_random_stable_diffusion(Path(tempfile.mkdtemp()) / "tiny", name="tiny", seed=0))
    colors = torch.rand(16, 3, generator=torch.Generator().manual_seed(0))
    residuals = {}
    for encoder in ("vae", "taesd"):
        prior = load_prior("stable-diffusion", model, "cpu", encoder=encoder)
        fits = {"border": border_fit(prior), "interior": prior.latent_color_map()}
        print(f"encoder {encoder}: image_size {prior.image_size}, relative error vs interior latents of flat images")
        print(f"  {'fit':<12}" + "".join(f"{side:>8}" for side in args.sides) + f"{'at ' + str(prior.image_size):>10}")
        for name, (weight, bias) in fits.items():
            errors = []
            for side in [*args.sides, prior.image_size]:
                latents = torch.stack([color_map_interior(z) for z in encode_at(prior, colors, side)])
                errors.append(relative_error(weight, bias, colors, latents))
            print(f"  {name:<12}" + "".join(f"{e:8.3f}" for e in errors[:-1]) + f"{errors[-1]:10.3f}")
        residuals[encoder] = errors[-1]
    print(" ".join(f"residual_{name}={value:.3f}" for name, value in residuals.items()))


if __name__ == "__main__":
    main()
