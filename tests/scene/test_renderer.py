import math

import torch
from nfsd_server.scene.cameras import camera_rays, make_cameras
from nfsd_server.scene.field import SolidBackground
from nfsd_server.scene.renderer import (
    OccupancyGridRenderer,
    RendererConfig,
    StratifiedRenderer,
    make_renderer,
    ray_aabb,
)
from torch import nn


class ConstantSphere(nn.Module):
    """Density σ inside a ball of radius r, 0 outside; albedo fixed."""

    bound = 1.0

    def __init__(self, sigma=4.0, radius=0.6, color=(0.8, 0.2, 0.1)):
        super().__init__()
        self.sigma, self.radius = sigma, radius
        self.register_buffer("color", torch.tensor(color))

    def forward(self, points):
        return self.density(points), self.color.expand(points.shape[0], 3)

    def density(self, points):
        return torch.where(points.norm(dim=-1) < self.radius, self.sigma, 0.0)

    def normals(self, points):
        return points / points.norm(dim=-1, keepdim=True)


def brute_force_opacity(field, origin, direction, n=20000):
    """Riemann sum of transmittance along one ray, in float64, one sample at a time in spirit."""
    near, far = ray_aabb(origin[None], direction[None], field.bound)
    ts = torch.linspace(float(near), float(far), n + 1, dtype=torch.float64)
    delta = ts[1:] - ts[:-1]
    mids = (ts[1:] + ts[:-1]) / 2
    sigma = field.density((origin[None].double() + mids[:, None] * direction[None].double()).float()).double()
    return 1 - math.exp(-float((sigma * delta).sum()))


def test_stratified_renderer_matches_analytic_and_brute_force_opacity():
    field = ConstantSphere()
    cams = make_cameras(torch.tensor([10.0]), torch.tensor([30.0]), torch.tensor([3.0]), torch.tensor([45.0]))
    origins, dirs = camera_rays(cams, 16, 16)
    out = StratifiedRenderer(RendererConfig(n_samples=512))(field, SolidBackground((0.0, 0.0, 1.0)), origins, dirs)
    o, d = origins[0].reshape(-1, 3), dirs[0].reshape(-1, 3)
    # Analytic: chord length through the ball, then 1 − exp(−σ·chord).
    b = (o * d).sum(-1)
    disc = (b**2 - (o * o).sum(-1) + field.radius**2).clamp_min(0)
    analytic = 1 - torch.exp(-field.sigma * 2 * disc.sqrt())
    got = out.opacity[0].reshape(-1)
    assert torch.allclose(got, analytic, atol=0.03)
    for i in (0, 100, 136, 255):
        assert abs(float(got[i]) - brute_force_opacity(field, o[i], d[i])) < 0.03
    # Colour is albedo over blue background by opacity.
    expected_rgb = got[:, None] * field.color + (1 - got[:, None]) * torch.tensor([0.0, 0.0, 1.0])
    assert torch.allclose(out.rgb[0].reshape(-1, 3), expected_rgb, atol=1e-5)


def test_rays_that_miss_the_scene_show_background_only():
    field = ConstantSphere()
    cams = make_cameras(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([3.0]), torch.tensor([45.0]))
    origins, dirs = camera_rays(cams, 8, 8)
    dirs = -dirs  # looking away from the scene
    out = StratifiedRenderer()(field, SolidBackground((0.2, 0.3, 0.4)), origins, dirs)
    assert torch.equal(out.opacity, torch.zeros_like(out.opacity))
    assert torch.allclose(out.rgb, torch.tensor([0.2, 0.3, 0.4]).expand_as(out.rgb))


def test_diffuse_shading_lights_the_side_facing_the_light():
    field = ConstantSphere(sigma=200.0)
    cams = make_cameras(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([3.0]), torch.tensor([45.0]))
    origins, dirs = camera_rays(cams, 32, 32)
    light = torch.tensor([[1.0, 0.0, 0.0]])  # from +X: the image's right half is lit
    out = StratifiedRenderer(RendererConfig(n_samples=256))(field, SolidBackground(), origins, dirs, "diffuse", light)
    row = out.rgb[0, 16, :, 0]
    assert row[20] > row[11] + 0.2  # right of centre brighter than left of centre


