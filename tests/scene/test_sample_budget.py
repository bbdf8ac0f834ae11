"""The fixed-budget occupancy sampler: the previous sampler's image with no host sync and fixed shapes."""

import pytest
import torch
from nfsd_server.guidance.references import BACKGROUND, REFERENCES
from nfsd_server.scene.cameras import camera_rays, make_cameras
from nfsd_server.scene.field import SolidBackground
from nfsd_server.scene.renderer import OccupancyGridRenderer, RendererConfig, evaluate
from nfsd_server.scene.sample_budget import BUDGET_STEPS, budget_slots, budget_steps_for, scatter_to_samples
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode


class ReferenceField(nn.Module):
    """An analytic reference as a NeRF: density 40 inside its SDF (a 0.01-wide edge), its flat colour."""

    bound = 1.0

    def __init__(self, reference):
        super().__init__()
        self.sdf = reference.sdf
        self.register_buffer("color", torch.tensor(reference.color))
        self.peak_density = nn.Parameter(torch.tensor(40.0))  # something for a backward to reach
        self.points_seen = []

    def density(self, points):
        return self.peak_density * torch.sigmoid(-self.sdf(points) / 0.01)

    def forward(self, points):
        self.points_seen.append(points.shape[0])
        return self.density(points), self.color.expand(points.shape[0], 3)


class NonzeroSampler(OccupancyGridRenderer):
    """The sampler before the budget, kept as the oracle: field on exactly the occupied samples (``nonzero``)."""

    def integrate(self, field, origins, directions, jitter):
        t_starts, t_ends, t_mid = self.sample_intervals(origins, directions, field.bound, jitter)
        points = origins[:, None, :] + directions[:, None, :] * t_mid[..., None]
        side = self.config.occupancy_resolution
        cells = ((points + field.bound) / (2 * field.bound) * side).long().clamp(0, side - 1)
        kept = (self.occupancy[cells[..., 0], cells[..., 1], cells[..., 2]] & (t_ends > t_starts)).nonzero(as_tuple=True)
        sigmas, albedo = points.new_zeros(t_starts.shape), points.new_zeros((*t_starts.shape, 3))
        kept_sigmas, kept_albedo = evaluate(field, points[kept], self.config.recompute_above)
        return self.composite(t_starts, t_ends, t_mid, sigmas.index_put(kept, kept_sigmas),
                              albedo.index_put(kept, kept_albedo))


def analytic_views(side=32):
    """Three views at the analytic prior's distances (3–3.6), as it trains."""
    cameras = make_cameras(torch.tensor([20.0, -5.0, 60.0]), torch.tensor([30.0, 200.0, 100.0]),
                           torch.tensor([3.0, 3.3, 3.6]), torch.full((3,), 40.0))
    return camera_rays(cameras, side, side)


def render(renderer, field, seed=0):
    origins, directions = analytic_views()
    return renderer(field, SolidBackground(BACKGROUND), origins, directions, generator=torch.Generator().manual_seed(seed))


def test_slots_take_the_occupied_samples_in_order_or_evenly_spaced_with_their_density_scaled():
    keep = torch.tensor([False, True, True, False, True, True, True, False])
    roomy = budget_slots(keep, 8)
    assert roomy.indices.tolist() == [1, 2, 4, 5, 6, 0, 0, 0]
    assert roomy.valid.tolist() == [True] * 5 + [False] * 3
    assert float(roomy.density_scale) == 1.0 and int(roomy.occupied) == 5
    tight = budget_slots(keep, 3)  # 5 occupied into 3 slots: ranks 0, 2, 4, each standing for 5/3 of a sample
    assert tight.indices.tolist() == [1, 4, 6] and tight.valid.all()
    assert float(tight.density_scale) == pytest.approx(5 / 3)
    values = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0])
    assert scatter_to_samples(values[roomy.indices], roomy, 8).tolist() == [0, 20, 30, 0, 50, 60, 70, 0]
    assert budget_slots(torch.zeros(4, dtype=torch.bool), 2).valid.tolist() == [False, False]
    with pytest.raises(ValueError, match="budget must be ≥ 1"):
        budget_slots(keep, 0)


def test_budget_is_the_occupied_share_with_headroom_in_whole_steps():
    assert budget_steps_for(0.10, 1.25) == 8  # 0.125 of all samples = 8/64
    assert budget_steps_for(0.0, 1.25) == 1  # never empty
    assert budget_steps_for(0.9, 1.25) == BUDGET_STEPS  # never more than every sample


