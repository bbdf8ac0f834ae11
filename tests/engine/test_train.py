import numpy as np
import pytest
import torch

from nfsd_server.checkpoints import read_checkpoint_info
from nfsd_contract import resolve_spec
from nfsd_server.resume import load_checkpoint
from nfsd_server.train import (
    CHECKPOINT_NAME,
    Callbacks,
    GenerationCancelled,
    TrainConfig,
    Trainer,
    render_resolution,
    timestep_range,
    train,
)


def draft(prompt="a hamburger", seed=0, **overrides):
    return resolve_spec(prompt, preset="draft", seed=seed, **overrides)


def params_of(result):
    return torch.cat([p.detach().flatten() for p in result.field.parameters()])


def test_twenty_nfsd_steps_on_tiny_sd_change_the_nerf_with_finite_loss(tiny_sd_prior):
    initial = params_of(train(draft(steps=1), tiny_sd_prior))
    losses = []
    result = train(draft(steps=20), tiny_sd_prior, callbacks=Callbacks(on_progress=lambda s, n, loss, eta: losses.append(loss)))
    assert len(losses) == 20 and all(np.isfinite(losses))
    assert not torch.allclose(params_of(result), initial)
    assert torch.isfinite(params_of(result)).all()


@pytest.mark.parametrize("method", ["nfsd", "sds"])
def test_same_seed_same_nerf_different_seed_different_nerf(tiny_sd_prior, method):
    config = draft(method=method, steps=6, seed=7)
    a = params_of(train(config, tiny_sd_prior))
    b = params_of(train(config, tiny_sd_prior))
    c = params_of(train(draft(method=method, steps=6, seed=8), tiny_sd_prior))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_resume_after_cancel_continues_exactly(tiny_sd_prior, tmp_path):
    config, every_4 = draft(steps=10, seed=3), TrainConfig(checkpoint_every=4)
    straight = params_of(train(config, tiny_sd_prior, tmp_path / "straight", config=every_4))

    steps_seen = []
    cancel_after_six = Callbacks(on_progress=lambda s, *_: steps_seen.append(s), should_cancel=lambda: len(steps_seen) >= 6)
    with pytest.raises(GenerationCancelled):
        train(config, tiny_sd_prior, tmp_path / "resumed", cancel_after_six, config=every_4)
    assert steps_seen == [1, 2, 3, 4, 5, 6]  # stopped within one step of the request
    resumed = train(config, tiny_sd_prior, tmp_path / "resumed", resume=True, config=every_4)  # from step 6
    assert resumed.steps_done == 10
    assert torch.equal(params_of(resumed), straight)


def test_a_cancel_saves_its_step_so_resume_loses_nothing(tiny_sd_prior, tmp_path):
    config = draft(steps=8, seed=5)  # checkpoint_every (200) is never reached: only the cancel saves
    straight = params_of(train(config, tiny_sd_prior))

    steps_seen = []
    cancel_after_five = Callbacks(on_progress=lambda s, *_: steps_seen.append(s), should_cancel=lambda: len(steps_seen) >= 5)
    with pytest.raises(GenerationCancelled, match="cancelled at step 5 of 8"):
        train(config, tiny_sd_prior, tmp_path, cancel_after_five)
    assert read_checkpoint_info(tmp_path / CHECKPOINT_NAME)["step"] == 5

    resumed_steps = []
    resumed = train(config, tiny_sd_prior, tmp_path, Callbacks(on_progress=lambda s, *_: resumed_steps.append(s)), resume=True)
    assert resumed_steps == [6, 7, 8]  # continues at the cancel, not from step 0
    assert torch.equal(params_of(resumed), straight)


def test_a_cancel_before_any_step_writes_no_checkpoint(tiny_sd_prior, tmp_path):
    with pytest.raises(GenerationCancelled, match="cancelled at step 0 of 4"):
        train(draft(steps=4), tiny_sd_prior, tmp_path, Callbacks(should_cancel=lambda: True))
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def test_resume_with_other_settings_is_refused(tiny_sd_prior, tmp_path):
    train(draft(steps=2), tiny_sd_prior, tmp_path)
    with pytest.raises(ValueError, match="trained with prompt='a hamburger'"):
        train(draft("a teapot", steps=2), tiny_sd_prior, tmp_path, resume=True)


