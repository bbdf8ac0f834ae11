import pytest
import torch

from nfsd_server.guidance.score import (
    distillation_loss,
    nfsd_direction,
    sds_direction,
    timestep_weight,
)


def test_nfsd_uses_uncond_alone_below_200_and_subtracts_negative_above():
    # Per element constants make the hand computation readable: row 0 has t < 200, row 1 t ≥ 200.
    eps_cond = torch.tensor([3.0, 5.0]).view(2, 1, 1, 1).expand(2, 4, 2, 2)
    eps_uncond = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1).expand(2, 4, 2, 2)
    eps_neg = torch.tensor([float("nan"), 0.5]).view(2, 1, 1, 1).expand(2, 4, 2, 2)  # row 0's is never read
    t = torch.tensor([199, 200])
    got = nfsd_direction(eps_cond, eps_uncond, eps_neg, t, guidance_scale=7.5)
    # row 0: δ_D = 1, δ_C = 3 − 1 = 2 → 1 + 7.5·2 = 16
    # row 1: δ_D = 2 − 0.5 = 1.5, δ_C = 5 − 2 = 3 → 1.5 + 7.5·3 = 24
    assert torch.equal(got[0], torch.full((4, 2, 2), 16.0))
    assert torch.equal(got[1], torch.full((4, 2, 2), 24.0))


def test_nfsd_elementwise_on_random_tensors_matches_formula():
    g = torch.Generator().manual_seed(1)
    cond, uncond, neg = (torch.randn(3, 4, 8, 8, generator=g) for _ in range(3))
    t = torch.tensor([10, 500, 999])
    got = nfsd_direction(cond, uncond, neg, t, 2.0)
    assert torch.allclose(got[0], uncond[0] + 2.0 * (cond[0] - uncond[0]))
    assert torch.allclose(got[1], uncond[1] - neg[1] + 2.0 * (cond[1] - uncond[1]))
    assert torch.allclose(got[2], uncond[2] - neg[2] + 2.0 * (cond[2] - uncond[2]))


def test_sds_is_cfg_prediction_minus_noise():
    eps_cond, eps_uncond, noise = torch.full((1, 4, 1, 1), 0.3), torch.full((1, 4, 1, 1), 0.1), torch.full((1, 4, 1, 1), 0.05)
    got = sds_direction(eps_cond, eps_uncond, noise, guidance_scale=100.0)
    # 0.1 + 100·(0.3 − 0.1) − 0.05 = 20.05
    assert torch.allclose(got, torch.full((1, 4, 1, 1), 20.05))


def test_weight_is_one_minus_alphas_cumprod():
    alphas_cumprod = torch.tensor([0.9, 0.5, 0.1])
    assert torch.allclose(timestep_weight(alphas_cumprod, torch.tensor([0, 2])).flatten(), torch.tensor([0.1, 0.9]))


def test_distillation_loss_gradient_is_the_direction_over_batch():
    latents = torch.randn(2, 4, 3, 3, requires_grad=True)
    grad = torch.randn(2, 4, 3, 3)
    grad[0, 0, 0, 0] = float("nan")  # NaNs from a prior are zeroed, not propagated
    distillation_loss(latents, grad).backward()
    expected = torch.nan_to_num(grad) / 2
    assert torch.allclose(latents.grad, expected, atol=1e-6)  # z − (z − g) rounds: exact to float precision only


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="one timestep per batch element"):
        nfsd_direction(torch.zeros(2, 4, 1, 1), torch.zeros(2, 4, 1, 1), torch.zeros(2, 4, 1, 1), torch.tensor([1]), 7.5)
    with pytest.raises(ValueError, match="share one shape"):
        sds_direction(torch.zeros(2, 4, 1, 1), torch.zeros(1, 4, 1, 1), torch.zeros(2, 4, 1, 1), 7.5)
