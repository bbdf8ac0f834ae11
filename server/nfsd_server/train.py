"""The optimisation loop: a NeRF distilled from a diffusion prior with NFSD or SDS, or an edit of a finished one
with DDS (its source rendered alongside, ``edit.py``).

One step: sample cameras → render → encode → add noise at t → prior (one batched call) → direction
→ w(t)-weighted stop-gradient loss → backward into the NeRF → Adam. Everything random comes from one
CPU generator seeded by the job seed, so the same seed and settings give the same NeRF on CPU. What a checkpoint
means for a resume or a re-export is ``resume.py``'s.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np
import torch
from torch import Tensor

from nfsd_contract import JobSpec
from nfsd_server import __version__
from nfsd_server.checkpoints import (
    LEGACY_NAME,
    CheckpointError,
    flatten_optimizer,
    read_checkpoint,
    unflatten_optimizer,
    write_checkpoint,
)
from nfsd_server.edit import EDIT_ANCHOR_WEIGHT, read_edit_source
from nfsd_server.guidance.distillation import DeltaDenoising, make_guidance
from nfsd_server.guidance.nonfinite import NonFiniteWatch, nonfinite_hint
from nfsd_server.guidance.prior import Prior
from nfsd_server.guidance.score import distillation_loss, timestep_weight
from nfsd_server.presets import PRESETS, Preset
from nfsd_server.scene.cameras import Cameras, OrbitConfig, camera_rays, make_cameras, sample_orbit_cameras
from nfsd_server.scene.field import BACKGROUNDS, FieldConfig, NeRFField
from nfsd_server.devices import host_to_device
from nfsd_server.eta import EtaClock
from nfsd_server.job_files import JobFiles
from nfsd_server.scene.init_mesh import shape_guide_for
from nfsd_server.scene.mesh_files import mesh_sha256
from nfsd_server.scene.regularisers import orientation_loss, sparsity_loss
from nfsd_server.resume import check_checkpoint_matches
from nfsd_server.scene.renderer import Renderer, RendererConfig, RenderOutput, make_renderer
from nfsd_server.scene.shading import sample_shading

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.safetensors"
PROGRESS_EVERY_CUDA = 10  # steps between loss reads (each one waits for the GPU)
PREVIEW_DISTANCE = 2.25  # the middle of OrbitConfig's distances: previews frame the object as training does


def untimed(stage: str) -> ContextManager[None]:
    """The default ``Trainer.stage_timer``: no timing, no device sync."""
    return contextlib.nullcontext()


class GenerationCancelled(Exception):
    """The job's ``should_cancel`` returned True; training stopped at a step boundary."""


@dataclass
class Callbacks:
    """Optional hooks, called from the thread running the job."""

    on_progress: Callable[[int, int, float, float | None], None] | None = None  # step, total, loss, eta_s
    on_preview: Callable[[int, np.ndarray], None] | None = None  # step, (H, W, 3) uint8 RGB
    on_stage: Callable[[str], None] | None = None  # "loading" | "compiling" | "training" | "exporting"
    should_cancel: Callable[[], bool] | None = None


COMPILE_ROWS = ("static", "dynamic")