def test_checkpoint_reloads_the_same_field(tiny_sd_prior, tmp_path):
    result = train(draft(steps=3, seed=1, poly_budget=777), tiny_sd_prior, tmp_path)
    field, metadata = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    points = torch.rand(100, 3) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(field.density(points), result.field.density(points))
    assert metadata["prompt"] == "a hamburger" and metadata["seed"] == 1 and metadata["method"] == "nfsd"
    assert metadata["poly_budget"] == 777 and metadata["texture_size"] == 1024 and metadata["steps"] == 3


def test_previews_are_rgb_uint8_images(tiny_sd_prior):
    previews = []
    train(draft(steps=4), tiny_sd_prior, config=TrainConfig(preview_every=2),
          callbacks=Callbacks(on_preview=lambda step, image: previews.append((step, image))))
    assert [step for step, _ in previews] == [2, 4]
    assert previews[0][1].shape == (64, 64, 3) and previews[0][1].dtype == np.uint8


def test_schedules_anneal_t_and_grow_resolution():
    config = TrainConfig(t_min=0.02, t_max_start=0.98, t_max_end=0.5, t_anneal_power=1.0)
    assert timestep_range(config, 0.0, 1000) == (20, 980)
    assert timestep_range(config, 1.0, 1000) == (20, 500)
    # square-root annealing: a quarter of the way, t_max has gone half of its way (0.98 − 0.48·0.5 = 0.74)
    assert timestep_range(TrainConfig(t_min=0.3, t_max_end=0.5, t_anneal_power=0.5), 0.25, 1000) == (300, 740)
    schedule = ((0.0, 64), (0.5, 128))
    assert [render_resolution(schedule, s / 10) for s in (0, 4, 5, 9)] == [64, 64, 128, 128]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt="  "), "the prompt is empty"),
        (dict(prompt="\u200b\u200b"), "the prompt is empty"),  # zero-width spaces only
        (dict(prompt="x", method="vsd"), "method must be one of"),
        (dict(prompt="x", steps=0), "steps must be in 1..100000, got 0"),
        (dict(prompt="x", steps=100_001), "steps must be in 1..100000, got 100001"),
        (dict(prompt="x", preset="ultra"), "preset must be one of"),
        (dict(prompt="x", guidance_scale=-1.0), "guidance_scale must be > 0"),
        (dict(prompt="x", poly_budget=99), "poly_budget must be in 100..500000"),
        (dict(prompt="x", texture_size=777), "texture_size must be one of"),
        (dict(prompt="x", seed=-1), "seed must be in 0..2147483647"),
        (dict(prompt="a\nb"), "control character"),
    ],
)
def test_bad_settings_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resolve_spec(**kwargs)


def test_settings_resolve_every_default_once():
    settings = resolve_spec("  a red ball ", preset="standard", seed=None)
    assert settings.prompt == "a red ball"
    assert settings.guidance_scale == 7.5 and settings.steps == 5000 and 0 <= settings.seed <= 2**31 - 1
    assert resolve_spec("x", method="sds").guidance_scale == 100.0
    assert resolve_spec("x", model="some/model").prior == "stable-diffusion"
    assert resolve_spec("x", prior="analytic", model="ignored/by/analytic").model is None
    assert resolve_spec("x", prior="stable-diffusion", default_model="d/m").model == "d/m"


def test_bad_optimiser_knobs_name_the_problem():
    with pytest.raises(ValueError, match="timestep range"):
        TrainConfig(t_min=0.6, t_max_end=0.5)
    with pytest.raises(ValueError, match="unknown background 'plaid'"):
        TrainConfig(background="plaid")


