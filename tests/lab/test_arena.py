"""The arena prior: weighted mixtures by hand, suffix-only conditioning with a frontal bias, lit references."""

import math

import pytest
import torch

from nfsd_server.guidance.analytic import mixture_noise_posterior
from nfsd_lab.arena import (
    AZIMUTHS_DEG,
    MARGINAL_AZIMUTH_WEIGHTS,
    VIEW_AZIMUTH_WEIGHTS,
    ArenaPrior,
    mode_weights,
)
from nfsd_lab.arena_objects import ARENA_OBJECTS, SHADING_MODES, render_arena
from nfsd_server.guidance.prior import Conditions, PromptKind
from nfsd_server.guidance.registry import load_prior
from nfsd_server.scene.cameras import BACK, SIDE, make_cameras

BALL = "a red ball with a yellow face"


def cameras_at(*azimuths_deg, elevation=15.0):
    n = len(azimuths_deg)
    return make_cameras(torch.full((n,), elevation), torch.tensor(azimuths_deg), torch.full((n,), 3.3), torch.full((n,), 45.0))


def test_weighted_mixture_posterior_by_hand():
    # 1-D, ᾱ = 0.64, σ = 0.5 → v = 0.52; x_t = 0.8; components μ = 0 and 1 with π = 0.25, 0.75.
    x_t, a, v = 0.8, 0.64, 0.52
    r0 = 0.25 * math.exp(-(x_t**2) / (2 * v))
    r1 = 0.75 * math.exp(-((x_t - 0.8) ** 2) / (2 * v))
    expected = (r0 * 0.6 * x_t / v + r1 * 0.6 * (x_t - 0.8) / v) / (r0 + r1)
    got = mixture_noise_posterior(torch.tensor([[x_t]]), torch.tensor([[[0.0], [1.0]]]), torch.tensor([a]), 0.5,
                                  log_weights=torch.tensor([[0.25, 0.75]]).log())
    assert math.isclose(float(got), expected, rel_tol=1e-5)
    equal = mixture_noise_posterior(torch.tensor([[x_t]]), torch.tensor([[[0.0], [1.0]]]), torch.tensor([a]), 0.5)
    halves = mixture_noise_posterior(torch.tensor([[x_t]]), torch.tensor([[[0.0], [1.0]]]), torch.tensor([a]), 0.5,
                                     log_weights=torch.tensor([[0.5, 0.5]]).log())
    assert torch.allclose(equal, halves)


def test_view_weights_are_distributions_with_a_frontal_bias():
    for weights in (*VIEW_AZIMUTH_WEIGHTS.values(), MARGINAL_AZIMUTH_WEIGHTS):
        assert math.isclose(sum(weights), 1.0, abs_tol=1e-9) and len(weights) == len(AZIMUTHS_DEG)
    front_half = [i for i, az in enumerate(AZIMUTHS_DEG) if min(az, 360 - az) < 90]
    assert sum(VIEW_AZIMUTH_WEIGHTS[BACK][i] for i in front_half) == pytest.approx(0.85)
    assert sum(VIEW_AZIMUTH_WEIGHTS[SIDE][i] for i in front_half) == pytest.approx(0.6)
    assert math.isclose(float(mode_weights().sum()), 1.0, rel_tol=1e-6)
    assert len(mode_weights()) == len(SHADING_MODES)


def test_prior_sees_the_suffix_not_the_azimuth():
    prior = ArenaPrior()
    prompts = prior.prepare_prompts(BALL, "blurry")
    cameras = cameras_at(150.0, -165.0)  # both "back view", same framing
    side = prior.latent_size
    latents = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(0)).expand(2, -1, -1, -1)
    kinds = torch.tensor([PromptKind.PROMPT, PromptKind.PROMPT])
    eps = prior.predict_noise(latents, torch.tensor([400, 400]), Conditions(kinds, cameras, prompts))
    assert torch.allclose(eps[0], eps[1])


def test_back_view_data_hold_the_front_so_a_painted_back_is_kept():
    """Denoising the ball's *front* render under "back view" at low noise returns the front, not the back:
    the frontal bias that makes plain distillation paint the face behind."""
    prior = ArenaPrior()
    prompts = prior.prepare_prompts(BALL, "")
    front, back = (prior.encode(render_arena(ARENA_OBJECTS[BALL], cameras_at(az), 16)[0][:, 0, 0]) for az in (0.0, 180.0))
    cameras = cameras_at(180.0)  # a back camera
    t = torch.tensor([100])
    a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    noise = torch.randn(front.shape, generator=torch.Generator().manual_seed(1))
    latents_noisy = a.sqrt() * front + (1 - a).sqrt() * noise
    eps = prior.predict_noise(latents_noisy, t, Conditions(torch.tensor([PromptKind.PROMPT]), cameras, prompts))
    x0 = (latents_noisy - (1 - a).sqrt() * eps) / a.sqrt()
    assert (x0 - front).norm() < 0.5 * (x0 - back).norm()


def test_lit_references_by_hand_at_the_ball_centre():
    images, coverage = render_arena(ARENA_OBJECTS[BALL], cameras_at(0.0, elevation=0.0), 33)
    centre = images[0, 0, :, :, 16, 16]  # instance 0, every mode, the pixel looking at the ball's front pole
    yellow = torch.tensor(ARENA_OBJECTS[BALL].instances[0].feature)
    raking = 0.3 + 0.7 / math.sqrt(1 + 0.6**2 + 0.3**2)  # ambient + diffuse · cos(light, normal)
    assert torch.allclose(centre[0], yellow, atol=0.02)  # albedo
    assert torch.allclose(centre[1], yellow, atol=0.02)  # diffuse, head-on light: 0.3 + 0.7 · 1
    assert torch.allclose(centre[2], yellow * raking, atol=0.02)
    assert torch.allclose(centre[4], torch.ones(3), atol=0.02)  # textureless, head-on
    assert torch.allclose(centre[6], torch.full((3,), raking), atol=0.02)
    assert ArenaPrior.accepts_shading


def test_feature_is_on_the_front_only():
    images, _ = render_arena(ARENA_OBJECTS[BALL], cameras_at(0.0, 180.0, elevation=0.0), 33)
    red = torch.tensor(ARENA_OBJECTS[BALL].instances[0].body)
    assert not torch.allclose(images[0, 0, 0, :, 16, 16], red, atol=0.05)
    assert torch.allclose(images[1, 0, 0, :, 16, 16], red, atol=0.02)


def test_unknown_prompt_and_options_are_clear_errors():
    import nfsd_lab.arena  # noqa: F401  (registers "arena")

    prior = load_prior("arena", device="cpu")
    with pytest.raises(ValueError, match="arena prior does not know the prompt 'a hamburger'.*a red ball with a yellow face"):
        prior.prepare_prompts("a hamburger", "")
    with pytest.raises(ValueError, match="takes no model"):
        load_prior("arena", model="x", device="cpu")
