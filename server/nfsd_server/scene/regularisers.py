"""Losses on the render itself that a real prior needs and the analytic one cannot show.

Both are means over rays, so their weight does not depend on the render side; the trainer scales them with
the latent's element count, as the distillation loss (a sum over the latent) scales.
"""

from __future__ import annotations

from torch import Tensor

# threestudio's sparsity smoothing: √(α² + ε²) keeps a gradient at α = 0.
SPARSITY_EPS = 0.1


def orientation_loss(normals: Tensor, directions: Tensor, opacity: Tensor) -> Tensor:
    """DreamFusion's orientation loss: mean over rays of α·max(0, n·d)², α detached.

    normals (N, 3) unit, outward; directions (N, 3) unit, camera → scene; opacity (N, 1) in [0, 1]. A normal
    facing away from the camera (n·d > 0) is penalised, so the density cannot hide a surface that is lit from
    behind by pointing its normals inward. The render weight (here the ray's opacity) is detached as in
    DreamFusion: the loss turns normals, it does not empty the ray.
    """
    facing_away = (normals * directions).sum(-1).clamp_min(0.0)
    return (opacity.detach()[:, 0] * facing_away**2).mean()


def sparsity_loss(opacity: Tensor) -> Tensor:
    """Mean over rays of √(α² + ε²): pushes empty space to stay empty (floaters). opacity (N, 1) in [0, 1]."""
    return (opacity**2 + SPARSITY_EPS**2).sqrt().mean()
