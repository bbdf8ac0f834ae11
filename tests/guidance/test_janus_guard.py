"""The Janus guard: the view contrast's maths by hand, its weights, and its one extra prior row per image."""

import math

import pytest
import torch

from nfsd_server.guidance.distillation import NFSDGuidance, SDSGuidance, make_guidance, predict_rows, view_negative_cameras
from nfsd_server.guidance.prior import PromptKind
from nfsd_server.guidance.score import (
    VIEW_CONTRAST_GAIN,
    nfsd_direction,
    sds_direction,
    view_contrast_delta,
    view_contrast_weight,
)
from nfsd_server.scene.cameras import BACK, FRONT, make_cameras


def per_row(*values):
    """(B, 2, 1, 1) from B two-vectors: the hand computations below are in 2-D."""
    return torch.tensor(values, dtype=torch.float32).view(len(values), 2, 1, 1)


def test_view_contrast_delta_by_hand():
    eps_uncond = per_row((1.0, 1.0), (1.0, 1.0), (1.0, 1.0), (1.0, 1.0))
    eps_cond = per_row((4.0, 5.0), (4.0, 5.0), (1.0, 1.0), (4.0, 5.0))  # δ_C = (3, 4), ‖δ_C‖ = 5; row 2: δ_C = 0
    eps_view = per_row((3.9, 5.0), (-2.0, 5.0), (0.0, 9.0), (float("nan"), 0.0))
    got = view_contrast_delta(eps_cond, eps_uncond, eps_view, torch.tensor([10.0, 10.0, 10.0, 0.0]))
    # row 0: g = 10·(0.1, 0) = (1, 0), under the bound: (4, 4); row 1: g = 10·(6, 0) = (60, 0), shrunk to ‖δ_C‖ = 5:
    # (8, 4); row 2: the prompt is satisfied (δ_C = 0), so however the views differ the guard is silent; row 3
    # (weight 0): δ_C exactly, the NaN never read
    assert torch.allclose(got, per_row((4.0, 4.0), (8.0, 4.0), (0.0, 0.0), (3.0, 4.0)), atol=1e-6)


def test_view_contrast_weight_by_hand():
    azimuth = torch.deg2rad(torch.tensor([0.0, 30.0, 90.0, 112.5, -135.0, 180.0, 540.0]))
    # 0 up to 90° (the front still shows there), half-way up the ramp at 112.5°, the full gain from 135°
    expected = VIEW_CONTRAST_GAIN * torch.tensor([0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0])
    assert torch.allclose(view_contrast_weight(azimuth), expected, atol=1e-5)


def test_directions_take_the_guarded_delta():
    cond, uncond, neg, noise = (torch.full((1, 2, 1, 1), v) for v in (3.0, 1.0, 0.5, 0.25))
    guarded = torch.full((1, 2, 1, 1), 0.5)
    # NFSD at t ≥ 200: (1 − 0.5) + 7.5·0.5 = 4.25; SDS: 1 + 100·0.5 − 0.25 = 50.75
    assert torch.equal(nfsd_direction(cond, uncond, neg, torch.tensor([500]), 7.5, delta_cond=guarded),
                       torch.full((1, 2, 1, 1), 4.25))
    assert torch.equal(sds_direction(cond, uncond, noise, 100.0, delta_cond=guarded), torch.full((1, 2, 1, 1), 50.75))


def cameras_at(*azimuths_deg, elevation=20.0):
    n = len(azimuths_deg)
    return make_cameras(torch.full((n,), elevation), torch.tensor(azimuths_deg), torch.full((n,), 3.2), torch.full((n,), 45.0))


def test_view_negative_cameras_face_the_front_or_the_back():
    cameras = cameras_at(120.0, 10.0, -100.0)
    moved = view_negative_cameras(cameras)
    assert moved.view.tolist() == [FRONT, BACK, FRONT]
    expected = cameras_at(0.0, 180.0, 0.0)
    assert torch.allclose(moved.c2w, expected.c2w, atol=1e-5)
    # The light turns with the camera: its angle to the camera's direction is unchanged.
    toward = lambda cams: cams.c2w[:, :3, 3] / cams.c2w[:, :3, 3].norm(dim=-1, keepdim=True)  # noqa: E731
    cameras.light_dir = torch.nn.functional.normalize(toward(cameras) + torch.tensor([0.3, -0.2, 0.4]), dim=-1)
    moved = view_negative_cameras(cameras)
    assert torch.allclose((moved.light_dir * toward(moved)).sum(-1), (cameras.light_dir * toward(cameras)).sum(-1), atol=1e-5)


class RecordingPrior:
    """Returns row index + 1 as ε and records each call's kinds and cameras."""

    def __init__(self):
        self.calls = []

    def predict_noise(self, latents, t, conditions):
        self.calls.append(conditions)
        return torch.arange(1, latents.shape[0] + 1, dtype=torch.float32).view(-1, 1, 1, 1).expand_as(latents).clone()