@pytest.mark.parametrize("prompt", sorted(REFERENCES))
def test_budget_renders_the_nonzero_samplers_image_on_the_analytic_references(prompt):
    field = ReferenceField(REFERENCES[prompt])
    oracle, budgeted = NonzeroSampler(RendererConfig()), OccupancyGridRenderer(RendererConfig(fixed_budget=True))
    oracle.update(0, field)
    budgeted.update(0, field)
    expected = render(oracle, field)
    render(budgeted, field)  # the first training render sizes itself exactly…
    budgeted.update(1, field)  # …and the budget is sized from it: the occupied share (7–10 %) × 1.25
    assert 4 <= budgeted.budget_steps <= 9
    field.points_seen.clear()
    within = render(budgeted, field)
    assert field.points_seen == [32 * 32 * 3 * 64 * budgeted.budget_steps // BUDGET_STEPS]  # the budget, fixed
    assert torch.allclose(within.rgb, expected.rgb, atol=1e-5)  # every occupied sample fits: the same image
    assert torch.allclose(within.opacity, expected.opacity, atol=1e-5)
    # Half the occupied samples fit: every other one, carrying the optical depth of both. Stated tolerance:
    # mean colour error ≤ 0.002 (measured 0.0002–0.0017), opacity unbiased (mean within 0.002).
    budgeted.budget_steps = max(budgeted.budget_steps // 2 - 1, 1)
    tight = render(budgeted, field)
    assert (tight.rgb - expected.rgb).abs().mean() <= 0.002
    assert abs(float((tight.opacity - expected.opacity).mean().detach())) <= 0.002
    assert 0.1 < float(expected.opacity.mean().detach())  # the object is in view, so the comparison means something


class HostSyncs(TorchDispatchMode):
    """Records the ops that make the host wait for the device: nonzero (its size) and .item()/float()."""

    SYNCING = {"nonzero", "_local_scalar_dense", "masked_select", "unique", "_unique2"}

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.SYNCING:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def test_a_training_render_after_the_first_never_syncs_and_its_shapes_depend_on_the_budget_alone():
    ball, torus = ReferenceField(REFERENCES["a red ball"]), ReferenceField(REFERENCES["a green torus"])
    renderer = OccupancyGridRenderer(RendererConfig(n_samples=32, fixed_budget=True))
    renderer.update(0, ball)
    render(renderer, ball)
    renderer.update(1, ball)
    with HostSyncs() as syncs:
        out = render(renderer, ball, seed=1)
        out.rgb.sum().backward()
    assert syncs.seen == [] and ball.peak_density.grad != 0
    renderer.update(16, torus)  # another occupancy (the torus): the same field input shape
    renderer(torus, SolidBackground(BACKGROUND), *analytic_views(), generator=torch.Generator().manual_seed(2))
    assert torus.points_seen == ball.points_seen[-1:]
    with HostSyncs() as syncs:  # previews still count exactly (outside any step)
        with torch.no_grad():
            render(renderer, ball)
    assert syncs.seen == ["_local_scalar_dense"]


def test_the_budget_state_is_checkpointed_and_an_older_checkpoint_starts_it_afresh():
    field = ReferenceField(REFERENCES["a blue cube"])
    renderer = OccupancyGridRenderer(RendererConfig(n_samples=16, fixed_budget=True))
    renderer.update(0, field)
    render(renderer, field)
    renderer.update(1, field)
    state = renderer.state_dict()
    assert int(state["budget_steps"]) == renderer.budget_steps < BUDGET_STEPS and int(state["training_renders"]) == 1
    restored = OccupancyGridRenderer(RendererConfig(n_samples=16, fixed_budget=True))
    restored.load_state_dict(state)
    assert (restored.budget_steps, restored.training_renders) == (renderer.budget_steps, 1)
    older = OccupancyGridRenderer(RendererConfig(n_samples=16, fixed_budget=True))
    older.load_state_dict({"occupancy": state["occupancy"]})  # before the budget: the grid alone
    assert (older.budget_steps, older.training_renders) == (BUDGET_STEPS, 0)
    assert torch.equal(older.occupancy, renderer.occupancy)


def test_the_budget_is_used_on_cuda_or_when_asked_and_the_cpu_counts_exactly_by_default():
    # On the CPU a count costs no sync but the budget's headroom costs field evaluations (step_cost.py: render +
    # backward 1.2× slower), so it counts exactly there unless a captured step asks for the budget.
    cpu = OccupancyGridRenderer(RendererConfig(n_samples=16))
    assert not cpu.uses_budget and cpu.config.fixed_budget is None
    forced = OccupancyGridRenderer(RendererConfig(n_samples=16, fixed_budget=True))
    assert forced.uses_budget and not OccupancyGridRenderer(RendererConfig(fixed_budget=False)).uses_budget
    cpu.note_training_render()
    forced.note_training_render()
    assert (cpu.capturable, forced.capturable) == (False, True)
