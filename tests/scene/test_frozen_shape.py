"""Texture mode's frozen density: the render weight sits on the mesh's surface, where the bake reads albedo."""

import numpy as np
import torch
from nerfacc.volrend import render_weight_from_density

from nfsd_server.scene.encoding import HashGridConfig
from nfsd_server.scene.field import FieldConfig, NeRFField
from nfsd_server.scene.mesh_volume import signed_distance_grid

RESOLUTION = 96


def frozen_field(sdf: torch.Tensor) -> NeRFField:
    grid = HashGridConfig(n_levels=2, log2_table_size=8, base_resolution=4, max_resolution=8)
    field = NeRFField(FieldConfig(grid=grid, hidden_dim=8, shape_resolution=RESOLUTION, frozen_shape=True))
    field.shape_sdf.copy_(sdf)
    return field


def grid_points() -> torch.Tensor:
    axis = torch.linspace(-1.0, 1.0, RESOLUTION)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)  # (R, R, R, 3), [x, y, z]


def ray_weights(field, origin, direction, near=0.0, far=4.0, n=40_000):
    """(t (n,), weights (n,)) along one ray by a fine Riemann sum: the continuous render weight."""
    edges = torch.linspace(near, far, n + 1)
    starts, ends = edges[:-1], edges[1:]
    mids = (starts + ends) / 2
    points = torch.tensor(origin) + mids[:, None] * torch.tensor(direction)
    with torch.no_grad():
        sigma = field.density(points)
    weights, _, _ = render_weight_from_density(starts[None], ends[None], sigma[None])
    return mids, weights[0]


def test_frozen_sphere_puts_the_render_weight_on_its_surface():
    field = frozen_field(grid_points().norm(dim=-1) - 0.5)
    for origin, direction in (((0.0, -3.0, 0.0), (0.0, 1.0, 0.0)), ((-2.0, 2.0, 1.0), (2 / 3, -2 / 3, -1 / 3))):
        t, weights = ray_weights(field, origin, direction)
        surface = 2.5  # the ray starts 3 from the centre
        assert float(weights.sum()) > 0.999  # opaque
        near_surface = float(weights[(t - surface).abs() <= 0.01].sum())
        depth = float((weights * t).sum() / weights.sum()) - surface
        assert near_surface > 0.95, near_surface
        assert abs(depth) < 0.005, depth


def test_a_one_voxel_plate_is_opaque():
    occupancy = np.zeros((RESOLUTION,) * 3, bool)
    occupancy[:, :, RESOLUTION // 2] = True  # the plane z ≈ 0.01, one voxel thick
    field = frozen_field(torch.from_numpy(signed_distance_grid(occupancy, 1.0)))
    _, weights = ray_weights(field, (0.1, 0.2, 2.0), (0.0, 0.0, -1.0))
    assert float(weights.sum()) > 0.99


def test_frozen_normals_are_the_sdfs():
    field = frozen_field(grid_points().norm(dim=-1) - 0.5)
    points = torch.nn.functional.normalize(torch.randn(64, 3, generator=torch.Generator().manual_seed(0)), dim=-1) * 0.5
    normals = field.normals(points)
    assert torch.allclose(normals, points / 0.5, atol=0.02)
