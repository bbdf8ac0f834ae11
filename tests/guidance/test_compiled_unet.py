"""A compiled UNet compiles before a job's steps, never inside them (graphs counted with a recording backend)."""

import pytest
import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from torch import nn

from nfsd_contract import resolve_spec
from nfsd_server.guidance.distillation import make_guidance
from nfsd_server.guidance.registry import load_prior
from nfsd_server.train import Callbacks, TrainConfig, Trainer


class GraphCounter:
    """A torch.compile backend that runs the traced graph as is and counts the graphs it was given."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


class StandInUNet(nn.Module):
    """The UNet's call signature and output at a fraction of its tracing time: one convolution plus the
    embeddings' mean and the timestep, per row (broadcast to the rows as diffusers' UNet does, which ties
    the timesteps' length to the latents' rows: a dynamic row count must be dynamic in both)."""

    def __init__(self, unet):
        super().__init__()
        self.config, self.dtype = unet.config, unet.dtype
        channels = unet.config.in_channels
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, sample, timestep, encoder_hidden_states):
        per_row = encoder_hidden_states.mean(dim=(1, 2)) + timestep.expand(sample.shape[0]).float() / 1000
        return UNet2DConditionOutput(sample=self.conv(sample) + per_row.view(-1, 1, 1, 1))


@pytest.fixture
def own_tiny_prior(tiny_sd_dir, quiet_compiler):
    """Compiling is in place: a prior of this test's own, so the shared one stays eager."""
    return load_prior("stable-diffusion", str(tiny_sd_dir), "cpu")


def test_row_counts_follow_the_t_range_nfsds_negative_row_and_the_janus_guard():
    nfsd, sds = make_guidance("nfsd", 7.5), make_guidance("sds", 100.0)
    assert nfsd.row_counts(1, 300, 980) == [3]  # the recipe's t ≥ 300: always the negative row
    assert nfsd.row_counts(1, 20, 980) == [2, 3]
    assert nfsd.row_counts(1, 20, 200) == [2]  # t ≤ 199
    assert nfsd.row_counts(2, 20, 980) == [4, 5, 6]  # each image decides for itself
    assert sds.row_counts(1, 20, 980) == [2]
    assert make_guidance("nfsd", 7.5, janus_guard=True).row_counts(1, 300, 980) == [4]
    assert make_guidance("nfsd", 7.5, janus_guard=True).row_counts(1, 20, 980) == [2, 4]  # both rows from t = 200
    assert make_guidance("sds", 100.0, janus_guard=True).row_counts(1, 20, 980) == [2, 3]


def test_static_rows_compile_one_graph_per_row_count_before_the_steps_and_none_during_them(own_tiny_prior):
    counter = GraphCounter()
    own_tiny_prior.unet = StandInUNet(own_tiny_prior.unet)  # what is counted is graphs, not what is in them
    own_tiny_prior.compile(backend=counter)
    # t from 0.1: NFSD with the Janus guard (the default) calls the UNet with 2 rows (t < 200) and 4 (t ≥ 200).
    config = TrainConfig(compile_unet=True, t_min=0.1, t_max_start=0.98, t_max_end=0.5, progress_every=1)
    trainer = Trainer(resolve_spec("a hamburger", preset="draft", steps=2, seed=0), own_tiny_prior, None, config)
    assert trainer.unet_row_counts() == [2, 4]
    stages, graphs_at_stage = [], []

    def on_stage(name):
        stages.append(name)
        graphs_at_stage.append(counter.graphs)

    rows_seen = []
    trainer.run(Callbacks(on_stage=on_stage, on_progress=lambda *_: rows_seen.append(trainer.guidance.last_rows_evaluated)))
    assert stages == ["compiling", "training"]
    assert graphs_at_stage == [0, 2]  # both graphs compiled before "training"…
    assert counter.graphs == 2 and set(rows_seen) <= {2, 4}  # …and none while the steps ran
    assert own_tiny_prior.rows_to_compile([2, 4]) == []  # the next job on this warm prior compiles nothing
    Trainer(resolve_spec("a hamburger", preset="draft", steps=1, seed=1), own_tiny_prior, None, config).warm_up()
    assert counter.graphs == 2


def test_dynamic_rows_compile_one_graph_for_every_row_count(own_tiny_prior):
    counter = GraphCounter()
    own_tiny_prior.unet = StandInUNet(own_tiny_prior.unet)
    own_tiny_prior.compile(dynamic_rows=True, backend=counter)
    prompts = own_tiny_prior.prepare_prompts("a hamburger", "blurry")
    assert own_tiny_prior.rows_to_compile([2, 3]) == [2]
    own_tiny_prior.warm_compiled([2, 3], prompts)
    side = own_tiny_prior.latent_side()
    latents = torch.randn(3, own_tiny_prior.latent_channels, side, side)
    t = torch.tensor([500, 500, 500])
    with torch.no_grad():  # as predict_noise calls it (grad mode is part of what a graph is for)
        compiled = own_tiny_prior._denoise(latents, t, prompts.null.expand(3, -1, -1).contiguous())
        eager = own_tiny_prior.unet.forward(latents, t, encoder_hidden_states=prompts.null.expand(3, -1, -1)).sample
    assert counter.graphs == 1  # the 3-row call reused the graph the 2-row warm-up compiled
    assert torch.allclose(compiled, eager, atol=1e-5)