def test_every_device_gets_the_one_torch_occupancy_grid_sampler():
    assert type(make_renderer(RendererConfig(), torch.device("cpu"))) is OccupancyGridRenderer


class CountingField(nn.Module):
    """Wraps a field and counts the points the renderer asks it about (forward only: training samples)."""

    def __init__(self, field):
        super().__init__()
        self.field, self.bound, self.points_seen = field, field.bound, 0

    def forward(self, points):
        self.points_seen += points.shape[0]
        return self.field(points)

    def density(self, points):
        return self.field.density(points)

    def normals(self, points):
        return self.field.normals(points)


def orbit_rays(side=24):
    cams = make_cameras(torch.tensor([20.0, -5.0]), torch.tensor([30.0, 200.0]), torch.full((2,), 3.0),
                        torch.full((2,), 40.0))
    return camera_rays(cams, side, side)


def test_occupancy_grid_skips_empty_space_without_changing_the_image():
    field = CountingField(ConstantSphere(radius=0.4))
    origins, dirs = orbit_rays()
    config = RendererConfig(n_samples=64)
    occupancy = OccupancyGridRenderer(config)
    occupancy.update(0, field)
    assert 0.01 < occupancy.occupancy.float().mean() < 0.1  # the ball and one cell around it
    background = SolidBackground((0.0, 0.0, 1.0))
    pruned = occupancy(field, background, origins, dirs, generator=torch.Generator().manual_seed(0))
    seen = field.points_seen
    full = StratifiedRenderer(config)(field, background, origins, dirs, generator=torch.Generator().manual_seed(0))
    assert seen < (field.points_seen - seen) / 5  # far fewer field evaluations than every sample…
    assert torch.allclose(pruned.rgb, full.rgb, atol=1e-6)  # …for the same picture
    assert torch.allclose(pruned.opacity, full.opacity, atol=1e-6)


def test_an_empty_grid_renders_background_only_and_still_backpropagates():
    from nfsd_server.scene.field import LearnedBackground

    field = CountingField(ConstantSphere())
    renderer = OccupancyGridRenderer(RendererConfig(n_samples=16))
    renderer.occupancy.zero_()
    background = LearnedBackground()
    origins, dirs = orbit_rays(8)
    out = renderer(field, background, origins, dirs, "diffuse", torch.tensor([[0.0, 0.0, 1.0]] * 2),
                   torch.Generator().manual_seed(0))
    assert field.points_seen == 1  # one masked slot (a budget is never empty), weighing nothing:
    assert torch.equal(out.opacity, torch.zeros_like(out.opacity))
    out.rgb.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in background.parameters())


def test_same_generator_seed_same_render_and_jitter_comes_only_from_it():
    from nfsd_server.scene.encoding import HashGridConfig
    from nfsd_server.scene.field import FieldConfig, NeRFField

    torch.manual_seed(0)
    field = NeRFField(FieldConfig(grid=HashGridConfig(n_levels=4, log2_table_size=12, max_resolution=64), hidden_dim=16))
    renderer = OccupancyGridRenderer(RendererConfig(n_samples=32))
    renderer.update(0, field)
    origins, dirs = orbit_rays(8)

    def render(seed):
        torch.manual_seed(1234 + seed)  # a global RNG must not matter
        return renderer(field, SolidBackground(), origins, dirs, generator=torch.Generator().manual_seed(seed)).rgb

    assert torch.equal(render(3), render(3))
    assert not torch.equal(render(3), render(4))


def test_dilation_grows_an_occupied_cell_to_its_26_neighbours():
    from nfsd_server.scene.renderer import dilate

    occupancy = torch.zeros(6, 6, 6, dtype=torch.bool)
    occupancy[2, 3, 4] = True
    occupancy[0, 0, 0] = True  # at the corner: no wrap-around
    grown = dilate(occupancy)
    assert grown.sum() == 27 + 8
    assert grown[1:4, 2:5, 3:6].all() and grown[:2, :2, :2].all() and not grown[5, 5, 5]


