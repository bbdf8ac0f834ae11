"""What the prior is shown, for every preset × phase × shading × mode: the renders a real model judges.

A hook on the trainer's renderer checks each training render before the optimiser moves the field, and a
wrapper on the prior's ``encode`` checks each image handed to the encoder:
- every encoded image is finite and in [0, 1];
- every render is premultiplied: rgb = colour + (1 − α)·background with colour in [0, α], so a pixel with
  zero opacity is exactly the background;
- a latent-phase render is the prior's colour map applied to the albedo render at the same rays (same jitter);
- the object covers the share of the frame the recipe's framing states (README "Recipe").
The presets keep their own samples per ray, batch and latent side; their hash grid is the draft's and their
RGB side at most 32 px, to stay fast (neither changes what a pixel is made of).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import trimesh

import nfsd_server.train as train_module
from nfsd_server.guidance.registry import load_prior
from nfsd_server.presets import PRESETS
from nfsd_server.scene.cameras import camera_rays, sample_orbit_cameras
from nfsd_contract import resolve_spec
from nfsd_server.train import Trainer

CASES = [("latent", "albedo"), ("rgb", "albedo"), ("rgb", "diffuse"), ("rgb", "textureless")]
MODES = ("plain", "shape", "texture")
SMALL_PRESETS = {
    name: dataclasses.replace(preset, grid=PRESETS["draft"].grid, hidden_dim=16,
                              resolution_schedule=tuple((f, min(side, 32)) for f, side in preset.resolution_schedule))
    for name, preset in PRESETS.items()
}


@pytest.fixture(scope="module")
def sd_prior(tiny_sd_dir):
    return load_prior("stable-diffusion", str(tiny_sd_dir), "cpu", encoder="taesd")


@pytest.fixture(scope="module")
def sphere_mesh(tmp_path_factory):
    """An icosphere file, and its guide (built once: the trainer would rebuild it per case)."""
    path = tmp_path_factory.mktemp("mesh") / "ball.ply"
    trimesh.creation.icosphere(subdivisions=3, radius=2.0).export(path)
    return path, {}


def make_trainer(prior, preset, mode, sphere_mesh, monkeypatch, latent_fraction):
    path, guides = sphere_mesh
    monkeypatch.setattr(train_module, "PRESETS", SMALL_PRESETS)
    mesh_settings = {} if mode == "plain" else dict(init_mesh=path, keep_geometry=mode == "texture")
    if mode != "plain":
        build = train_module.shape_guide_for

        def cached_guide(spec, mesh_path):
            key = spec.keep_geometry
            if key not in guides:
                guides[key] = build(spec, mesh_path)
            return guides[key]
        monkeypatch.setattr(train_module, "shape_guide_for", cached_guide)
    settings = resolve_spec("a red ball", preset=preset, steps=10, seed=0, prior="stable-diffusion",
                            model="tiny", encoder="taesd", **mesh_settings)
    return Trainer(settings, prior, None, preset=dataclasses.replace(SMALL_PRESETS[preset], latent_fraction=latent_fraction))


def render_inputs(args, kwargs) -> dict:
    """The renderer's call as keywords, whichever way the trainer passed them."""
    names = ("field", "background", "origins", "directions", "shading", "light_dir", "generator", "latent")
    return {**dict(zip(names, args)), **kwargs}


def check_render(trainer, render, inputs, prior) -> None:
    field, background, origins, directions = (inputs[k] for k in ("field", "background", "origins", "directions"))
    rgb, opacity = render.rgb.detach(), render.opacity.detach()
    bg = background(directions).detach()
    colour = rgb - (1 - opacity) * bg  # what the object adds over the background
    assert torch.isfinite(rgb).all() and 0.0 <= float(rgb.min()) and float(rgb.max()) <= 1.0
    assert float(colour.min()) >= -1e-5 and bool((colour <= opacity + 1e-5).all())  # premultiplied
    empty = opacity[..., 0] < 1e-6
    assert torch.allclose(rgb[empty], bg[empty], atol=1e-5)  # zero opacity: exactly the background
    if inputs.get("latent"):
        weight, bias = prior.latent_color_map()
        assert torch.equal(field.latent_weight, weight) and torch.equal(field.latent_bias, bias)
        with torch.no_grad():  # the same samples: the trainer draws their jitter and passes it in
            albedo = trainer.renderer(field, background, origins, directions, "albedo", None,
                                      jitter=inputs["jitter"]).albedo
        assert torch.allclose(render.latent, albedo @ weight.T + bias, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("phase, shading", CASES)
@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_render_the_prior_is_shown_is_a_sane_image(sd_prior, sphere_mesh, monkeypatch, preset, phase,
                                                          shading, mode):
    trainer = make_trainer(sd_prior, preset, mode, sphere_mesh, monkeypatch, 1.0 if phase == "latent" else 0.0)
    trainer.step = 2  # past the albedo-only start (20% of 10 steps)
    monkeypatch.setattr(train_module, "sample_shading", lambda generator, albedo_only, probabilities: shading)
    encoded, renders = [], []
    encode = sd_prior.encode

    def recording_encode(images):
        encoded.append(images.detach().clone())
        return encode(images)

    monkeypatch.setattr(sd_prior, "encode", recording_encode)

    def after(module, args, kwargs, output):
        if not getattr(trainer, "replaying", False):
            inputs = render_inputs(args, kwargs)
            trainer.replaying = True
            try:
                check_render(trainer, output, inputs, sd_prior)
            finally:
                trainer.replaying = False
            renders.append((inputs["shading"], bool(inputs.get("latent"))))

    trainer.renderer.register_forward_hook(after, with_kwargs=True)
    trainer.train_step()
    assert renders == [(shading, phase == "latent")]  # the case under test is what the step rendered
    assert len(encoded) == (phase == "rgb")
    for images in encoded:
        assert images.shape[1] == 3 and torch.isfinite(images).all()
        assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0


@pytest.mark.parametrize("mode", MODES)
def test_the_object_covers_the_share_of_the_frame_the_recipe_states(sd_prior, sphere_mesh, monkeypatch, mode):
    # A radius-0.5 object (a normalised init mesh; the blob's outer edge) at the recipe's framing spans a median
    # 0.55 of the half-frame: a disc of π·0.55²/4 ≈ 24% of the frame, 15% to 40% across the distance/fov ranges.
    trainer = make_trainer(sd_prior, "draft", mode, sphere_mesh, monkeypatch, 0.0)
    cameras = sample_orbit_cameras(8, torch.Generator().manual_seed(1), trainer.config.orbit)
    origins, directions = camera_rays(cameras, 40, 40)
    with torch.no_grad():
        opacity = trainer.renderer(trainer.field, trainer.background, origins, directions).opacity[..., 0]
    share = (opacity > 0.5).float().mean(dim=(1, 2))
    ratio = torch.tan(torch.asin(0.5 / cameras.distance)) / torch.tan(cameras.fov_y / 2)
    expected = math.pi * ratio**2 / 4
    if mode == "plain":  # the blob's density fades toward r = 0.5: its α = 0.5 edge is at ~0.9 of that
        assert bool(((share / expected > 0.6) & (share / expected < 0.95)).all()), share / expected
    else:  # the sphere itself, to a pixel's worth at the silhouette
        assert torch.allclose(share, expected, rtol=0.15), (share, expected)
    assert 0.12 < float(share.median()) < 0.35
