"""A resumed run continues its schedules from where they were: phase and t range never go back."""

import torch

from nfsd_server.guidance.analytic import AnalyticPrior
from nfsd_server.guidance.registry import load_prior
from nfsd_contract import resolve_spec
from nfsd_server.presets import PRESETS
from nfsd_server.train import CHECKPOINT_NAME, Trainer


def recording(trainer):
    """Record (phase, max t) of every step the trainer takes from now on."""
    seen = []
    direction = trainer.guidance.direction

    def record(prior, latents_noisy, noise, t, cameras, prompts):
        seen.append((phase, int(t.max())))
        return direction(prior, latents_noisy, noise, t, cameras, prompts)

    trainer.guidance.direction = record
    steps = []
    for _ in range(trainer.total - trainer.step):
        phase = trainer.phase()
        trainer.train_step()
        steps.append(seen[-1])
    return steps


def test_a_finished_run_resumed_with_more_steps_stays_at_the_end_of_its_schedules(tmp_path):
    prior = AnalyticPrior(latent_size=32)  # its 32 latent keeps the draft latent-first phase
    settings = resolve_spec("a red ball", preset="draft", steps=12, seed=0, prior="analytic")
    first = Trainer(settings, prior, tmp_path)
    end_of_first = recording(first)
    first.save_checkpoint()
    assert end_of_first[0][0] == "latent" and end_of_first[-1][0] == "rgb"
    t_max_at_end = prior.num_train_timesteps * first.config.t_max_end

    longer = Trainer(resolve_spec("a red ball", preset="draft", steps=48, seed=0, prior="analytic"), prior, tmp_path)
    longer.load_checkpoint(tmp_path / CHECKPOINT_NAME)
    resumed = recording(longer)
    assert len(resumed) == 36
    assert {phase for phase, _ in resumed} == {"rgb"}  # not back into the latent phase
    assert max(t for _, t in resumed) < t_max_at_end  # t_max stays at its end, not back at 0.98·T
    longer.save_checkpoint()

    # resumed again with yet more steps: still at the end
    again = Trainer(resolve_spec("a red ball", preset="draft", steps=60, seed=0, prior="analytic"), prior, tmp_path)
    again.load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert again.phase() == "rgb" and again.progress() == 1.0


def test_a_cancelled_run_resumed_with_more_steps_continues_from_where_it_was(tmp_path):
    prior = AnalyticPrior(latent_size=32)  # its 32 latent keeps the draft latent-first phase
    first = Trainer(resolve_spec("a red ball", preset="draft", steps=8, seed=0, prior="analytic"), prior, tmp_path)
    for _ in range(4):
        first.train_step()
    first.save_checkpoint()  # half way: the schedules are at 0.5
    longer = Trainer(resolve_spec("a red ball", preset="draft", steps=24, seed=0, prior="analytic"), prior, tmp_path)
    longer.load_checkpoint(tmp_path / CHECKPOINT_NAME)
    progress = [longer.progress(step) for step in range(4, 25)]
    assert progress[0] == 0.5 and progress[-1] == 1.0
    assert all(b > a for a, b in zip(progress, progress[1:]))  # onward, evenly, to the new end


def test_resume_with_another_encoder_uses_that_encoders_colour_map(tiny_sd_dir, tmp_path):
    vae_prior = load_prior("stable-diffusion", str(tiny_sd_dir), "cpu", encoder="vae")
    taesd_prior = load_prior("stable-diffusion", str(tiny_sd_dir), "cpu", encoder="taesd")
    common = dict(preset="draft", seed=0, prior="stable-diffusion", model=str(tiny_sd_dir))
    latent_first = PRESETS["draft"]  # as is: fitted to the tiny model's 8 × 8 latent it would render RGB only
    Trainer(resolve_spec("a red ball", steps=2, encoder="vae", **common), vae_prior, tmp_path, preset=latent_first).run()
    trainer = Trainer(resolve_spec("a red ball", steps=4, encoder="taesd", **common), taesd_prior, tmp_path,
                      preset=latent_first)
    trainer.load_checkpoint(tmp_path / CHECKPOINT_NAME)
    weight, bias = taesd_prior.latent_color_map()
    assert not torch.allclose(weight, vae_prior.latent_color_map()[0])  # the two encoders differ
    assert torch.equal(trainer.field.latent_weight, weight) and torch.equal(trainer.field.latent_bias, bias)
