"""The captured render (TrainConfig.capture_render): one graph with no break, the eager step's numbers."""

import torch

from nfsd_contract import resolve_spec
from nfsd_server.train import TrainConfig, Trainer


def trained(prior, config: TrainConfig, steps: int) -> Trainer:
    spec = resolve_spec("a hamburger", preset="draft", steps=200, seed=3)
    trainer = Trainer(spec, prior, None, config)
    for _ in range(steps):
        trainer.train_step()
    return trainer


def test_captured_and_eager_steps_give_the_same_parameters(tiny_sd_prior, quiet_compiler):
    # aot_eager traces render, latent head and their backward as torch.compile does on CUDA (fullgraph: any
    # host sync or data-dependent shape in the step would fail here), then runs the traced graph on the CPU.
    steps = 2  # the first render counts its samples exactly (eager); the second runs the captured graph
    eager = trained(tiny_sd_prior, TrainConfig(), steps)
    captured = trained(tiny_sd_prior, TrainConfig(capture_render=True, capture_backend="aot_eager"), steps)
    assert captured.renderer.training_renders == eager.renderer.training_renders == steps
    assert captured.renderer.budget_steps == eager.renderer.budget_steps
    for (name, value), (_, reference) in zip(captured.field.named_parameters(), eager.field.named_parameters()):
        assert torch.allclose(value, reference, rtol=1e-4, atol=1e-6), name
    moved = [(p - q).abs().max() for p, q in zip(eager.field.parameters(), trained(tiny_sd_prior, TrainConfig(), 0).field.parameters())]
    assert max(moved) > 1e-4  # the steps trained something, so equal parameters say something
