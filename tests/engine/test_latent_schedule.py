"""The latent-first schedule (which steps render latents, which encode RGB) and the RGB phase's encoder."""

import dataclasses
import shutil

import pytest
import torch

from nfsd_server.guidance.analytic import AnalyticPrior
from nfsd_server.guidance.registry import load_prior
from nfsd_server.guidance.stable_diffusion import ModelLoadError
from nfsd_server.presets import PRESETS, Preset
from nfsd_contract import JobSpec, resolve_spec
from nfsd_server.train import Trainer, schedule_phase


def test_the_switch_point_is_a_fraction_of_the_run():
    assert [schedule_phase(0.5, True, step / 6) for step in range(6)] == ["latent"] * 3 + ["rgb"] * 3
    assert {schedule_phase(0.0, True, step / 6) for step in range(6)} == {"rgb"}
    assert {schedule_phase(0.5, False, step / 6) for step in range(6)} == {"rgb"}  # no latent space: RGB only
    assert all(0 < preset.latent_fraction < 1 for preset in PRESETS.values())
    with pytest.raises(ValueError, match="latent_fraction must be in"):
        Preset(**{**vars(PRESETS["draft"]), "latent_fraction": 1.5})


def test_a_preset_is_fitted_to_the_models_config():
    standard = PRESETS["standard"]
    # SD 2.1-base (512 px, 64 latent): every preset as it is.
    assert all(preset.fitted_to(512, 64) == preset for preset in PRESETS.values())
    # A 32 px model with an 8 × 8 latent (the bundled micro model): RGB at its side, no latent-first phase.
    micro = standard.fitted_to(32, 8)
    assert micro.resolution_schedule == ((0.0, 32), (0.5, 32)) and micro.latent_fraction == 0.0
    assert (micro.grid, micro.n_samples) == (standard.grid, standard.n_samples)
    # Latent renders as fine as the first RGB side keep the phase; no latent space drops it.
    assert PRESETS["draft"].fitted_to(256, 32).latent_fraction == 0.75
    assert PRESETS["draft"].fitted_to(256, None).latent_fraction == 0.0


def test_the_trainer_fits_its_preset_to_the_prior(tiny_sd_prior):
    trainer = Trainer(resolve_spec("a red ball", preset="standard", steps=2, seed=0, prior="stable-diffusion",
                                   model="tiny"), tiny_sd_prior, None)
    assert trainer.preset == PRESETS["standard"].fitted_to(16, 8)
    assert trainer.field.config.latent_channels == 0 and trainer.phase(0) == "rgb"
    trainer.train_step()  # renders at the model's 16 px, not the preset's 64


class CountingEncode:
    def __init__(self, encode):
        self.encode, self.calls = encode, []

    def __call__(self, images):
        self.calls.append(tuple(images.shape))
        return self.encode(images)


def _trainer(denoiser, steps=6, **settings):
    preset = dataclasses.replace(PRESETS["draft"], latent_fraction=0.5)  # as is: not fitted to the small prior
    return Trainer(resolve_spec("a red ball", preset="draft", steps=steps, seed=0, **settings), denoiser, None,
                   preset=preset)


def test_latent_steps_render_at_the_latent_side_and_never_encode():
    prior = AnalyticPrior(latent_size=16)
    trainer = _trainer(prior)
    prior.encode = counting = CountingEncode(prior.encode)
    stages = []
    trainer.stage_timer = lambda stage: stages.append(stage) or torch.autograd.profiler.record_function(stage)
    phases = []
    for _ in range(6):
        phases.append(trainer.phase())
        before = len(counting.calls)
        loss = trainer.train_step()
        assert torch.isfinite(loss)
        assert (len(counting.calls) > before) == (phases[-1] == "rgb")
    assert phases == ["latent"] * 3 + ["rgb"] * 3
    assert stages.count("encode") == 3  # the encode stage only exists in RGB steps
    assert counting.calls[0] == (1, 3, 32, 32)  # the draft preset's RGB side, then encoded
    preview = trainer.preview()  # previews stay RGB (the albedo head the latent phase trained)
    assert preview.shape == (64, 64, 3) and preview.dtype.name == "uint8"


def test_rgb_phase_encodes_with_taesd_and_the_latent_phase_with_nothing(tiny_sd_dir):
    prior = load_prior("stable-diffusion", str(tiny_sd_dir), "cpu", encoder="taesd")
    assert prior.encoder_name == "taesd" and (prior.latent_channels, prior.latent_side()) == (4, 8)
    trainer = _trainer(prior, steps=4, prior="stable-diffusion", model=str(tiny_sd_dir), encoder="taesd")
    taesd = CountingEncode(prior.taesd.encode)
    vae = CountingEncode(prior.vae.encode)
    prior.taesd.encode, prior.vae.encode = taesd, vae
    for expected in ([], [], [(1, 3, 16, 16)], [(1, 3, 16, 16)] * 2):
        trainer.train_step()
        assert taesd.calls == expected  # upsampled to the model's 16 px, TAESD only
    assert vae.calls == []  # the VAE never encodes when TAESD is asked for


