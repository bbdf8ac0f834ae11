"""The Janus guard: Perp-Neg maths by hand, its azimuth weights, and its one extra prior row per image."""

import math

import pytest
import torch

from nfsd_server.guidance.distillation import NFSDGuidance, SDSGuidance, make_guidance, predict_rows, view_negative_cameras
from nfsd_server.guidance.prior import PromptKind
from nfsd_server.guidance.score import (
    clip_score,
    nfsd_direction,
    perp_neg_delta,
    perpendicular_component,
    sds_direction,
    view_negative_weight,
)
from nfsd_server.scene.cameras import BACK, FRONT, make_cameras


def per_row(*values):
    """(B, 2, 1, 1) from B two-vectors: the hand computations below are in 2-D."""
    return torch.tensor(values, dtype=torch.float32).view(len(values), 2, 1, 1)


def test_perpendicular_component_by_hand():
    got = perpendicular_component(per_row((1.0, 1.0), (3.0, 4.0)), per_row((2.0, 0.0), (0.0, 0.0)))
    # row 0: (1, 1) − (2/4)·(2, 0) = (0, 1); row 1: onto is zero → the vector itself
    assert torch.equal(got, per_row((0.0, 1.0), (3.0, 4.0)))


def test_perp_neg_delta_subtracts_only_the_perpendicular_part_of_the_view_negative():
    eps_uncond = per_row((1.0, 1.0), (1.0, 1.0))
    eps_cond = per_row((3.0, 1.0), (3.0, 1.0))  # δ_C = (2, 0)
    eps_view = per_row((2.0, 3.0), (float("nan"), 0.0))  # row 0: δ_v = (1, 2) → ⊥ part (0, 2); row 1 unused
    got = perp_neg_delta(eps_cond, eps_uncond, eps_view, torch.tensor([1.5, 0.0]))
    # row 0: (2, 0) − 1.5·(0, 2) = (2, −3); row 1 (weight 0): δ_C exactly, the NaN never read
    assert torch.equal(got, per_row((2.0, -3.0), (2.0, 0.0)))


def test_clip_score_clamps_each_element():
    got = clip_score(per_row((3.0, -0.5), (-4.0, 1.5)), 1.0)
    assert torch.equal(got, per_row((1.0, -0.5), (-1.0, 1.0)))
    with pytest.raises(ValueError, match="the score clip limit must be > 0, got 0.0"):
        clip_score(per_row((1.0, 1.0)), 0.0)


def test_view_negative_weight_by_hand():
    azimuth = torch.deg2rad(torch.tensor([0.0, 30.0, 67.5, 90.0, 112.5, -135.0, 180.0, 540.0]))
    f = lambda r: math.exp(-0.5 * r) + 0.967  # noqa: E731  a·e^(−b·r) + c with (a, b, c) = (1, 0.5, 0.967)
    # 0 up to 90° (the front still shows there), half-way up the ramp at 112.5° (r = 0.75), full from 135°
    expected = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.5 * f(0.75), f(0.5), f(0.0), f(0.0)])
    assert torch.allclose(view_negative_weight(azimuth), expected, atol=1e-5)


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


def test_guard_changes_the_direction_only_away_from_the_front_and_at_t_from_200():
    # ε rows: cond 1, uncond 2, negative 3, view negative 4. Front camera: weight 0 → unguarded.
    latents, t = torch.zeros(1, 2, 1, 1), torch.tensor([500])
    front, back = cameras_at(0.0), cameras_at(180.0)
    plain = NFSDGuidance(7.5).direction(RecordingPrior(), latents, latents, t, front, None)
    assert torch.equal(NFSDGuidance(7.5, janus_guard=True).direction(RecordingPrior(), latents, latents, t, front, None), plain)
    # Behind: δ_C = (−1, −1) and δ_v = 4 − 2 = (2, 2) is parallel to it: no perpendicular part, no change either.
    assert torch.equal(NFSDGuidance(7.5, janus_guard=True).direction(RecordingPrior(), latents, latents, t, back, None), plain)


class PerpendicularPrior(RecordingPrior):
    """ε_∅ = 0, ε_y = (1, 0) and, from the front view, ε_front = (0, 1): δ_v ⊥ δ_C, all of it subtracted."""

    def predict_noise(self, latents, t, conditions):
        self.calls.append(conditions)
        eps = torch.zeros(latents.shape[0], 2, 1, 1)
        is_prompt = conditions.kinds == PromptKind.PROMPT
        eps[is_prompt & (conditions.cameras.view != FRONT), 0] = 1.0
        eps[is_prompt & (conditions.cameras.view == FRONT), 1] = 1.0
        return eps


@pytest.mark.parametrize("t, guarded", [(500, True), (199, False)])
def test_guard_subtracts_the_front_behind_from_t_200(t, guarded):
    latents, behind, guidance = torch.zeros(1, 2, 1, 1), cameras_at(150.0), SDSGuidance(100.0, janus_guard=True)
    direction = guidance.direction(PerpendicularPrior(), latents, latents, torch.tensor([t]), behind, None)
    assert guidance.last_rows_evaluated == (3 if guarded else 2)
    weight = float(view_negative_weight(torch.deg2rad(torch.tensor([150.0])))) if guarded else 0.0
    assert not guarded or weight > 1.5
    # SDS: ε_∅ + s·(δ_C − w·δ_v⊥) − noise = 100·((1, 0) − w·(0, 1))
    assert torch.allclose(direction, per_row((100.0, -100.0 * weight)))


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
