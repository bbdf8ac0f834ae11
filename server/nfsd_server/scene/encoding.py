"""Multiresolution hash-grid encoding (Müller et al. 2022, Instant-NGP), in pure torch.

Runs anywhere torch runs (no tiny-cuda-nn). Each level looks up the 8 corners of the voxel that holds the
point (a dense grid where it fits in the table, a spatial hash otherwise) and interpolates trilinearly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

# Instant-NGP's hash primes; the first is 1 so the hash is coherent along x.
_PRIMES = (1, 2_654_435_761, 805_459_861)


@dataclass(frozen=True)
class HashGridConfig:
    n_levels: int = 16
    features_per_level: int = 2
    log2_table_size: int = 19
    base_resolution: int = 16
    max_resolution: int = 2048

    @property
    def output_dim(self) -> int:
        return self.n_levels * self.features_per_level


class HashGridEncoding(nn.Module):
    """points (N, 3) in [0, 1]³ → features (N, n_levels * features_per_level)."""

    def __init__(self, config: HashGridConfig = HashGridConfig()):
        super().__init__()
        if config.n_levels < 1 or config.base_resolution < 2 or config.max_resolution < config.base_resolution:
            raise ValueError(f"invalid hash grid config {config}: need n_levels ≥ 1 and 2 ≤ base ≤ max resolution")
        self.config = config
        table_size = 2**config.log2_table_size
        growth = (
            math.exp((math.log(config.max_resolution) - math.log(config.base_resolution)) / (config.n_levels - 1))
            if config.n_levels > 1
            else 1.0
        )
        resolutions = [int(math.floor(config.base_resolution * growth**level)) for level in range(config.n_levels)]
        # Levels whose (res+1)³ grid fits in the table are indexed densely: no collisions there.
        dense = [(res + 1) ** 3 <= table_size for res in resolutions]
        self.register_buffer("resolutions", torch.tensor(resolutions, dtype=torch.long), persistent=False)
        if dense != sorted(dense, reverse=True):
            raise AssertionError("dense levels must come first")  # resolutions grow with the level
        self.n_dense_levels = sum(dense)
        self.register_buffer("level_offsets", torch.arange(config.n_levels) * table_size, persistent=False)
        self.register_buffer("primes", torch.tensor(_PRIMES, dtype=torch.long), persistent=False)
        self.table_size = table_size
        self.embeddings = nn.Parameter(
            torch.empty(config.n_levels * table_size, config.features_per_level).uniform_(-1e-4, 1e-4)
        )

    @property
    def output_dim(self) -> int:
        return self.config.output_dim

    def forward(self, points: Tensor) -> Tensor:
        """(N, 3) → (N, L·F). Saved for the backward per point and level: 8 int32 corner ids + 8 float weights
        (int64 ids would double the first: 1.6 GB more at the standard preset's 1.6M samples)."""
        n_points, n_levels = points.shape[0], self.config.n_levels
        scaled = points.clamp(0.0, 1.0)[:, None, :] * self.resolutions.to(points.dtype)[None, :, None]  # (N, L, 3)
        base = scaled.floor().clamp_max(self.resolutions[None, :, None] - 1)
        frac = scaled - base
        # int32 is exact here: coordinates ≤ max_resolution, dense ids < table size, level offsets < L·table size.
        base = base.int()
        # Per axis, the two candidate corner coordinates (floor, floor + 1): (N, L, 3, 2).
        axis_coords = torch.stack([base, base + 1], dim=-1)
        del base, scaled
        index = torch.empty(n_points, n_levels, 2, 2, 2, dtype=torch.int32, device=points.device)
        n_dense = self.n_dense_levels
        if n_dense:
            stride = (self.resolutions[:n_dense] + 1).int()[None, :, None]
            coords = axis_coords[:, :n_dense]
            index[:, :n_dense] = (
                coords[:, :, 0, :, None, None]
                + stride[..., None, None] * coords[:, :, 1, None, :, None]
                + (stride * stride)[..., None, None] * coords[:, :, 2, None, None, :]
            )
        if n_dense < n_levels:
            # Hash each axis once (the product needs int64), mask to the table (masking commutes with XOR),
            # then XOR the 2×2×2 combinations by broadcasting in int32.
            hashed = ((axis_coords[:, n_dense:].long() * self.primes[None, None, :, None]) & (self.table_size - 1)).int()
            index[:, n_dense:] = (
                hashed[:, :, 0, :, None, None] ^ hashed[:, :, 1, None, :, None] ^ hashed[:, :, 2, None, None, :]
            )
            del hashed
        del axis_coords
        index = index.view(n_points, n_levels, 8) + self.level_offsets.int()[None, :, None]
        axis_weights = torch.stack([1 - frac, frac], dim=-1)  # (N, L, 3, 2)
        weights = (
            axis_weights[:, :, 0, :, None, None]
            * axis_weights[:, :, 1, None, :, None]
            * axis_weights[:, :, 2, None, None, :]
        )
        corner_features = _GatherRows.apply(self.embeddings, index.view(-1)).view(n_points, n_levels, 8, -1)
        return (weights.view(n_points, n_levels, 8, 1) * corner_features).sum(2).view(n_points, -1)


class _GatherRows(torch.autograd.Function):
    """table.index_select(0, index) that keeps int32 ids for the backward and scatters with int64 ones.

    index_select's own backward is an index_add (much faster on CPU than advanced indexing's, or
    embedding_bag's ~4×), but index_add with int32 ids is ~6× slower on CPU than with int64: so the ids are
    saved small and widened only for the moment of the scatter.
    """

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.n_rows = table.shape[0]
        return table.index_select(0, index)

    @staticmethod
    def backward(ctx, grad_rows: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        grad_table = grad_rows.new_zeros(ctx.n_rows, grad_rows.shape[1]).index_add_(0, index.long(), grad_rows)
        return grad_table, None
