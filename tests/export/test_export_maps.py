"""The normal map's tangents, frames and dense normals, and occlusion, on hand-made geometry with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from nfsd_server.export.normal_map import decode_normals, surface_normals_at, vertex_tangents
from nfsd_server.export.occlusion import hemisphere_directions, vertex_occlusion

QUAD = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
QUAD_FACES = np.array([[0, 1, 2], [0, 2, 3]])
UP = np.tile([0.0, 0.0, 1.0], (4, 1))


def test_tangent_runs_along_u_and_w_says_whether_the_uvs_are_mirrored():
    """Plane z = 0 facing +z with uv = (x, y): T = +x and B = +y = cross(N, T), so w = +1. Mirroring u flips
    T to -x while B stays +y = cross(N, -x) * -1, so w = -1."""
    straight = vertex_tangents(QUAD, UP, QUAD_FACES, QUAD[:, :2])
    assert straight == pytest.approx(np.tile([1.0, 0.0, 0.0, 1.0], (4, 1)), abs=1e-6)
    mirrored_uv = np.stack([1.0 - QUAD[:, 0], QUAD[:, 1]], axis=1)
    mirrored = vertex_tangents(QUAD, UP, QUAD_FACES, mirrored_uv)
    assert mirrored == pytest.approx(np.tile([-1.0, 0.0, 0.0, -1.0], (4, 1)), abs=1e-6)


def test_tangents_are_made_orthogonal_to_a_tilted_vertex_normal():
    tilted = np.tile([0.6, 0.0, 0.8], (4, 1))  # unit, leaning toward +x
    tangents = vertex_tangents(QUAD, tilted, QUAD_FACES, QUAD[:, :2])
    assert tangents[:, :3] == pytest.approx(np.tile([0.8, 0.0, -0.6], (4, 1)), abs=1e-6)  # +x minus its normal part


def test_decoding_follows_opengl_green_up():
    """Encoded (0.5, 1, 0.5) is the bitangent (+v), (1, 0.5, 0.5) the tangent, (0.5, 0.5, 1) the normal."""
    encoded = np.array([[0.5, 1.0, 0.5], [1.0, 0.5, 0.5], [0.5, 0.5, 1.0]])
    normal = np.tile([0.0, 0.0, 1.0], (3, 1))
    tangent = np.tile([1.0, 0.0, 0.0, 1.0], (3, 1))
    expected = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert decode_normals(encoded, normal, tangent) == pytest.approx(expected, abs=1e-6)
    mirrored = np.tile([-1.0, 0.0, 0.0, -1.0], (3, 1))  # u mirrored: +v is still +y
    assert decode_normals(encoded[:1], normal[:1], mirrored[:1]) == pytest.approx(np.array([[0.0, 1.0, 0.0]]), abs=1e-6)


def test_dense_normals_are_the_ball_radial_direction_even_off_the_surface():
    """A sampled ball of radius 0.5 with a soft shell: outward normal = p / |p| at and near the surface."""
    axis = np.linspace(-1.0, 1.0, 65)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    volume = (50.0 / (1.0 + np.exp(-(0.5 - np.sqrt(x**2 + y**2 + z**2)) / 0.05))).astype(np.float32)
    directions = np.random.default_rng(0).normal(size=(200, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    for radius in (0.5, 0.47, 0.53):  # on, and a third of a voxel-and-more either side, as decimation leaves texels
        normals = surface_normals_at(directions * radius, volume, bound=1.0)
        angle = np.degrees(np.arccos(np.clip(np.einsum("ij,ij->i", normals, directions), -1, 1)))
        assert angle.max() < 1.0


def test_cosine_weighted_directions_cover_the_hemisphere_evenly():
    directions = hemisphere_directions(32)
    assert np.linalg.norm(directions, axis=1) == pytest.approx(np.ones(32))
    assert (directions[:, 2] > 0).all()
    # Mean cosine of a cosine-weighted hemisphere is 2/3; the mean direction points straight up.
    assert directions[:, 2].mean() == pytest.approx(2.0 / 3.0, abs=0.02)
    assert np.abs(directions[:, :2].mean(axis=0)).max() < 0.03


def _occupancy(inside_of) -> np.ndarray:
    axis = np.linspace(-1.0, 1.0, 81)
    return inside_of(*np.meshgrid(axis, axis, axis, indexing="ij"))


def test_open_floor_is_unoccluded_and_the_floor_wall_corner_is_half_occluded():
    """Floor z < 0: a point on it sees the whole sky (1). Add a wall x < 0: the corner's hemisphere is cut in half
    by the plane x = 0, which by symmetry holds half the cosine-weighted directions (0.5)."""
    floor = _occupancy(lambda x, y, z: z < 0.0)
    corner = _occupancy(lambda x, y, z: (z < 0.0) | (x < 0.0))
    point = np.array([[0.3, 0.0, 0.0]])
    up = np.array([[0.0, 0.0, 1.0]])
    assert vertex_occlusion(point, up, floor, bound=1.0, reach=0.5) == pytest.approx([1.0])
    at_corner = vertex_occlusion(np.array([[0.0, 0.0, 0.0]]), up, corner, bound=1.0, reach=0.5)
    assert at_corner == pytest.approx([0.5], abs=2 / 32)
    # Far from the wall (beyond the reach) the floor is open again.
    assert vertex_occlusion(point + [0.3, 0.0, 0.0], up, corner, bound=1.0, reach=0.5) == pytest.approx([1.0])


def test_normals_off_the_dense_surface_come_from_the_nearest_surface_point_not_the_stand_ins():
    """The sampler keeps the field's density only near the surface (stand-ins 0 / 2 * threshold elsewhere). Points a
    few voxels off the surface, as decimation leaves texels, still get the ball's radial normal."""
    from nfsd_server.export.grid import exact_mask
    from nfsd_server.export.normal_map import dense_surface_normals
    from nfsd_server.export.surface import extract_surface

    axis = np.linspace(-1.0, 1.0, 97)  # voxel 1/48
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    radius = np.sqrt(x**2 + y**2 + z**2)
    volume = (50.0 / (1.0 + np.exp(-(0.5 - radius) / 0.05))).astype(np.float32)
    far = np.abs(radius - 0.5) > 2.5 / 48
    volume[far] = np.where(radius[far] < 0.5, 50.0, 0.0)  # threshold 25: stand-ins 2 * 25 inside, 0 outside
    dense_vertices, dense_faces = extract_surface(volume, 25.0, 1.0)
    directions = np.random.default_rng(1).normal(size=(300, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    for offset in (-3.0 / 48, 3.0 / 48):
        normals = dense_surface_normals(
            directions * (0.5 + offset), dense_vertices, dense_faces, volume, 1.0, exact_mask(volume, 25.0)
        )
        angle = np.degrees(np.arccos(np.clip(np.einsum("ij,ij->i", normals, directions), -1, 1)))
        assert angle.max() < 2.0
