"""Volume rendering of a NeRFField: per-ray colour, opacity, depth and albedo.

One sampling algorithm for every device, all pure torch: stratified samples per ray (jittered from the job's
generator), pruned by an occupancy grid (``OccupancyGridRenderer``), composited with nerfacc's batched
``render_weight_from_density`` / ``accumulate_along_rays``. No CUDA extension is built or loaded, so
nothing compiles inside a job, and CPU tests run the path CUDA and MPS run. ``StratifiedRenderer`` (no
pruning, no sync) stays for references and for tests that compare against it.

Shading is deferred: one normal per ray, at the expected surface point, instead of one per sample.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from nerfacc.volrend import accumulate_along_rays, render_weight_from_density
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from nfsd_server.devices import host_to_device
from nfsd_server.scene.field import NeRFField
from nfsd_server.scene.sample_budget import BUDGET_STEPS, budget_size, budget_slots, budget_steps_for, scatter_to_samples
from nfsd_server.scene.shading import shade

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RendererConfig:
    n_samples: int = 64  # stratified samples per ray
    occupancy_resolution: int = 64  # cells per side of the occupancy grid
    occupancy_update_every: int = 16  # steps between grid refreshes
    # A cell is occupied where the density at its centre exceeds this (before a one-cell dilation). Low on
    # purpose: at ~0.02 scene units per sample it means an opacity of ~1e-3, so pruning never cuts a surface.
    occupancy_threshold: float = 0.05
    chunk_rays: int = 16_384  # rays per pass when not training (bounds memory for previews)
    # Training with more evaluated samples than this (a space-filling density: every sample of a 128² render)
    # recomputes the field's activations in the backward, this many samples at a time, instead of keeping
    # them: ~1 GiB per chunk at the standard preset, so a step's peak memory is bounded whatever the density.
    recompute_above: int = 1 << 19
    # The fixed sample budget of a training render (scene/sample_budget.py): re-sized every budget_every
    # training renders to the largest occupied share seen × budget_headroom (room for the field to grow).
    budget_every: int = 16
    budget_headroom: float = 1.25
    # Whether training renders use that budget. None: on CUDA only, where counting the occupied samples costs a
    # host sync and a new shape every step; on the CPU counting is free and the budget's headroom is not (1.2×
    # the render + backward in benchmarks/step_cost.py). A captured step needs it everywhere (Trainer sets True).
    fixed_budget: bool | None = None


@dataclass
class RenderOutput:
    """Per pixel: rgb (..., 3) composited on the background; opacity (..., 1); depth (..., 1) (0 where empty);
    albedo (..., 3) composited on the background (for previews and metrics); latent (..., C) in the prior's
    latent space (latent renders only, else None); normals (..., 3) unit, at the expected surface point (lit
    renders only, else None)."""

    rgb: Tensor
    opacity: Tensor
    depth: Tensor
    albedo: Tensor
    latent: Tensor | None = None
    normals: Tensor | None = None


def ray_aabb(origins: Tensor, directions: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """Entry/exit distances (R,) of rays through the cube [-bound, bound]³; exit ≤ entry means a miss."""
    safe = torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
    t0, t1 = (-bound - origins) / safe, (bound - origins) / safe
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far


def evaluate(field: NeRFField, points: Tensor, recompute_above: int) -> tuple[Tensor, Tensor]:
    """field(points) → (density (N,), albedo (N, 3)); over ``recompute_above`` points with autograd on, in
    checkpointed chunks (activations recomputed in the backward, chunk by chunk: same values and gradients)."""
    if not torch.is_grad_enabled() or points.shape[0] <= recompute_above:
        return field(points)
    parts = [checkpoint(field, chunk, use_reentrant=False) for chunk in points.split(recompute_above)]
    return torch.cat([sigma for sigma, _ in parts]), torch.cat([albedo for _, albedo in parts])


class Renderer(nn.Module):
    """Base: turns per-ray albedo/opacity/depth into shaded, composited pixels."""

    def __init__(self, config: RendererConfig = RendererConfig()):
        super().__init__()
        self.config = config

    def update(self, step: int, field: NeRFField) -> None:
        """Refresh acceleration structures (no-op unless the sampler has one)."""

    def note_training_render(self) -> None:
        """Count a training render (a sampler that sizes itself from them overrides this)."""

    @property
    def capturable(self) -> bool:
        """Whether a training render now has fixed shapes and no host sync (it can be captured)."""
        return True

    def integrate(
        self, field: NeRFField, origins: Tensor, directions: Tensor, jitter: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Rays (R, 3), jitter (R, n_samples) in [0, 1) or None (bin centres) → (premultiplied albedo (R, 3),
        opacity (R, 1), depth (R, 1))."""
        raise NotImplementedError

    def draw_jitter(self, n_rays: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """(n_rays, n_samples) sample offsets in their bins, drawn from ``generator`` (the job's, on the CPU)."""
        return host_to_device(torch.rand((n_rays, self.config.n_samples), generator=generator), device)

    def forward(
        self,
        field: NeRFField,
        background: nn.Module,
        origins: Tensor,
        directions: Tensor,
        shading: str = "albedo",
        light_dir: Tensor | None = None,
        generator: torch.Generator | None = None,
        latent: bool = False,
        jitter: Tensor | None = None,
        count_render: bool = True,
    ) -> RenderOutput:
        """origins/directions (B, H, W, 3); light_dir (B, 3) → RenderOutput with (B, H, W, ·) tensors.

        ``generator`` jitters samples (training); None samples bin centres (deterministic previews). ``jitter``
        (B·H·W, n_samples), drawn by ``draw_jitter``, instead of ``generator``: a captured step's input.
        ``latent`` also renders the field's latent head (albedo shading only): ``RenderOutput.latent``.
        ``count_render`` False: a captured step counts its render itself (``note_training_render``), outside the
        captured code, whose Python state must not change from call to call.
        """
        batch_shape = origins.shape[:-1]
        flat_o, flat_d = origins.reshape(-1, 3), directions.reshape(-1, 3)
        if latent and shading != "albedo":
            raise ValueError(f"latent renders are unlit; got shading {shading!r}")
        if jitter is None and generator is not None:
            jitter = self.draw_jitter(flat_o.shape[0], generator, flat_o.device)
        if torch.is_grad_enabled():
            albedo, opacity, depth = self.integrate(field, flat_o, flat_d, jitter)
            if count_render:
                self.note_training_render()
        else:
            chunk = self.config.chunk_rays
            jitters = [None] * len(flat_o.split(chunk)) if jitter is None else jitter.split(chunk)
            parts = [
                self.integrate(field, o, d, j) for o, d, j in zip(flat_o.split(chunk), flat_d.split(chunk), jitters)
            ]
            albedo, opacity, depth = (torch.cat(p) for p in zip(*parts))

        normals = None
        if shading == "albedo":
            color = albedo
        else:
            if light_dir is None:
                raise ValueError(f"shading {shading!r} needs light_dir")
            surface = flat_o + flat_d * depth
            normals = field.normals(surface)
            lights = light_dir.reshape(-1, 1, 3).expand(-1, flat_o.shape[0] // light_dir.shape[0], 3).reshape(-1, 3)
            color = shade(shading, albedo, opacity, normals, lights)
        bg = background(flat_d)
        out = RenderOutput(
            rgb=color + (1.0 - opacity) * bg,
            opacity=opacity,
            depth=depth,
            albedo=albedo + (1.0 - opacity) * bg,
            normals=normals,
        )
        if latent:
            out.latent = field.latent_from(out.albedo)
        return RenderOutput(**{k: None if v is None else v.view(*batch_shape, -1) for k, v in vars(out).items()})


class StratifiedRenderer(Renderer):
    """n_samples stratified samples per ray inside the scene cube; runs on any device, never syncs."""

    def sample_intervals(self, origins: Tensor, directions: Tensor, bound: float, jitter: Tensor | None):
        """(t_starts, t_ends, t_mid), each (R, S): S bins between the cube's entry and exit, each sample at
        ``jitter`` (R, S) in its bin, or at bin centres when it is None."""
        n_samples = self.config.n_samples
        near, far = ray_aabb(origins, directions, bound)
        # Every ray is sampled; a miss gets a zero-length interval (zero weight). Masking hit rays instead
        # would need their count on the host: a device sync every step on CUDA.
        far = torch.maximum(far, near)[:, None]
        near = near[:, None]
        bins = torch.arange(n_samples + 1, device=origins.device, dtype=origins.dtype) / n_samples
        edges = near + (far - near) * bins  # (R, S + 1)
        t_starts, t_ends = edges[:, :-1], edges[:, 1:]
        if jitter is None:
            jitter = torch.full_like(t_starts, 0.5)
        return t_starts, t_ends, t_starts + (t_ends - t_starts) * jitter

    @staticmethod
    def composite(t_starts: Tensor, t_ends: Tensor, t_mid: Tensor, sigmas: Tensor, sample_albedo: Tensor):
        """nerfacc's batched (pure torch) volume rendering of (R, S) samples → (albedo, opacity, depth)."""
        weights, _, _ = render_weight_from_density(t_starts, t_ends, sigmas)
        opacity = accumulate_along_rays(weights, None)
        albedo = accumulate_along_rays(weights, sample_albedo)
        # Expected depth, normalised by opacity so the surface point is on the surface, not pulled to 0.
        depth = accumulate_along_rays(weights, t_mid[..., None]) / opacity.clamp_min(1e-6)
        return albedo, opacity, depth

    def integrate(self, field, origins, directions, jitter):
        t_starts, t_ends, t_mid = self.sample_intervals(origins, directions, field.bound, jitter)
        points = origins[:, None, :] + directions[:, None, :] * t_mid[..., None]
        sigmas, sample_albedo = evaluate(field, points.view(-1, 3), self.config.recompute_above)
        return self.composite(t_starts, t_ends, t_mid, sigmas.view(t_starts.shape), sample_albedo.view(*t_starts.shape, -1))


class OccupancyGridRenderer(StratifiedRenderer):
    """Stratified samples, but the field is evaluated only where an occupancy grid says something may be.

    Pure torch, so every device (CPU, CUDA, MPS) runs the same algorithm and CPU tests exercise it. The grid
    (``occupancy_resolution``³ cells over the scene cube) is refreshed every ``occupancy_update_every`` steps
    from the field's density at the cell centres, then dilated by one cell so a surface can grow into its
    neighbours. Samples in empty cells get density 0 without touching the field: they would weigh ~0 anyway,
    and at the standard preset most samples are empty space, so the hash grid + MLP activations (most of a
    step's memory) shrink accordingly.

    A training render gives the field a fixed number of samples (``scene/sample_budget.py``): no host sync and
    one shape per budget, so a step can be captured or compiled. The budget is a share of all samples, sized in
    ``update`` (one sync, between steps) from the largest occupied share seen since the last sizing, with
    ``budget_headroom``: after the 1st, 2nd, 4th, 8th and 16th training render, then every ``budget_every``.
    Renders without autograd (previews) and the first training render count their occupied samples exactly
    (one sync, outside any captured step).
    """

    def __init__(self, config: RendererConfig = RendererConfig()):
        super().__init__(config)
        side = config.occupancy_resolution
        # Everything is occupied until the first update has looked at the field.
        self.register_buffer("occupancy", torch.ones(side, side, side, dtype=torch.bool))
        # The budget (in whole BUDGET_STEPS of all samples) and the training renders so far are host ints:
        # reading them never waits for the device. The largest occupied share since the budget was sized stays
        # on the device. All three are checkpointed, so a resumed run sizes its budgets as the uninterrupted
        # one did.
        self.budget_steps = BUDGET_STEPS
        self.training_renders = 0
        self.budget_ready = False  # False until the first training render: it counts its samples exactly
        self._sized_at = 0
        self.register_buffer("occupied_peak", torch.zeros(()))

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "budget_steps"] = torch.tensor(self.budget_steps)
        destination[prefix + "training_renders"] = torch.tensor(self.training_renders)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # A checkpoint from before the sample budget has the grid alone: the budget starts afresh.
        self.budget_steps = int(state_dict.get(prefix + "budget_steps", BUDGET_STEPS))
        self.training_renders = int(state_dict.get(prefix + "training_renders", 0))
        self.budget_ready = self.training_renders > 0
        self._sized_at = 0
        state_dict.setdefault(prefix + "occupied_peak", torch.zeros(()))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        for name in ("budget_steps", "training_renders"):
            if prefix + name in unexpected_keys:
                unexpected_keys.remove(prefix + name)

    @torch.no_grad()
    def update(self, step: int, field: NeRFField) -> None:
        self._size_budget()
        if step % self.config.occupancy_update_every:
            return
        side, device = self.config.occupancy_resolution, self.occupancy.device
        centres = (torch.arange(side, device=device, dtype=torch.float32) + 0.5) / side * 2 * field.bound - field.bound
        grid = torch.stack(torch.meshgrid(centres, centres, centres, indexing="ij"), dim=-1).view(-1, 3)
        density = torch.cat([field.density(chunk) for chunk in grid.split(self.config.chunk_rays * 4)])
        # In place: a captured step (CUDA graph) reads the grid at the address it was captured with.
        self.occupancy.copy_(dilate(density.view(side, side, side) > self.config.occupancy_threshold))

    def note_training_render(self) -> None:
        self.training_renders += 1
        self.budget_ready = True

    @property
    def uses_budget(self) -> bool:
        fixed = self.config.fixed_budget
        return self.occupancy.device.type == "cuda" if fixed is None else fixed

    @property
    def capturable(self) -> bool:
        return self.budget_ready and self.uses_budget

    def _size_budget(self) -> None:
        renders = self.training_renders
        early = renders <= 16 and renders & (renders - 1) == 0  # 1, 2, 4, 8, 16: the budget settles quickly
        if renders == 0 or renders == self._sized_at or not (early or renders % self.config.budget_every == 0):
            return
        peak = float(self.occupied_peak)  # the one sync, between steps
        self.budget_steps = budget_steps_for(peak, self.config.budget_headroom)
        self.occupied_peak.zero_()
        self._sized_at = renders

    def integrate(self, field, origins, directions, jitter):
        t_starts, t_ends, t_mid = self.sample_intervals(origins, directions, field.bound, jitter)
        points = origins[:, None, :] + directions[:, None, :] * t_mid[..., None]  # (R, S, 3)
        side = self.config.occupancy_resolution
        cells = ((points + field.bound) / (2 * field.bound) * side).long().clamp(0, side - 1)
        keep = (self.occupancy[cells[..., 0], cells[..., 1], cells[..., 2]] & (t_ends > t_starts)).view(-1)
        n_samples = keep.shape[0]
        training = torch.is_grad_enabled()
        if training and self.budget_ready and self.uses_budget:
            budget = budget_size(self.budget_steps, n_samples)
        else:  # previews, the first training render (nothing seen yet to size a budget by), CPU: exact, one sync
            budget = max(int(keep.sum()), 1)
        slots = budget_slots(keep, budget)
        if training:
            self.occupied_peak.copy_(torch.maximum(self.occupied_peak, slots.occupied.float() / max(n_samples, 1)))
        slot_sigmas, slot_albedo = evaluate(field, points.view(-1, 3)[slots.indices], self.config.recompute_above)
        sigmas = scatter_to_samples(slot_sigmas * slots.density_scale, slots, n_samples).view(t_starts.shape)
        sample_albedo = scatter_to_samples(slot_albedo, slots, n_samples).view(*t_starts.shape, -1)
        return self.composite(t_starts, t_ends, t_mid, sigmas, sample_albedo)


def dilate(occupancy: Tensor) -> Tensor:
    """(D, H, W) bool grown by one cell in all 26 directions: three 1-D passes of slice ORs, which every
    backend runs (no max_pool3d, whose MPS support varies)."""
    for dim in range(3):
        n = occupancy.shape[dim]
        grown = occupancy.clone()
        grown.narrow(dim, 1, n - 1).logical_or_(occupancy.narrow(dim, 0, n - 1))
        grown.narrow(dim, 0, n - 1).logical_or_(occupancy.narrow(dim, 1, n - 1))
        occupancy = grown
    return occupancy


def make_renderer(config: RendererConfig, device: torch.device) -> Renderer:
    """The one sampler every device runs: stratified samples pruned by a torch occupancy grid."""
    log.info("renderer: torch occupancy grid + nerfacc batched volume rendering on %s", device)
    return OccupancyGridRenderer(config).to(device)
