"""Bad settings, empty fields and file names: clear errors, and never a broken file on disk."""

from __future__ import annotations

import pytest
import torch
import trimesh
from export_fields import EmptyField, SphereField, TorusField

from nfsd_server.export import EmptyFieldError, ExportSettings, export_glb, slugify


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"texture_size": 768}, "texture_size must be one of .*, got 768"),
        ({"poly_budget": 99}, "poly_budget must be in 100..500000, got 99"),
        ({"grid_resolution": 31}, "grid_resolution 31"),
        ({"grid_resolution": 1025}, "grid_resolution 1025"),
        ({"height": 0.0}, "height 0.0"),
        ({"height": float("nan")}, "height nan"),
        ({"threshold": -1.0}, "threshold -1.0"),
        ({"chunk_size": 0}, "chunk_size 0"),
    ],
)
def test_bad_settings_raise_value_error_naming_the_value(overrides, named):
    with pytest.raises(ValueError, match=named):
        ExportSettings(**overrides)


def test_default_settings_are_valid():
    assert ExportSettings() == ExportSettings(256, None, 20_000, 1024, 1.0, 2**18)


def test_empty_field_raises_with_the_max_density_and_leaves_no_file(tmp_path):
    out = tmp_path / "empty.glb"
    with pytest.raises(EmptyFieldError, match=r"highest density sampled is 1\b.*lower threshold") as caught:
        export_glb(EmptyField(), out, ExportSettings(grid_resolution=32, texture_size=512))
    assert isinstance(caught.value, ValueError)
    assert list(tmp_path.iterdir()) == []


class FlatField:
    """Uniform ``value`` density and no ``surface_density``: the exporter must fall back to its own threshold."""

    bound = 1.0

    def __init__(self, value: float):
        self.value = value

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return torch.full((len(points),), self.value)

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(points), 3)


def test_a_field_without_surface_density_uses_the_engines_default_threshold(tmp_path):
    from nfsd_server.scene.field import FieldConfig

    with pytest.raises(EmptyFieldError, match=rf"below the surface threshold {FieldConfig().surface_density:g};"):
        export_glb(FlatField(1.0), tmp_path / "flat.glb", ExportSettings(grid_resolution=32, texture_size=512))


def test_a_field_with_no_density_at_all_does_not_suggest_an_impossible_threshold(tmp_path):
    with pytest.raises(EmptyFieldError, match="no density anywhere") as caught:
        export_glb(FlatField(0.0), tmp_path / "zero.glb", ExportSettings(grid_resolution=32, texture_size=512))
    assert "--threshold 0" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_export_keeps_the_previous_file_intact(tmp_path):
    out = tmp_path / "ball.glb"
    out.write_bytes(b"previous export")
    with pytest.raises(EmptyFieldError):
        export_glb(SphereField(), out, ExportSettings(grid_resolution=32, texture_size=512, threshold=1e6))
    assert out.read_bytes() == b"previous export"
    assert list(tmp_path.iterdir()) == [out]


def test_threshold_defaults_to_the_fields_surface_density(tmp_path):
    """The surface is extracted at the field's own surface_density unless a threshold is given.

    The export rescales to a height, so a sphere's size cannot show the threshold; a torus's width-to-height
    ratio can: (ring + tube + d) / (tube + d), where d is how far the iso-surface sits outside the true one.
    At density 25 d = 0 → 3.5; at density 5 d = 0.01·logit(0.9) ≈ 0.022 → ≈ 3.25.
    """
    field = TorusField(ring=0.5, tube=0.2)

    def aspect(threshold):
        settings = ExportSettings(grid_resolution=96, texture_size=512, poly_budget=4000, threshold=threshold)
        path = tmp_path / f"torus-{threshold}.glb"
        export_glb(field, path, settings)
        width_x, height_y, width_z = trimesh.load(path, force="mesh").extents  # glTF is +Y up
        return max(width_x, width_z) / height_y

    assert aspect(None) == pytest.approx(3.5, abs=0.06)
    assert aspect(5.0) == pytest.approx(3.25, abs=0.06)


@pytest.mark.parametrize(
    ("prompt", "slug"),
    [
        ("a red ball", "a-red-ball"),
        ("  A Red  Ball!! ", "a-red-ball"),
        ("crème brûlée, on a plate", "creme-brulee-on-a-plate"),
        ("../../etc/passwd", "etc-passwd"),
        ("???", "object"),
        ("", "object"),
        ("火锅", "object"),
    ],
)
def test_slugify_gives_safe_lowercase_hyphenated_names(prompt, slug):
    assert slugify(prompt) == slug


def test_slugify_keeps_long_prompts_short_and_cuts_at_a_word():
    slug = slugify("a highly detailed photograph of a " + "very " * 30 + "old wooden chair")
    assert 0 < len(slug) <= 48
    assert slug.endswith("very") and not slug.endswith("-")


class NaNField:
    """A diverged NeRF: NaN density outside a ball, NaN albedo on its left half."""

    bound = 1.0
    surface_density = 25.0

    def density(self, points):
        inside = points.norm(dim=-1) < 0.5
        return torch.where(inside, torch.full_like(points[:, 0], 50.0), torch.full_like(points[:, 0], float("nan")))

    def albedo(self, points):
        colour = torch.full_like(points, 0.5)
        colour[points[:, 0] < 0] = float("nan")
        return colour


def test_nan_density_and_albedo_export_as_empty_space_and_black(tmp_path):
    report = export_glb(NaNField(), tmp_path / "nan.glb", ExportSettings(grid_resolution=40, texture_size=512))
    assert report.n_faces > 0
    assert report.path.stat().st_size > 0