def test_guard_adds_one_prompt_row_per_guarded_image_at_its_view_negative_in_the_same_call():
    prior, cameras = RecordingPrior(), cameras_at(150.0, 0.0, 100.0)
    latents = torch.zeros(3, 4, 2, 2)
    eps = predict_rows(prior, latents, torch.tensor([500, 100, 900]), cameras, None, torch.tensor([True, False, True]),
                       with_view_negative=torch.tensor([True, False, True]))
    (call,) = prior.calls
    assert call.kinds.tolist() == [PromptKind.PROMPT] * 3 + [PromptKind.NULL] * 3 + [PromptKind.NEGATIVE] * 2 + [PromptKind.PROMPT] * 2
    assert call.cameras.view[-2:].tolist() == [FRONT, FRONT]  # images 0 and 2 (150°, 100°) seen from the front
    assert call.cameras.azimuth[-2:].tolist() == [0.0, 0.0]
    assert eps.rows_evaluated == 10
    assert eps.view_negative[:, 0, 0, 0].tolist() == [9.0, 0.0, 10.0]  # image 1 got no row: zeros
    assert eps.negative[:, 0, 0, 0].tolist() == [7.0, 0.0, 8.0]


@pytest.mark.parametrize("t, plain, guarded", [(500, 3, 4), (100, 2, 2)])
def test_nfsd_rows_with_and_without_the_guard(t, plain, guarded):
    # Below t = 200 the guard adds no row (distillation.py says why): NFSD's 2 rows stay 2.
    cameras, latents = cameras_at(170.0), torch.zeros(1, 4, 2, 2)
    for guard, rows in ((False, plain), (True, guarded)):
        guidance = make_guidance("nfsd", 7.5, janus_guard=guard)
        guidance.direction(RecordingPrior(), latents, latents, torch.tensor([t]), cameras, None)
        assert guidance.last_rows_evaluated == rows


@pytest.mark.parametrize("t, behind_expected", [(500, -16.0), (100, -5.5)])
def test_guard_changes_the_direction_only_away_from_the_front_and_at_t_from_200(t, behind_expected):
    # ε rows: cond 1, uncond 2, negative 3 (t ≥ 200), view negative 3 or 4. Front camera: weight 0 → unguarded.
    latents, t = torch.zeros(1, 2, 1, 1), torch.tensor([t])
    front, back = cameras_at(0.0), cameras_at(180.0)
    plain = NFSDGuidance(7.5).direction(RecordingPrior(), latents, latents, t, front, None)
    assert torch.equal(NFSDGuidance(7.5, janus_guard=True).direction(RecordingPrior(), latents, latents, t, front, None), plain)
    # Behind at t = 500: δ_C = 1 − 2 = −1 a pixel; the contrast 10·(1 − 4) = −30 a pixel is shrunk to ‖δ_C‖, so
    # δ_C becomes −2, and NFSD's δ_D + s·δ_C = (2 − 3) + 7.5·(−2) = −16. At t = 100 no row: 2 + 7.5·(−1) = −5.5.
    guarded = NFSDGuidance(7.5, janus_guard=True).direction(RecordingPrior(), latents, latents, t, back, None)
    assert torch.equal(guarded, torch.full((1, 2, 1, 1), behind_expected))


class OrthogonalPrior(RecordingPrior):
    """ε_∅ = 0, ε_y = (1, 0) and, from the front view, ε_front = (0, 1)."""

    def predict_noise(self, latents, t, conditions):
        self.calls.append(conditions)
        eps = torch.zeros(latents.shape[0], 2, 1, 1)
        is_prompt = conditions.kinds == PromptKind.PROMPT
        eps[is_prompt & (conditions.cameras.view != FRONT), 0] = 1.0
        eps[is_prompt & (conditions.cameras.view == FRONT), 1] = 1.0
        return eps


@pytest.mark.parametrize("t, guarded", [(500, True), (199, False)])
def test_guard_steers_away_from_the_front_behind_from_t_200(t, guarded):
    latents, behind, guidance = torch.zeros(1, 2, 1, 1), cameras_at(150.0), SDSGuidance(100.0, janus_guard=True)
    direction = guidance.direction(OrthogonalPrior(), latents, latents, torch.tensor([t]), behind, None)
    assert guidance.last_rows_evaluated == (3 if guarded else 2)
    # 150° is past the ramp: the contrast 10·((1, 0) − (0, 1)) is shrunk to ‖δ_C‖ = 1, (1, −1)/√2. SDS: ε_∅ +
    # s·(δ_C + g) − noise = 100·(1 + 1/√2, −1/√2); below t = 200, 100·δ_C.
    g = 1 / math.sqrt(2) if guarded else 0.0
    assert torch.allclose(direction, per_row((100.0 * (1 + g), -100.0 * g)))


def test_stable_diffusion_answers_the_view_negative_from_its_front_embedding(tiny_sd_prior):
    from nfsd_server.guidance.prior import Conditions

    prompts = tiny_sd_prior.prepare_prompts("a hamburger", "ugly")
    back = cameras_at(180.0)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    eps = predict_rows(tiny_sd_prior, latents, torch.tensor([500]), back, prompts, torch.tensor([False]),
                       with_view_negative=torch.tensor([True]))
    front = cameras_at(0.0)
    expected = tiny_sd_prior.predict_noise(latents, torch.tensor([500]), Conditions(torch.tensor([PromptKind.PROMPT]), front, prompts))
    assert torch.allclose(eps.view_negative, expected, atol=1e-5)
    assert not torch.allclose(eps.view_negative, eps.cond, atol=1e-4)  # "back view" ≠ "front view"
