"""The lab's score clipping, plugged into the trainer through ``Trainer.grad_hook``."""

import pytest
import torch

from nfsd_contract import resolve_spec
from nfsd_lab.experiments import clip_score, score_clip_hook
from nfsd_server.guidance.analytic import AnalyticPrior
from nfsd_server.train import Trainer


def per_row(*values):
    return torch.tensor(values, dtype=torch.float32).view(len(values), 2, 1, 1)


def test_clip_score_clamps_each_element():
    got = clip_score(per_row((3.0, -0.5), (-4.0, 1.5)), 1.0)
    assert torch.equal(got, per_row((1.0, -0.5), (-1.0, 1.0)))
    with pytest.raises(ValueError, match="the score clip limit must be > 0, got 0.0"):
        clip_score(per_row((1.0, 1.0)), 0.0)


def test_bad_clip_ramp_names_the_problem():
    with pytest.raises(ValueError, match=r"score clip must be \(start, end\) with 0 < start ≤ end, got \(2.0, 1.0\)"):
        score_clip_hook(2.0, 1.0)


def test_score_clip_hook_bounds_every_element_of_the_weighted_direction_and_ramps(monkeypatch):
    import nfsd_server.train as train_module

    grads, real_loss = [], train_module.distillation_loss
    monkeypatch.setattr(train_module, "distillation_loss", lambda latents, grad: grads.append(grad) or real_loss(latents, grad))
    spec = resolve_spec("a red ball", steps=4, prior="analytic", method="sds", guidance_scale=100.0, preset="draft")
    trainer = Trainer(spec, AnalyticPrior(latent_size=8), None)
    trainer.grad_hook = score_clip_hook(0.01, 0.05)
    trainer.run()
    limits = [0.01 + 0.04 * step / 4 for step in range(4)]  # linear from start to end over the run
    assert [round(float(grad.abs().max()), 6) for grad in grads] == pytest.approx(limits)  # SDS s=100 exceeds each
