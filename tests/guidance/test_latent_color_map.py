"""The colour→latent map is fitted where it is used: interior latents of flat images at the prior's image side."""

import pytest
import torch

from nfsd_server.guidance.prior import color_map_interior, flat_fit_colors
from nfsd_server.guidance.registry import load_prior


@pytest.mark.parametrize("encoder", ["vae", "taesd"])
def test_the_map_is_the_least_squares_fit_to_interior_latents_at_the_image_side(tiny_sd_dir, encoder):
    prior = load_prior("stable-diffusion", str(tiny_sd_dir), "cpu", encoder=encoder)
    colors = flat_fit_colors()
    with torch.no_grad():  # what an RGB render of a flat colour becomes: encode() at any side resizes to image_size
        latents = torch.stack([color_map_interior(prior.encode(c[None, :, None, None].expand(1, 3, 24, 24))[0])
                               for c in colors])
    design = torch.cat([colors, torch.ones(len(colors), 1)], dim=1)
    expected = torch.linalg.lstsq(design, latents).solution
    weight, bias = prior.latent_color_map()
    assert torch.allclose(weight, expected[:3].T, atol=1e-4) and torch.allclose(bias, expected[3], atol=1e-4)


def test_the_interior_leaves_out_an_eighth_of_each_side():
    latent = torch.zeros(1, 16, 16)
    latent[0, 2:14, 2:14] = 1.0  # the border two pixels are different, as a zero-padded conv makes them
    assert float(color_map_interior(latent)[0]) == 1.0
    assert float(color_map_interior(torch.arange(16.0).view(1, 4, 4))[0]) == (5 + 6 + 9 + 10) / 4  # ≥ 1 pixel
