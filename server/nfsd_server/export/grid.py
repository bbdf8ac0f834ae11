"""Sample a density field on a regular grid, densely only where the surface is (coarse-to-fine, surface following).

A NeRF queried at every point of a 256³ grid costs 16.7 M evaluations; the surface touches a few percent of the
grid's cells. So the grid is first sampled every BLOCK points; a block (a BLOCK³ group of cells) is sampled in
full when its corners straddle the threshold, and then any neighbour whose shared face the surface crosses is
sampled too, until the surface is closed. Blocks never sampled get a value on the known side of the threshold,
which marching cubes turns into no triangles. The one limit: a part of the surface that passes no coarse
sample point (thinner and smaller than a block, about 3% of the scene at 256³, and not attached to the rest)
is not found.
"""

from __future__ import annotations

from itertools import product

import numpy as np
import torch

BLOCK = 4  # cells per block edge: coarse samples are 1/64 of the grid; smaller parts than this can be missed


class EmptyFieldError(ValueError):
    """Nothing in the field reaches the surface threshold, so there is no surface to export."""


def field_device(field) -> torch.device:
    """Where to send query points: the device of the field's parameters, or CPU for a parameter-free field."""
    parameters = getattr(field, "parameters", None)
    if parameters is None:
        return torch.device("cpu")
    first = next(iter(parameters()), None)
    return torch.device("cpu") if first is None else first.device


@torch.no_grad()
def query_chunked(function, points: np.ndarray, chunk_size: int, device: torch.device) -> np.ndarray:
    """``function`` on ``points`` (N, 3), sent as float32, ``chunk_size`` at a time; result as float32 numpy.

    NaN results become 0 (empty space, black): a diverged NeRF can return NaN, and the sampler uses NaN to mark
    points it has not queried yet.
    """
    points = np.ascontiguousarray(points, dtype=np.float32)
    outputs = [
        function(torch.from_numpy(points[start : start + chunk_size]).to(device)).float().cpu().numpy()
        for start in range(0, len(points), chunk_size)
    ]
    return np.nan_to_num(np.concatenate(outputs), nan=0.0)


def sample_density(field, resolution: int, threshold: float, chunk_size: int) -> tuple[np.ndarray, int]:
    """Density on a ``resolution``³ grid spanning [-bound, bound]³, exact wherever the surface is.

    Returns (volume (R, R, R) float32, axes x, y, z; number of points queried). Points away from the surface
    hold 0 (outside) or 2 * threshold (inside) instead of the field's value.
    Raises EmptyFieldError when no sampled density exceeds ``threshold``.
    """
    device = field_device(field)
    axis = np.linspace(-field.bound, field.bound, resolution, dtype=np.float32)
    volume = np.full((resolution,) * 3, np.nan, np.float32)
    n_blocks = -(-(resolution - 1) // BLOCK)
    coarse = np.minimum(np.arange(n_blocks + 1) * BLOCK, resolution - 1)
    coarse_points = np.stack(np.meshgrid(axis[coarse], axis[coarse], axis[coarse], indexing="ij"), -1)
    coarse_values = query_chunked(field.density, coarse_points.reshape(-1, 3), chunk_size, device)
    coarse_values = coarse_values.reshape((n_blocks + 1,) * 3)
    volume[np.ix_(coarse, coarse, coarse)] = coarse_values
    max_density = float(coarse_values.max())

    inside = coarse_values > threshold
    corners = [inside[dx : dx + n_blocks, dy : dy + n_blocks, dz : dz + n_blocks] for dx, dy, dz in product((0, 1), repeat=3)]
    straddles = np.any(corners, axis=0) & ~np.all(corners, axis=0)
    sampled = np.zeros((n_blocks,) * 3, bool)
    frontier = np.argwhere(straddles)
    queried = coarse_values.size
    offsets = np.arange(BLOCK + 1)
    while len(frontier):
        sampled[tuple(frontier.T)] = True
        # (K, B+1) point indices per axis of each block; the last block is clamped (repeats its last point).
        ix, iy, iz = (np.minimum(frontier[:, [a]] * BLOCK + offsets, resolution - 1) for a in range(3))
        flat = (ix[:, :, None, None] * resolution + iy[:, None, :, None]) * resolution + iz[:, None, None, :]
        values = volume.reshape(-1)
        todo = np.unique(flat[np.isnan(values[flat])])
        i, rest = np.divmod(todo, resolution * resolution)
        j, k = np.divmod(rest, resolution)
        points = np.stack([axis[i], axis[j], axis[k]], axis=1)
        if len(points):
            values[todo] = query_chunked(field.density, points, chunk_size, device)
            max_density = max(max_density, float(values[todo].max()))
        queried += len(todo)
        frontier = _neighbours_across_crossed_faces(values[flat] > threshold, frontier, sampled)
    if not max_density > threshold:
        # Half the peak is only a usable threshold when there is a peak: settings reject a threshold of 0.
        fix = (
            f"export with a lower threshold (e.g. --threshold {max_density / 2:.3g}) or train longer"
            if max_density > 0
            else "the field has no density anywhere (a collapsed or diverged NeRF); train again, e.g. with another seed"
        )
        raise EmptyFieldError(
            f"the field is empty: the highest density sampled is {max_density:.4g}, below the surface threshold "
            f"{threshold:.4g}; {fix}"
        )
    _fill_unsampled(volume, inside, threshold)
    return volume, queried


def _neighbours_across_crossed_faces(inside: np.ndarray, blocks: np.ndarray, sampled: np.ndarray) -> np.ndarray:
    """Unsampled blocks next to a face of ``blocks`` (K, 3) that the surface crosses; ``inside`` (K, B+1, B+1, B+1)."""
    n_blocks = sampled.shape[0]
    found = []
    for axis in range(3):
        for side, step in ((0, -1), (-1, 1)):
            face = np.take(inside, side, axis=axis + 1).reshape(len(blocks), -1)
            crossed = face.any(axis=1) & ~face.all(axis=1)
            neighbour = blocks[crossed].copy()
            neighbour[:, axis] += step
            found.append(neighbour[(neighbour[:, axis] >= 0) & (neighbour[:, axis] < n_blocks)])
    candidates = np.unique(np.concatenate(found), axis=0)
    return candidates[~sampled[tuple(candidates.T)]] if len(candidates) else candidates


def exact_mask(volume: np.ndarray, threshold: float) -> np.ndarray:
    """(R, R, R) bool: where ``sample_density``'s volume holds the field's own density, not a stand-in (0 or
    2 * threshold). A true density exactly equal to a stand-in counts as one: harmless, it is one either way."""
    return (volume != 0.0) & (volume != np.float32(2.0 * threshold))


def _fill_unsampled(volume: np.ndarray, coarse_inside: np.ndarray, threshold: float) -> None:
    """Unsampled points take the side of their block's first corner (all its corners agree, or it was sampled)."""
    resolution = volume.shape[0]
    block_of = np.minimum(np.arange(resolution) // BLOCK, coarse_inside.shape[0] - 2)
    side = coarse_inside[np.ix_(block_of, block_of, block_of)]
    unsampled = np.isnan(volume)
    volume[unsampled] = np.where(side[unsampled], 2.0 * threshold, 0.0)