def test_resume_refuses_other_shape_settings_and_knows_the_init_mesh_by_content(tmp_path):
    import shutil
    from dataclasses import replace

    import trimesh

    from nfsd_server.checkpoints import CheckpointError
    from nfsd_server.guidance.analytic import AnalyticPrior
    from nfsd_server.resume import check_checkpoint_matches

    mesh, tall = tmp_path / "cube.ply", tmp_path / "tall.ply"
    trimesh.creation.box(extents=(2.0, 2.0, 2.0)).export(mesh)
    trimesh.creation.box(extents=(1.0, 1.0, 3.0)).export(tall)
    copy = tmp_path / "uploads" / "3f2a.ply"  # the same file by another path (as the server stores uploads)
    copy.parent.mkdir()
    shutil.copyfile(mesh, copy)
    settings = resolve_spec("a red ball", preset="draft", steps=2, seed=0, init_mesh=mesh, shape_strength=0.5)
    train(settings, AnalyticPrior(), tmp_path / "run")
    path = tmp_path / "run" / CHECKPOINT_NAME
    info = read_checkpoint_info(path)

    refused = [
        (dict(init_mesh=str(tall)), "init_mesh='cube.ply (sha256 "),
        (dict(init_mesh=None), ", not None;"),
        (dict(shape_strength=0.8), "was trained with shape_strength=0.5, not 0.8;"),
        (dict(keep_geometry=True), "was trained with keep_geometry=False, not True;"),
        (dict(prior="stable-diffusion", model="org/sd", encoder="vae"),
         "was trained with prior='analytic', not 'stable-diffusion';"),
    ]
    for changes, message in refused:
        with pytest.raises(CheckpointError) as error:
            check_checkpoint_matches(info, replace(settings, **changes), path)
        assert message in str(error.value) and "\n" not in str(error.value), str(error.value)
    on_sd = {**info, "settings": {**info["settings"], "prior": "stable-diffusion", "model": "org/sd-a",
                                  "encoder": "vae"}}
    with pytest.raises(CheckpointError, match="was trained with model='org/sd-a', not 'org/sd-b'"):
        check_checkpoint_matches(on_sd, replace(settings, prior="stable-diffusion", model="org/sd-b", encoder="vae"),
                                 path)

    # encoder and dtype change a step's cost, not the target; the same mesh content by any path is the same mesh.
    check_checkpoint_matches(on_sd, replace(settings, prior="stable-diffusion", model="org/sd-a", encoder="taesd",
                                            dtype="fp16", init_mesh=str(copy)), path)
    steps = []
    resumed = train(replace(settings, init_mesh=str(copy), steps=3), AnalyticPrior(), tmp_path / "run",
                    Callbacks(on_progress=lambda s, *_: steps.append(s)), resume=True)
    assert steps == [3] and resumed.steps_done == 3


def test_a_checkpoint_from_before_mesh_hashes_resumes_only_without_an_init_mesh(tmp_path):
    from dataclasses import asdict, replace

    import trimesh

    from nfsd_server.checkpoints import CheckpointError
    from nfsd_server.resume import check_checkpoint_matches

    settings = resolve_spec("a red ball", preset="draft", steps=2, seed=0, janus_guard=False)
    newer = ("init_mesh", "shape_strength", "keep_geometry", "encoder", "dtype", "janus_guard")
    old_info = {"step": 1, "settings": {key: value for key, value in asdict(settings).items() if key not in newer}}
    check_checkpoint_matches(old_info, replace(settings, shape_strength=0.9), tmp_path)  # nothing to compare it with
    # Absent: the guard was off then, though it is on by default now.
    with pytest.raises(CheckpointError, match="was trained with janus_guard=False, not True"):
        check_checkpoint_matches(old_info, resolve_spec("a red ball", preset="draft", steps=2, seed=0), tmp_path)

    mesh = tmp_path / "cube.ply"
    trimesh.creation.box(extents=(2.0, 2.0, 2.0)).export(mesh)
    with pytest.raises(CheckpointError, match=r"was trained with init_mesh=None, not 'cube.ply \(sha256 [0-9a-f]{12}\)'"):
        check_checkpoint_matches(old_info, replace(settings, init_mesh=str(mesh)), tmp_path)


def test_the_analytic_prior_keeps_low_t_and_real_priors_get_the_recipes(tiny_sd_prior):
    from nfsd_server.guidance.analytic import AnalyticPrior

    analytic = Trainer(draft("a red ball", steps=4, prior="analytic"), AnalyticPrior(latent_size=8), None)
    assert timestep_range(analytic.config, 0.0, 1000)[0] == 20  # NFSD's t < 200 branch: its exact pull
    real = Trainer(draft(steps=4), tiny_sd_prior, None)
    assert timestep_range(real.config, 0.0, 1000) == (300, 980)  # the working reproduction's [0.3, 0.98]
