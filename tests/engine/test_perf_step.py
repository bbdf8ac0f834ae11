"""The lean-step machinery: stage timers, the benchmark-only random models, progress cadence, compile flag.

Behaviour only: nothing here asserts a timing (benchmarks/ prints those).
"""

import pytest
import torch

from nfsd_server.guidance import random_models
from nfsd_server.guidance.registry import load_prior
from nfsd_server.guidance.stable_diffusion import ModelLoadError, StableDiffusionPrior
from nfsd_contract import resolve_spec
from nfsd_server.presets import PRESETS
from nfsd_server.train import Callbacks, TrainConfig, Trainer


def draft(steps, seed=0):
    return resolve_spec("a hamburger", preset="draft", steps=steps, seed=seed)


def test_stage_timer_sees_each_stage_of_every_step_in_order(tiny_sd_prior):
    trainer = Trainer(draft(4), tiny_sd_prior, out_dir=None, preset=PRESETS["draft"])  # latent-first as is
    seen = []

    class Record:
        def __init__(self, stage):
            self.stage = stage

        def __enter__(self):
            seen.append(self.stage)

        def __exit__(self, *exc):
            return False

    trainer.stage_timer = Record
    for _ in range(4):
        trainer.train_step()
    # The latent part of the run (3 of 4 steps at the draft preset's 0.75) renders straight into the latent
    # space: no encode stage.
    assert trainer.preset.latent_fraction == 0.75
    assert seen == ["render", "unet", "backward", "optimizer"] * 3 + ["render", "encode", "unet", "backward", "optimizer"]


def test_timing_stages_does_not_change_the_result(tiny_sd_prior):
    settings = draft(3, seed=5)
    plain, timed = Trainer(settings, tiny_sd_prior, None), Trainer(settings, tiny_sd_prior, None)
    timed.stage_timer = lambda stage: torch.autograd.profiler.record_function(stage)
    for _ in range(3):
        plain.train_step()
        timed.train_step()
    assert all(torch.equal(a, b) for a, b in zip(plain.field.parameters(), timed.field.parameters()))


def test_random_full_size_model_is_never_a_fallback_for_a_real_id(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a failing hub id must not fall back to random weights")

    monkeypatch.setattr(random_models, "build_random_stable_diffusion", refuse)
    with pytest.raises(ModelLoadError, match="stabilityai/stable-diffusion-2-1-base"):
        load_prior("stable-diffusion", "stabilityai/stable-diffusion-2-1-base", "cpu")  # offline: not cached


def test_random_models_are_asked_for_by_name_and_unknown_names_are_listed():
    prior = load_prior("stable-diffusion", "random:tiny", "cpu")
    assert isinstance(prior, StableDiffusionPrior) and prior.image_size == 16
    with pytest.raises(ValueError, match=r"unknown random model 'sd99'.*sd21-base"):
        load_prior("stable-diffusion", "random:sd99", "cpu")


def test_sd21_base_random_config_has_the_real_sizes():
    """The benchmark's "real cost" rests on these numbers (checked from the configs; nothing is built)."""
    config = random_models.CONFIGS["sd21-base"]
    assert config["unet"]["sample_size"] * 2 ** (len(config["vae"]["block_out_channels"]) - 1) == 512
    assert config["unet"]["block_out_channels"] == (320, 640, 1280, 1280)
    assert config["unet"]["cross_attention_dim"] == config["text_encoder"]["hidden_size"] == 1024


def test_progress_is_reported_every_step_on_cpu_unless_told_otherwise(tiny_sd_prior):
    def steps_reported(steps_total, config=None):
        steps = []
        Trainer(draft(steps_total), tiny_sd_prior, None, config).run(Callbacks(on_progress=lambda step, *_: steps.append(step)))
        return steps

    assert steps_reported(5) == [1, 2, 3, 4, 5]
    assert steps_reported(7, TrainConfig(progress_every=3)) == [3, 6, 7]  # and the last


def test_compile_flag_compiles_the_shared_unet_once(tiny_sd_prior, monkeypatch):
    calls = []
    monkeypatch.setattr(tiny_sd_prior.unet, "compile", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(tiny_sd_prior, "_unet_compiled", False)
    Trainer(draft(1), tiny_sd_prior, None)
    assert calls == []
    Trainer(draft(1), tiny_sd_prior, None, TrainConfig(compile_unet=True))
    Trainer(draft(1), tiny_sd_prior, None, TrainConfig(compile_unet=True))
    assert calls == [1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host-device syncs only exist on CUDA")
def test_a_training_step_never_waits_for_the_gpu(tmp_path):
    from nfsd_server.guidance.random_models import save_random_stable_diffusion

    prior = load_prior("stable-diffusion", str(save_random_stable_diffusion(tmp_path / "tiny")), "cuda")
    trainer = Trainer(draft(40), prior, None)
    # The occupancy sampler's fixed budget is sized between steps after renders 1, 2, 4, 8, 16 (a sync each,
    # in update) and its grid refreshes at step 16: steps 17–19 are ordinary steps.
    for _ in range(17):
        trainer.train_step()  # warm-up: lazy CUDA initialisation and the budget's first sizings sync
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")



def test_encoding_smaller_is_opt_in_and_keeps_the_latent_shape(tiny_sd_dir, tiny_sd_prior):
    assert tiny_sd_prior.encode_size == tiny_sd_prior.image_size  # the default path encodes at the model's size
    cheap = load_prior("stable-diffusion", str(tiny_sd_dir), "cpu", encode_size=8)
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    latents = cheap.encode(images)
    assert latents.shape == tiny_sd_prior.encode(images).shape == (2, 4, 8, 8)
    latents.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="encode_size must be a multiple of 2"):
        load_prior("stable-diffusion", str(tiny_sd_dir), "cpu", encode_size=7)