@dataclass(frozen=True)
class TrainConfig:
    """The optimiser's knobs, below what an artist chooses (that is the ``JobSpec``)."""

    lr_encoding: float = 1e-2
    lr_networks: float = 1e-3
    grad_clip: float = 1.0
    # Timesteps as fractions of T: min fixed, max annealed from t_max_start to t_max_end as progress^t_anneal_power
    # (0.5: the square-root annealing of the working NFSD reproduction; 1: linear). README "Recipe".
    t_min: float = 0.3
    t_max_start: float = 0.98
    t_max_end: float = 0.5
    t_anneal_power: float = 0.5
    albedo_only_fraction: float = 0.2  # first steps without lighting, so the shape can form first
    shading_probabilities: tuple[float, float, float] = (0.25, 0.375, 0.375)  # albedo, diffuse, textureless
    # Regularisers (scene/regularisers.py), per REFERENCE_LATENT_ELEMENTS latent elements (threestudio's values,
    # whose SDS loss sums over SD's 4×64×64 latent as ours does). Orientation acts on lit renders only and ramps
    # linearly from orient_weight[0] to orient_weight[1] over the first orient_ramp_fraction of the run.
    orient_weight: tuple[float, float] = (10.0, 1000.0)
    orient_ramp_fraction: float = 0.5
    sparsity_weight: float = 1.0
    background: str = "learned"
    orbit: OrbitConfig = field(default_factory=OrbitConfig)
    # An edit's learning rates are this multiple of a new run's: it starts from a finished asset and has a
    # quarter of the steps (benchmarks/edit_dds.py measured 1×, 3×, 5×, 10×).
    edit_lr_scale: float = 3.0
    checkpoint_every: int = 200
    # Also checkpoint once this many seconds passed since the last one (None: by steps only): for workers that
    # may be killed, which would otherwise lose up to checkpoint_every steps.
    checkpoint_every_s: float | None = None
    preview_every: int = 25
    # Reading the loss syncs the device, so on CUDA it is read every few steps; None → 1 on CPU, 10 on CUDA.
    progress_every: int | None = None
    # --- The CUDA path's settings. Their defaults are decided by benchmarks/gpu.sh on a GPU (its compiled and
    # captured rows against the eager one); until it has run, off. ---
    # torch.compile the prior's denoiser: faster steps on CUDA; compiled before the first step ("compiling" stage).
    compile_unet: bool = False
    # "static": one static graph per UNet row count the job can use; "dynamic": one graph, row count symbolic.
    compile_rows: str = "static"
    # Capture the render (NeRF + background + latent head, forward and backward) with torch.compile: on CUDA
    # mode "reduce-overhead" (CUDA graphs: one launch instead of hundreds of small kernels). Off by default until
    # benchmarks/gpu.sh has measured it; where the sampler is not yet capturable (its first render) a step runs
    # eagerly, with the same numbers. capture_backend: torch.compile's (tests: "aot_eager").
    capture_render: bool = False
    capture_backend: str = "inductor"

    def __post_init__(self) -> None:
        if self.progress_every is not None and self.progress_every < 1:
            raise ValueError(f"progress_every must be ≥ 1 (or None for the device default), got {self.progress_every}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; expected one of {sorted(BACKGROUNDS)}")
        if not 0.0 <= self.t_min < self.t_max_end <= self.t_max_start <= 1.0:
            raise ValueError("timestep range must satisfy 0 ≤ t_min < t_max_end ≤ t_max_start ≤ 1")
        if self.compile_rows not in COMPILE_ROWS:
            raise ValueError(f"compile_rows must be one of {COMPILE_ROWS}, got {self.compile_rows!r}")
        if not self.t_anneal_power > 0:
            raise ValueError(f"t_anneal_power must be > 0 (0.5 square root, 1 linear), got {self.t_anneal_power}")


@dataclass
class TrainResult:
    field: NeRFField
    background: torch.nn.Module
    steps_done: int
    checkpoint_path: Path | None
    metadata: dict[str, Any]
    final_loss: float


# The latent element count the regulariser weights are given for: Stable Diffusion's 4×64×64.
REFERENCE_LATENT_ELEMENTS = 4 * 64 * 64


def schedule_progress(step: int, total: int, resumed: tuple[int, float] | None = None) -> float:
    """How far every schedule (phase, t range, resolution, ramps) is at ``step``, in [0, 1].

    step / total; for a run resumed at step s₀ whose schedules were at p₀ (saved by a run with another total),
    p₀ + (1 − p₀)·(step − s₀)/(total − s₀): it continues where it was and ends at ``total``, never going back.
    """
    if resumed is None:
        return min(step / max(total, 1), 1.0)
    start, start_progress = resumed
    remaining = max(total - start, 1)
    return min(start_progress + (1.0 - start_progress) * (step - start) / remaining, 1.0)


def render_resolution(schedule: tuple[tuple[float, int], ...], progress: float) -> int:
    """Coarse to fine: the side of the last milestone (fraction of the run) ``progress`` has reached."""
    return [side for fraction, side in schedule if fraction <= progress][-1]


PHASES = ("latent", "rgb")


def schedule_phase(latent_fraction: float, has_latent_space: bool, progress: float) -> str:
    """"latent" for the first ``latent_fraction`` of the run when the prior has a latent space, else "rgb"."""
    return "latent" if has_latent_space and progress < latent_fraction else "rgb"


