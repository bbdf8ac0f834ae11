"""Orientation and sparsity losses: values and gradients against hand-computed ones on two rays."""

import math

import torch

from nfsd_server.scene.regularisers import SPARSITY_EPS, orientation_loss, sparsity_loss


def test_orientation_loss_penalises_normals_facing_away_with_the_weight_detached():
    # ray 0 looks down −z at a normal tilted away from the camera (n·d = 0.6); ray 1 sees a front face (n·d = −1).
    normals = torch.tensor([[0.8, 0.0, -0.6], [0.0, 0.0, 1.0]], requires_grad=True)
    directions = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    opacity = torch.tensor([[0.5], [1.0]], requires_grad=True)
    loss = orientation_loss(normals, directions, opacity)
    assert math.isclose(float(loss.detach()), 0.5 * 0.6**2 / 2, rel_tol=1e-6)  # (0.5·0.36 + 1·0) / 2 rays
    loss.backward()
    # ∂/∂n₀ = α₀ · 2(n·d) · d / N = 0.5 · 1.2 · (0, 0, −1) / 2; a front-facing normal gets none.
    assert torch.allclose(normals.grad, torch.tensor([[0.0, 0.0, -0.3], [0.0, 0.0, 0.0]]))
    assert opacity.grad is None or bool((opacity.grad == 0).all())  # the weight is detached


def test_sparsity_loss_pulls_opacity_down_smoothly():
    opacity = torch.tensor([[0.0], [0.3]], requires_grad=True)
    loss = sparsity_loss(opacity)
    expected = (SPARSITY_EPS + math.sqrt(0.09 + SPARSITY_EPS**2)) / 2
    assert math.isclose(float(loss.detach()), expected, rel_tol=1e-6)
    loss.backward()
    # ∂/∂α = α / √(α² + ε²) / N: 0 at empty, 0.3/√0.1/2 ≈ 0.474 at α = 0.3
    assert torch.allclose(opacity.grad, torch.tensor([[0.0], [0.3 / math.sqrt(0.1) / 2]]))
