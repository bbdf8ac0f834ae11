"""The NeRF's latent head: renders straight into a prior's latent space, background included."""

import pytest
import torch

from nfsd_server.guidance.analytic import AnalyticPrior, images_to_latents
from nfsd_server.scene.cameras import camera_rays, make_cameras
from nfsd_server.scene.encoding import HashGridConfig
from nfsd_server.scene.field import FieldConfig, NeRFField, SolidBackground
from nfsd_server.scene.renderer import OccupancyGridRenderer, RendererConfig, StratifiedRenderer

GRID = HashGridConfig(n_levels=4, log2_table_size=10, base_resolution=8, max_resolution=64)


def _field(latent_channels=4):
    torch.manual_seed(0)
    field = NeRFField(FieldConfig(grid=GRID, hidden_dim=16, latent_channels=latent_channels))
    field.set_latent_map(*AnalyticPrior().latent_color_map())
    return field


def _rays(side=12):
    cameras = make_cameras(torch.tensor([20.0]), torch.tensor([30.0]), torch.tensor([3.2]), torch.tensor([45.0]))
    return camera_rays(cameras, side, side)


@pytest.mark.parametrize("renderer_class", [StratifiedRenderer, OccupancyGridRenderer])
def test_latent_render_is_the_colour_map_of_the_albedo_render_at_start(renderer_class):
    field, background = _field(), SolidBackground((0.2, 0.4, 0.9))
    renderer = renderer_class(RendererConfig(n_samples=16))
    renderer.update(0, field)
    origins, directions = _rays()
    out = renderer(field, background, origins, directions, latent=True)
    assert out.latent.shape == (1, 12, 12, 4) and out.albedo.shape == (1, 12, 12, 3)
    # latent = the analytic prior's encoding of the albedo render, background's latent colour included
    # (corner pixels miss the blob: pure background).
    expected = images_to_latents(out.albedo.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    assert torch.allclose(out.latent, expected, atol=1e-5)
    corner = out.latent[0, 0, 0]
    assert out.opacity[0, 0, 0] < 1e-3
    assert torch.allclose(corner, field.latent_from(torch.tensor([0.2, 0.4, 0.9])), atol=1e-3)
    plain = renderer(field, background, origins, directions)
    assert plain.latent is None and torch.allclose(plain.rgb, out.albedo, atol=1e-6)


def test_latent_gradient_reaches_albedo_and_density():
    field = _field()
    origins, directions = _rays(8)
    out = StratifiedRenderer(RendererConfig(n_samples=16))(field, SolidBackground(), origins, directions, latent=True)
    out.latent.square().sum().backward()
    assert field.albedo_net[0].weight.grad.abs().sum() > 0  # the latent phase trains the colours previews show
    assert field.density_net[0].weight.grad.abs().sum() > 0  # and the shape
    assert field.latent_weight.requires_grad is False  # the prior's map stays fixed
    assert "latent_weight" not in dict(field.named_parameters())  # nothing free in latent space to cheat with


def test_latent_render_is_unlit():
    field = _field()
    origins, directions = _rays(4)
    with pytest.raises(ValueError, match="latent renders are unlit"):
        StratifiedRenderer()(field, SolidBackground(), origins, directions, "diffuse", torch.ones(1, 3), latent=True)


def test_field_without_latent_channels_has_no_latent_head():
    field = NeRFField(FieldConfig(grid=GRID, hidden_dim=16))
    assert "latent_weight" not in field.state_dict()