def timestep_range(config: TrainConfig, progress: float, num_train_timesteps: int) -> tuple[int, int]:
    """[t_lo, t_hi) integer timesteps at ``progress``; the upper end anneals toward t_max_end."""
    annealed = progress**config.t_anneal_power
    t_max = config.t_max_start + (config.t_max_end - config.t_max_start) * annealed
    t_lo = int(config.t_min * num_train_timesteps)
    return t_lo, max(int(t_max * num_train_timesteps), t_lo + 1)


def orientation_weight(config: TrainConfig, progress: float) -> float:
    """λ_orient at ``progress`` (per REFERENCE_LATENT_ELEMENTS): the linear ramp, then its end value."""
    start, end = config.orient_weight
    ramp = min(progress / config.orient_ramp_fraction, 1.0) if config.orient_ramp_fraction > 0 else 1.0
    return start + (end - start) * ramp


class Trainer:
    """Owns the NeRF, optimiser, RNG and schedules for one job; ``run`` drives it to the end."""

    def __init__(
        self, spec: JobSpec, prior: Prior, out_dir: Path | None, config: TrainConfig | None = None,
        files: JobFiles = JobFiles(), preset: Preset | None = None,
    ):
        """``files``: what ``spec.init_mesh`` and ``spec.edit_of`` name on this machine (a server resolves its
        ids to files; the CLI's are the paths themselves). ``preset``: None → the spec's preset fitted to the
        prior (``Preset.fitted_to``); experiments pass their own as is."""
        self.spec, self.prior, self.out_dir = spec, prior, out_dir
        self.init_mesh_path = files.mesh_file(spec)
        # An edit starts from its source's field and keeps a frozen copy of it to compare against (edit.py).
        self.edit = read_edit_source(files.source_file(spec)) if spec.edit_of else None
        self.config = config = config or TrainConfig()
        self.device = prior.device
        self.total = spec.steps
        self.preset = preset or PRESETS[spec.preset].fitted_to(
            prior.image_size, prior.latent_side() if prior.latent_channels else None)
        self.metadata = {**spec.metadata(), "software": f"nfsd_server {__version__}"}
        self.generator = torch.Generator().manual_seed(spec.seed)
        # An init mesh shapes the field's density and adds a shape loss; see scene/init_mesh.py.
        self.shape_guide = shape_guide_for(spec, self.init_mesh_path) if self.init_mesh_path else None
        self.init_mesh_sha256 = mesh_sha256(self.init_mesh_path) if self.init_mesh_path else None
        # The latent-first schedule renders into the prior's latent space: the field needs a latent head.
        latent_channels = (prior.latent_channels or 0) if self.preset.latent_fraction > 0 else 0
        field_config = FieldConfig(grid=self.preset.grid, hidden_dim=self.preset.hidden_dim, latent_channels=latent_channels)
        if self.shape_guide is not None:
            field_config = self.shape_guide.field_config(field_config)
        if self.edit is not None:
            field_config = self.edit.field_config
            config = self.config = replace(config, background=self.edit.background_kind)
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
            torch.manual_seed(spec.seed)
            self.field = NeRFField(field_config).to(self.device)
            if self.shape_guide is not None:
                self.shape_guide.attach(self.field)
            self.background = BACKGROUNDS[config.background]().to(self.device)
        # A captured render needs the fixed sample budget on every device; else the renderer's default decides.
        renderer_config = RendererConfig(n_samples=self.preset.n_samples,
                                         fixed_budget=True if config.capture_render else None)
        self.renderer: Renderer = make_renderer(renderer_config, self.device)
        self.source_field = self.source_background = self.source_renderer = None
        if self.edit is not None:
            self._start_from_source(renderer_config)
        if self.field.config.latent_channels:
            self.field.set_latent_map(*(tensor.to(self.device) for tensor in prior.latent_color_map()))
        # Keep shape: only colour trains (the encoding and density are the source's, exactly).
        keep_shape = self.edit is not None and spec.keep_shape
        lr_scale = config.edit_lr_scale if self.edit is not None else 1.0
        lr_encoding, lr_networks = config.lr_encoding * lr_scale, config.lr_networks * lr_scale
        groups = [{"params": self.field.albedo_net.parameters(), "lr": lr_networks}] if keep_shape else [
            {"params": self.field.encoding.parameters(), "lr": lr_encoding},
            {"params": [*self.field.density_net.parameters(), *self.field.albedo_net.parameters()],
             "lr": lr_networks},
        ]
        if keep_shape:
            self.field.encoding.requires_grad_(False)
            self.field.density_net.requires_grad_(False)
        self.optimizer = torch.optim.Adam(
            [
                *groups,
                {"params": self.background.parameters(), "lr": lr_networks},
            ],
            betas=(0.9, 0.99),
            eps=1e-15,
            fused=self.device.type == "cuda" or None,  # one kernel for every parameter instead of several each
        )
        self.guidance = DeltaDenoising(spec.guidance_scale, janus_guard=spec.janus_guard) if self.edit is not None \
            else make_guidance(spec.method, spec.guidance_scale, janus_guard=spec.janus_guard)
        self.step = 0
        self.saved_step = 0  # the step of the checkpoint in out_dir (none yet at 0: nothing to lose)
        self.saved_at = time.perf_counter()  # when that checkpoint was written (or training began)
        # (step, schedule progress) where a run with another total was resumed; None: progress = step / total.
        self.resumed: tuple[int, float] | None = None
        self.prompts = prior.prepare_prompts(spec.prompt, spec.negative_prompt)
        self.source_prompts = None if self.edit is None else prior.prepare_prompts(
            spec.source_prompt or self.edit.spec.prompt, spec.negative_prompt)
        # Priors trained on unlit references (the analytic one) can only judge albedo renders.
        self.lighting = prior.accepts_shading
        self.config = config = prior.recipe_overrides().apply(config)
        if config.compile_unet:
            prior.compile(dynamic_rows=config.compile_rows == "dynamic")
        self.captured_render = None
        if config.capture_render:
            mode = "reduce-overhead" if self.device.type == "cuda" and config.capture_backend == "inductor" else None
            self.captured_render = torch.compile(self._render_tensors, backend=config.capture_backend, mode=mode,
                                                 fullgraph=True)
        # stage name → context manager around that part of train_step; benchmarks swap in a timer
        # (stages: render, encode, unet, backward, optimizer).
        self.stage_timer: Callable[[str], ContextManager[None]] = untimed
        # (w(t)·direction, progress in [0, 1]) → the gradient applied; None: as is. Experiments plug in here
        # (the lab's score clipping).
        self.grad_hook: Callable[[Tensor, float], Tensor] | None = None
        self.progress_every = config.progress_every or (PROGRESS_EVERY_CUDA if self.device.type == "cuda" else 1)
        # A persistent run of NaN/inf from the prior fails the job (checked where the loss is read anyway).
        self.nonfinite = NonFiniteWatch(self.device, nonfinite_hint(getattr(prior, "unet_dtype", None)))

    # -- one step ---------------------------------------------------------------------------------
    def progress(self, step: int | None = None) -> float:
        """How far the schedules are at ``step`` (default: the next one), in [0, 1]."""
        return schedule_progress(self.step if step is None else step, self.total, self.resumed)

    def phase(self, step: int | None = None) -> str:
        """"latent" or "rgb" for ``step`` (default: the next one); an edit's source is past its latent phase."""
        if self.edit is not None:
            return "rgb"
        return schedule_phase(self.preset.latent_fraction, bool(self.field.config.latent_channels), self.progress(step))

    def _start_from_source(self, renderer_config: RendererConfig) -> None:
        """The edit's field, background and sampler start as the source's; frozen copies render the source."""
        sections = self.edit.sections
        try:
            self.field.load_state_dict(sections["field"])
            self.background.load_state_dict(sections.get("background", {}))
            self.renderer.load_state_dict(sections.get("renderer", {}))
        except RuntimeError as error:
            raise CheckpointError(f"checkpoint {str(self.edit.path)!r} does not fit this engine: {error}"[:500]) from None
        self.source_field = copy.deepcopy(self.field).requires_grad_(False).eval()
        self.source_background = copy.deepcopy(self.background).requires_grad_(False).eval()
        self.source_renderer = copy.deepcopy(self.renderer)

    def train_step(self) -> Tensor:
        config, generator = self.config, self.generator
        progress = self.progress()
        latent_phase = self.phase() == "latent"
        side = render_resolution(self.preset.resolution_schedule, progress)
        if latent_phase:  # straight into the prior's latent space, at its latent side
            side = self.prior.latent_side()
        cameras = sample_orbit_cameras(self.preset.batch_size, generator, config.orbit)
        albedo_only = not self.lighting or progress < config.albedo_only_fraction
        shading = sample_shading(generator, albedo_only, config.shading_probabilities)
        if latent_phase:  # a latent render is unlit: the latent head holds colour, not shading
            shading = "albedo"
        t_lo, t_hi = timestep_range(config, progress, self.prior.num_train_timesteps)
        t = torch.randint(t_lo, t_hi, (len(cameras),), generator=generator)
        # Host-sampled randomness goes to the device without blocking: no sync in the hot loop.
        cameras = Cameras(**{name: host_to_device(value, self.device) for name, value in vars(cameras).items()})

        with self.stage_timer("render"):
            self.renderer.update(self.step, self.field)
            origins, directions = camera_rays(cameras, side, side)
            jitter = self.renderer.draw_jitter(origins[..., 0].numel(), generator, self.device)
            render = self.render(origins, directions, shading, cameras.light_dir, jitter, latent_phase)
            source = None
            if self.edit is not None:  # the frozen source from the same rays, the same jitter
                with torch.no_grad():
                    source = self.source_renderer(self.source_field, self.source_background, origins, directions,
                                                  shading, cameras.light_dir, jitter=jitter, count_render=False)
        if latent_phase:
            latents = render.latent.permute(0, 3, 1, 2)
        else:
            with self.stage_timer("encode"):
                latents = self.prior.encode(render.rgb.permute(0, 3, 1, 2))
                if source is not None:
                    with torch.no_grad():
                        source_latents = self.prior.encode(source.rgb.permute(0, 3, 1, 2))
        with self.stage_timer("unet"):
            noise = host_to_device(torch.randn(latents.shape, generator=generator), self.device)
            t_device = host_to_device(t, self.device)
            alphas = self.prior.alphas_cumprod[t_device].view(-1, 1, 1, 1)
            with torch.no_grad():
                latents_noisy = alphas.sqrt() * latents + (1 - alphas).sqrt() * noise
                if isinstance(self.guidance, DeltaDenoising):  # the same ε at the same t: what they share cancels
                    source_noisy = alphas.sqrt() * source_latents + (1 - alphas).sqrt() * noise
                    direction = self.guidance.edit_direction(self.prior, latents_noisy, source_noisy, t, cameras,
                                                             self.prompts, self.source_prompts)
                else:
                    direction = self.guidance.direction(self.prior, latents_noisy, noise, t, cameras, self.prompts)
                grad = timestep_weight(self.prior.alphas_cumprod, t_device) * direction
                if self.grad_hook is not None:
                    grad = self.grad_hook(grad, progress)
                self.nonfinite.observe(direction, self.step + 1)
        with self.stage_timer("backward"):
            loss = distillation_loss(latents, grad)
            shape_loss = None if self.shape_guide is None else self.shape_guide.loss(self.field, generator, latents[0].numel())
            if shape_loss is not None:
                loss = loss + shape_loss
            loss = loss + self.regularisers(render, directions, progress, latents[0].numel())
            if source is not None and not self.spec.keep_shape:
                loss = loss + self.edit_anchor(render, source)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with self.stage_timer("optimizer"):
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            for param in params:
                if param.grad is not None:
                    torch.nan_to_num_(param.grad, nan=0.0, posinf=0.0, neginf=0.0)
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
            self.optimizer.step()
        self.step += 1
        return loss.detach()

    def render(self, origins: Tensor, directions: Tensor, shading: str, light_dir: Tensor, jitter: Tensor,
               latent: bool) -> RenderOutput:
        """The training render: captured (``TrainConfig.capture_render``) once the sampler is capturable, else eager."""
        if self.captured_render is None or not self.renderer.capturable:
            return self.renderer(self.field, self.background, origins, directions, shading, light_dir, latent=latent,
                                 jitter=jitter)
        if self.device.type == "cuda":  # a new step: the last step's graph outputs may be overwritten now
            torch.compiler.cudagraph_mark_step_begin()
        tensors = self.captured_render(origins, directions, light_dir, jitter, shading, latent)
        self.renderer.note_training_render()
        return RenderOutput(*tensors)

    def _render_tensors(self, origins, directions, light_dir, jitter, shading: str, latent: bool):
        """The renderer's output as a tuple (what a compiled function returns)."""
        out = self.renderer(self.field, self.background, origins, directions, shading, light_dir, latent=latent,
                            jitter=jitter, count_render=False)
        return out.rgb, out.opacity, out.depth, out.albedo, out.latent, out.normals

    def regularisers(self, render, directions: Tensor, progress: float, latent_elements: int) -> Tensor:
        """Sparsity on every render, orientation on lit ones (they have normals), scaled to the latent's size."""
        scale = latent_elements / REFERENCE_LATENT_ELEMENTS
        opacity = render.opacity.reshape(-1, 1)
        loss = self.config.sparsity_weight * scale * sparsity_loss(opacity)
        if render.normals is not None:
            orient = orientation_loss(render.normals.reshape(-1, 3), directions.reshape(-1, 3), opacity)
            loss = loss + orientation_weight(self.config, progress) * scale * orient
        return loss

    def edit_anchor(self, render: RenderOutput, source: RenderOutput) -> Tensor:
        """The pull toward the source's silhouette, weaker as ``edit_strength`` grows (none at 1)."""
        weight = EDIT_ANCHOR_WEIGHT * (1.0 - self.spec.edit_strength)
        return weight * ((render.opacity - source.opacity) ** 2).sum() / render.opacity.shape[0]

    def unet_row_counts(self) -> list[int]:
        """Every row count this run's batched prior calls can have (its t range from now to the end)."""
        t_lo, t_hi = timestep_range(self.config, self.progress(), self.prior.num_train_timesteps)
        return self.guidance.row_counts(self.preset.batch_size, t_lo, t_hi)

    def warm_up(self, callbacks: Callbacks | None = None) -> None:
        """Compile what a compiled prior still lacks for this run's row counts now, saying so ("compiling"
        stage), so no step of the timed loop compiles."""
        rows = self.prior.rows_to_compile(self.unet_row_counts())
        if not rows:
            return
        if callbacks and callbacks.on_stage:
            callbacks.on_stage("compiling")
        log.info("compiling the model for %s UNet rows…", rows)
        self.prior.warm_compiled(self.unet_row_counts(), self.prompts)

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, callbacks: Callbacks | None = None) -> TrainResult:
        callbacks = callbacks or Callbacks()
        self.warm_up(callbacks)
        if callbacks.on_stage:
            callbacks.on_stage("training")
        eta = EtaClock()
        loss_value = float("nan")
        while self.step < self.total:
            if callbacks.should_cancel and callbacks.should_cancel():
                # Save first, so a resume continues from here instead of losing up to checkpoint_every steps.
                if self.out_dir is not None and self.step > self.saved_step:
                    self.save_checkpoint()
                raise GenerationCancelled(f"cancelled at step {self.step} of {self.total}")
            loss = self.train_step()
            eta.step_done(self.step)
            last = self.step == self.total
            if self.step % self.progress_every == 0 or last:
                loss_value = float(loss)
                self.nonfinite.check()
                if not np.isfinite(loss_value):
                    raise FloatingPointError(
                        f"loss became {loss_value} at step {self.step}; lower the guidance scale or learning rate"
                    )
                if callbacks.on_progress:
                    callbacks.on_progress(self.step, self.total, loss_value, eta.eta_s(self.step, self.total))
            if callbacks.on_preview and (self.step % self.config.preview_every == 0 or last):
                callbacks.on_preview(self.step, self.preview())
            every_s = self.config.checkpoint_every_s
            overdue = every_s is not None and time.perf_counter() - self.saved_at >= every_s
            if self.out_dir is not None and (self.step % self.config.checkpoint_every == 0 or last or overdue):
                self.save_checkpoint()
        checkpoint = self.out_dir / CHECKPOINT_NAME if self.out_dir is not None else None
        return TrainResult(self.field, self.background, self.step, checkpoint, self.metadata, loss_value)

    @torch.no_grad()
    def preview(self, elevation: float = 15.0, azimuth: float = 30.0) -> np.ndarray:
        """(S, S, 3) uint8: the current NeRF from a fixed three-quarter view, lit from the camera."""
        side = self.preset.preview_size
        cameras = make_cameras(
            torch.tensor([elevation]), torch.tensor([azimuth]), torch.tensor([PREVIEW_DISTANCE]), torch.tensor([45.0])
        ).to(self.device)
        origins, directions = camera_rays(cameras, side, side)
        shading = "diffuse" if self.lighting else "albedo"
        image = self.renderer(self.field, self.background, origins, directions, shading, cameras.light_dir).rgb[0]
        return (image.clamp(0, 1) * 255).round().byte().cpu().numpy()

    # -- checkpoints ------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Atomically write everything needed to resume bit-for-bit (on CPU) or re-export: tensors + JSON."""
        assert self.out_dir is not None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / CHECKPOINT_NAME
        optimizer_tensors, optimizer_structure = flatten_optimizer(self.optimizer.state_dict())
        sections = {
            "field": self.field.state_dict(),
            "background": self.background.state_dict(),
            "renderer": self.renderer.state_dict(),
            "optimizer": optimizer_tensors,
            "generator": {"": self.generator.get_state()},
        }
        info = {
            "step": self.step,
            "schedule_progress": self.progress(self.step),
            "settings": self.spec.to_dict(),
            "init_mesh_path": None if self.init_mesh_path is None else str(self.init_mesh_path),
            "init_mesh_sha256": self.init_mesh_sha256,  # the mesh by content: its path may differ at resume
            "edit_source_path": None if self.edit is None else str(self.edit.path),
            "edit_source_sha256": None if self.edit is None else self.edit.sha256,
            "config": asdict(self.config),
            "field_config": asdict(self.field.config),
            "background_kind": self.config.background,
            "optimizer": optimizer_structure,
            "metadata": self.metadata,
        }
        write_checkpoint(path, sections, info)
        self.saved_step, self.saved_at = self.step, time.perf_counter()
        return path

    def load_checkpoint(self, path: Path) -> None:
        sections, info = read_checkpoint(path)
        check_checkpoint_matches(info, self.spec, path, self.init_mesh_path, self.init_mesh_sha256)
        if self.edit is not None and info.get("edit_source_sha256") != self.edit.sha256:
            raise CheckpointError(f"checkpoint {str(path)!r} edited another version of {str(self.edit.path)!r}; "
                                  "start the edit again")
        try:
            self.field.load_state_dict(sections.get("field", {}))
            self.background.load_state_dict(sections.get("background", {}))
            self.renderer.load_state_dict(sections.get("renderer", {}))
            self.optimizer.load_state_dict(unflatten_optimizer(sections.get("optimizer", {}), info["optimizer"]))
            self.generator.set_state(sections["generator"][""])
            self.step = self.saved_step = int(info["step"])
            saved_total = int(info["settings"]["steps"])
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
            raise CheckpointError(f"checkpoint {str(path)!r} does not fit this run: {error}"[:500]) from None
        # Another total (now or at an earlier resume): continue the schedules from where they were.
        saved_progress = float(info.get("schedule_progress", schedule_progress(self.step, saved_total)))
        if saved_progress != schedule_progress(self.step, self.total):
            self.resumed = (self.step, saved_progress)
        if self.field.config.latent_channels:  # this run's encoder's map, which may not be the checkpoint's
            self.field.set_latent_map(*(tensor.to(self.device) for tensor in self.prior.latent_color_map()))


def train(
    spec: JobSpec,
    prior: Prior,
    out_dir: Path | None = None,
    callbacks: Callbacks | None = None,
    resume: bool = False,
    config: TrainConfig | None = None,
    files: JobFiles = JobFiles(),
) -> TrainResult:
    """Train a NeRF for ``spec.prompt``; with ``resume`` continue from ``out_dir/CHECKPOINT_NAME`` if present."""
    trainer = Trainer(spec, prior, out_dir, config, files)
    if resume and out_dir is not None and (out_dir / LEGACY_NAME).exists() and not (out_dir / CHECKPOINT_NAME).exists():
        raise CheckpointError(
            f"{str(out_dir / LEGACY_NAME)!r} is an old pickle checkpoint, which is not loaded (unpickling can run "
            "code); resume is not possible: start a new run (without --resume or with another --out)"
        )
    if resume and out_dir is not None and (out_dir / CHECKPOINT_NAME).exists():
        trainer.load_checkpoint(out_dir / CHECKPOINT_NAME)
        log.info("resumed from %s at step %d", out_dir / CHECKPOINT_NAME, trainer.step)
    return trainer.run(callbacks)
