"""The texel rasteriser, bake and dilation on hand-made UV layouts."""

from __future__ import annotations

import numpy as np
import pytest
from export_fields import SphereField, TorusField

from nfsd_server.export.texture import bake_albedo, dilate, rasterise

SQUARE_UVS = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
SQUARE_FACES = np.array([[0, 1, 2], [0, 2, 3]])


def test_two_triangles_covering_the_square_cover_every_texel():
    texel, face, weights = rasterise(SQUARE_UVS, SQUARE_FACES, 64)
    assert np.array_equal(np.unique(texel), np.arange(64 * 64))
    assert len(texel) <= 64 * 64 + 64  # only centres on the shared diagonal are claimed by both
    assert set(face) == {0, 1}
    assert weights.sum(axis=1) == pytest.approx(np.ones(len(texel)), abs=1e-5)


def test_barycentrics_reproduce_the_texel_centre_and_row_zero_is_the_top():
    texel, face, weights = rasterise(SQUARE_UVS, SQUARE_FACES, 64)
    uv = np.einsum("kj,kjd->kd", weights, SQUARE_UVS[SQUARE_FACES[face]])
    row, col = np.divmod(texel, 64)
    assert uv[:, 0] == pytest.approx((col + 0.5) / 64, abs=1e-5)
    assert uv[:, 1] == pytest.approx(1.0 - (row + 0.5) / 64, abs=1e-5)  # v up, image rows down


def test_degenerate_triangles_cover_nothing():
    texel, _, _ = rasterise(np.array([[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]]), np.array([[0, 1, 2]]), 32)
    assert len(texel) == 0


def test_bake_puts_the_field_colour_on_covered_texels_only():
    """The square's UV layout mapped onto a plane inside a constant-colour field."""
    positions = np.array([[-0.3, -0.3, 0.0], [0.3, -0.3, 0.0], [0.3, 0.3, 0.0], [-0.3, 0.3, 0.0]])
    half = SQUARE_FACES[:1]  # one triangle: half the texels
    image, covered = bake_albedo(TorusField(), positions, half, SQUARE_UVS, 64, chunk_size=1000)
    assert 0.45 < covered.mean() < 0.55
    assert image[covered].mean(axis=0) == pytest.approx(TorusField.colour, abs=1e-4)
    assert (image[~covered] == 0).all()


def test_bake_samples_the_3d_point_under_each_texel():
    """Red = (x + 1) / 2 on the plane: the baked red channel is linear across the texture, left to right."""
    positions = np.array([[-1.0, 0.0, -1.0], [1.0, 0.0, -1.0], [1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]])
    image, covered = bake_albedo(SphereField(), positions, SQUARE_FACES, SQUARE_UVS, 32, chunk_size=100)
    assert covered.all()
    expected_red = (np.arange(32) + 0.5) / 32
    assert image[:, :, 0] == pytest.approx(np.broadcast_to(expected_red, (32, 32)), abs=1e-5)
    expected_blue = 1.0 - (np.arange(32) + 0.5) / 32  # z up = v up = image top
    assert image[:, :, 2] == pytest.approx(np.broadcast_to(expected_blue[:, None], (32, 32)), abs=1e-5)


def test_dilation_copies_the_nearest_covered_colour_everywhere():
    image = np.zeros((8, 8, 3), np.float32)
    covered = np.zeros((8, 8), bool)
    image[1, 1], covered[1, 1] = (1.0, 0.0, 0.0), True
    image[6, 6], covered[6, 6] = (0.0, 0.0, 1.0), True
    filled = dilate(image, covered)
    assert (filled[:3, :3] == (1.0, 0.0, 0.0)).all()
    assert (filled[5:, 5:] == (0.0, 0.0, 1.0)).all()
    assert not (filled == 0).all(axis=-1).any()
