"""The captured render (TrainConfig.capture_render): one graph with no break, the eager step's numbers."""

import torch
from torch._dynamo.utils import counters

from nfsd_contract import resolve_spec
from nfsd_server.train import TrainConfig, Trainer


def trained(prior, config: TrainConfig, steps: int) -> tuple[Trainer, list[torch.Tensor]]:
    """A trainer after ``steps`` steps, and its field's parameters before them."""
    spec = resolve_spec("a hamburger", preset="draft", steps=200, seed=3)
    trainer = Trainer(spec, prior, None, config)
    initial = [p.detach().clone() for p in trainer.field.parameters()]
    for _ in range(steps):
        trainer.train_step()
    return trainer, initial


def test_captured_and_eager_steps_give_the_same_parameters(tiny_sd_prior, quiet_compiler):
    # aot_eager traces render, latent head and their backward as torch.compile does on CUDA (fullgraph: any
    # host sync or data-dependent shape in the step would fail here), then runs the traced graph on the CPU.
    steps = 2  # the first render counts its samples exactly (eager); the second runs the captured graph
    eager, initial = trained(tiny_sd_prior, TrainConfig(), steps)
    counters.clear()
    captured, _ = trained(tiny_sd_prior, TrainConfig(capture_render=True, capture_backend="aot_eager"), steps)
    assert counters["stats"]["unique_graphs"] == 1  # the second render ran the captured graph: one, no break
    assert captured.renderer.training_renders == eager.renderer.training_renders == steps
    assert captured.renderer.budget_steps == eager.renderer.budget_steps
    for (name, value), (_, reference) in zip(captured.field.named_parameters(), eager.field.named_parameters()):
        assert torch.allclose(value, reference, rtol=1e-4, atol=1e-6), name
    moved = [(p - q).abs().max() for p, q in zip(eager.field.parameters(), initial)]
    assert max(moved) > 1e-4  # the steps trained something, so equal parameters say something