def test_taesd_latents_have_the_vaes_shape_and_carry_gradients(tiny_sd_dir):
    prior = load_prior("stable-diffusion", str(tiny_sd_dir), "cpu", encoder="taesd")
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    latents = prior.encode(images)
    assert latents.shape == (2, 4, 8, 8)
    latents.sum().backward()
    assert images.grad.abs().sum() > 0


def test_missing_taesd_is_an_error_that_says_how_to_fix_it(tiny_sd_dir, tmp_path):
    folder = tmp_path / "no-taesd"
    shutil.copytree(tiny_sd_dir, folder, ignore=shutil.ignore_patterns("taesd"))
    with pytest.raises(ModelLoadError) as error:
        load_prior("stable-diffusion", str(folder), "cpu", encoder="taesd")
    message = str(error.value)
    assert "huggingface-cli download madebyollin/taesd" in message and "taesd/" in message
    assert "use encoder vae" in message
    assert load_prior("stable-diffusion", str(folder), "cpu").encoder_name == "vae"  # vae needs no TAESD


def test_encoder_is_a_validated_job_setting():
    assert resolve_spec("a red ball").encoder == "pooling"  # the analytic prior's one fixed encoder
    assert resolve_spec("a red ball", model="x/y", encoder="taesd").encoder == "taesd"
    assert resolve_spec("a red ball", model="x/y", preset="high", encoder="vae").encoder == "vae"
    with pytest.raises(ValueError, match=r"encoder must be one of \('auto', 'vae', 'taesd', 'pooling'\), got 'tiny'"):
        resolve_spec("a red ball", model="x/y", encoder="tiny")
    with pytest.raises(ValueError, match="analytic prior has one fixed encoder, not 'taesd'; use encoder auto"):
        resolve_spec("a red ball", prior="analytic", encoder="taesd")
    with pytest.raises(ValueError, match=r"encoder pooling is the analytic prior's own; a Stable Diffusion model takes"):
        resolve_spec("a red ball", model="x/y", encoder="pooling")


def test_an_analytic_asset_records_the_encoder_it_ran():
    """No VAE runs under the analytic prior, so its record says "pooling"; a record or request from when "vae"
    named the analytic prior's own encoder still loads, as what it always meant."""
    spec = resolve_spec("a red ball", prior="analytic")
    assert spec.encoder == "pooling" and spec.to_dict()["encoder"] == "pooling"
    assert JobSpec.from_dict(spec.to_dict() | {"encoder": "vae"}).encoder == "pooling"
    assert resolve_spec("a red ball", prior="analytic", encoder="vae").encoder == "pooling"
    assert load_prior("analytic", device="cpu", encoder="pooling").latent_channels == 4


def test_auto_encoder_is_the_presets_choice():
    # A documented choice (README): TAESD where a step's cost matters most, the exact VAE for the high preset.
    chosen = {name: resolve_spec("a red ball", model="x/y", preset=name).encoder for name in PRESETS}
    assert chosen == {"draft": "taesd", "standard": "taesd", "high": "vae"}
    assert {resolve_spec("a red ball", preset=name).encoder for name in PRESETS} == {"pooling"}  # analytic
    assert resolve_spec("a red ball", model="x/y", preset="high", encoder="taesd").encoder == "taesd"
    resolved = resolve_spec("a red ball", model="x/y")
    with pytest.raises(ValueError, match=r"encoder must be one of \('vae', 'taesd'\), got 'auto'"):
        JobSpec.from_dict(resolved.to_dict() | {"encoder": "auto"})  # a job runs a concrete encoder


def test_the_loader_takes_a_resolved_encoder_only(tiny_sd_dir):
    with pytest.raises(ValueError, match="unknown encoder 'auto'; expected vae or taesd"):
        load_prior("stable-diffusion", str(tiny_sd_dir), "cpu", encoder="auto")


def test_an_auto_job_without_taesd_fails_saying_how_to_fix_it(tiny_sd_dir, tmp_path):
    # Never a silent swap to the VAE: the standard preset's "auto" needs TAESD, and says where to get it.
    folder = tmp_path / "no-taesd"
    shutil.copytree(tiny_sd_dir, folder, ignore=shutil.ignore_patterns("taesd"))
    settings = resolve_spec("a red ball", model=str(folder), preset="standard")
    with pytest.raises(ModelLoadError, match="use encoder vae"):
        load_prior(settings.prior, settings.model, "cpu", encoder=settings.encoder)
