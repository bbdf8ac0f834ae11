import dataclasses

import numpy as np
import pytest
import torch

from nfsd_server.train import (
    CHECKPOINT_NAME,
    Callbacks,
    GenerationCancelled,
    TrainConfig,
    load_checkpoint,
    render_resolution,
    timestep_range,
    train,
)


def params_of(result):
    return torch.cat([p.detach().flatten() for p in result.field.parameters()])


def test_twenty_nfsd_steps_on_tiny_sd_change_the_nerf_with_finite_loss(tiny_sd_prior):
    config = TrainConfig("a hamburger", steps=20, checkpoint_every=1000)
    initial = params_of(train(dataclasses.replace(config, steps=1), tiny_sd_prior))
    losses = []
    result = train(config, tiny_sd_prior, callbacks=Callbacks(on_progress=lambda s, n, loss, eta: losses.append(loss)))
    assert len(losses) == 20 and all(np.isfinite(losses))
    assert not torch.allclose(params_of(result), initial)
    assert torch.isfinite(params_of(result)).all()


@pytest.mark.parametrize("method", ["nfsd", "sds"])
def test_same_seed_same_nerf_different_seed_different_nerf(tiny_sd_prior, method):
    config = TrainConfig("a hamburger", method=method, steps=6, seed=7)
    a = params_of(train(config, tiny_sd_prior))
    b = params_of(train(config, tiny_sd_prior))
    c = params_of(train(dataclasses.replace(config, seed=8), tiny_sd_prior))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_resume_after_cancel_continues_exactly(tiny_sd_prior, tmp_path):
    config = TrainConfig("a hamburger", steps=10, seed=3, checkpoint_every=4)
    straight = params_of(train(config, tiny_sd_prior, tmp_path / "straight"))

    steps_seen = []
    cancel_after_six = Callbacks(on_progress=lambda s, *_: steps_seen.append(s), should_cancel=lambda: len(steps_seen) >= 6)
    with pytest.raises(GenerationCancelled):
        train(config, tiny_sd_prior, tmp_path / "resumed", cancel_after_six)
    assert steps_seen == [1, 2, 3, 4, 5, 6]  # stopped within one step of the request
    resumed = train(config, tiny_sd_prior, tmp_path / "resumed", resume=True)  # from the step-4 checkpoint
    assert resumed.steps_done == 10
    assert torch.equal(params_of(resumed), straight)


def test_resume_with_other_settings_is_refused(tiny_sd_prior, tmp_path):
    train(TrainConfig("a hamburger", steps=2), tiny_sd_prior, tmp_path)
    with pytest.raises(ValueError, match="trained with prompt='a hamburger'"):
        train(TrainConfig("a teapot", steps=4), tiny_sd_prior, tmp_path, resume=True)


def test_checkpoint_reloads_the_same_field(tiny_sd_prior, tmp_path):
    result = train(TrainConfig("a hamburger", steps=3, seed=1), tiny_sd_prior, tmp_path)
    field, metadata = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    points = torch.rand(100, 3) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(field.density(points), result.field.density(points))
    assert metadata["prompt"] == "a hamburger" and metadata["seed"] == 1 and metadata["method"] == "nfsd"


def test_previews_are_rgb_uint8_images(tiny_sd_prior):
    previews = []
    train(TrainConfig("a hamburger", steps=4, preview_every=2), tiny_sd_prior,
          callbacks=Callbacks(on_preview=lambda step, image: previews.append((step, image))))
    assert [step for step, _ in previews] == [2, 4]
    assert previews[0][1].shape == (64, 64, 3) and previews[0][1].dtype == np.uint8


def test_schedules_anneal_t_and_grow_resolution():
    config = TrainConfig("x", t_min=0.02, t_max_start=0.98, t_max_end=0.5)
    assert timestep_range(config, 0, 100, 1000) == (20, 980)
    assert timestep_range(config, 100, 100, 1000) == (20, 500)
    schedule = ((0.0, 64), (0.5, 128))
    assert [render_resolution(schedule, s, 10) for s in (0, 4, 5, 9)] == [64, 64, 128, 128]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt="  "), "prompt is empty"),
        (dict(prompt="x", method="vsd"), "unknown method 'vsd'"),
        (dict(prompt="x", steps=0), "steps must be a positive integer"),
        (dict(prompt="x", preset="ultra"), "unknown preset 'ultra'"),
        (dict(prompt="x", guidance_scale=-1.0), "guidance scale must be > 0"),
    ],
)
def test_bad_settings_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)