def test_many_samples_are_recomputed_in_the_backward_with_the_same_gradients():
    """Over ``recompute_above`` evaluated samples the field's activations are not kept for the backward
    (bounded memory for a space-filling density), and the render and every gradient are unchanged."""
    from nfsd_server.scene.encoding import HashGridConfig
    from nfsd_server.scene.field import FieldConfig, NeRFField

    torch.manual_seed(0)
    field = NeRFField(FieldConfig(grid=HashGridConfig(n_levels=4, log2_table_size=12, base_resolution=8,
                                                       max_resolution=64), hidden_dim=16))
    cameras = make_cameras(torch.tensor([20.0]), torch.tensor([30.0]), torch.tensor([3.2]), torch.tensor([45.0]))
    origins, directions = camera_rays(cameras, 16, 16)  # 256 rays × 16 samples = 4096 samples
    results = {}
    for recompute_above in (1 << 20, 1000):  # never; in chunks of 1000
        renderer = StratifiedRenderer(RendererConfig(n_samples=16, recompute_above=recompute_above))
        field.zero_grad()
        saved = []

        def pack(tensor):
            saved.append(tensor.numel() * tensor.element_size())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            out = renderer(field, SolidBackground(), origins, directions, generator=torch.Generator().manual_seed(1))
        out.rgb.square().sum().backward()
        grads = [p.grad.clone() for p in field.parameters()]
        results[recompute_above] = (out.rgb.detach(), grads, sum(saved))
    (rgb_kept, grads_kept, bytes_kept), (rgb_recomputed, grads_recomputed, bytes_recomputed) = results.values()
    assert torch.allclose(rgb_kept, rgb_recomputed, atol=1e-6)
    for kept, recomputed in zip(grads_kept, grads_recomputed):
        assert torch.allclose(kept, recomputed, atol=1e-5, rtol=1e-4)
    # The hash grid + MLP activations (most of what the backward keeps) are gone: far fewer bytes saved.
    assert bytes_recomputed < 0.5 * bytes_kept, (bytes_recomputed, bytes_kept)


def test_textureless_and_diffuse_renders_are_premultiplied_so_empty_pixels_show_the_background():
    # Half the frame misses the ball: its pixels must be the background whatever the light, and no pixel
    # may leave [0, 1]. Inside the ball the textureless colour is the light term of a white surface.
    field = ConstantSphere(sigma=200.0, radius=0.5)
    cams = make_cameras(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([3.0]), torch.tensor([45.0]))
    origins, dirs = camera_rays(cams, 16, 16)
    light = torch.tensor([[0.0, -1.0, 0.0]])  # from the camera
    for background in ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)):
        for shading in ("diffuse", "textureless"):
            out = StratifiedRenderer(RendererConfig(n_samples=256))(
                field, SolidBackground(background), origins, dirs, shading, light
            )
            bg = torch.tensor(background)
            assert 0.0 <= float(out.rgb.min()) and float(out.rgb.max()) <= 1.0, (shading, background)
            empty = out.opacity[..., 0] < 1e-6
            assert empty.sum() > 50
            assert torch.allclose(out.rgb[empty], bg.expand(int(empty.sum()), 3), atol=1e-6)
            # premultiplied: a pixel differs from the background by at most its opacity
            assert bool(((out.rgb - bg).abs() <= out.opacity + 1e-6).all())
    # centre pixel, lit head-on: ambient + (1 − ambient)·1 = 1 on a white surface
    out = StratifiedRenderer(RendererConfig(n_samples=256))(
        field, SolidBackground((0.0, 0.0, 0.0)), origins, dirs, "textureless", light
    )
    assert torch.allclose(out.rgb[0, 8, 8], torch.ones(3), atol=0.03)
