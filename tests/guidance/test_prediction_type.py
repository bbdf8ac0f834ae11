"""v-prediction checkpoints (SD 2.x 768, many fine-tunes) must be converted to ε, and unknown types refused."""

import json
import math
import shutil

import pytest
import torch
from nfsd_server.guidance.prior import Conditions, PromptKind
from nfsd_server.guidance.registry import load_prior
from nfsd_server.guidance.stable_diffusion import ModelLoadError
from nfsd_server.scene.cameras import sample_orbit_cameras


def copy_with_prediction_type(tiny_sd_dir, folder, prediction_type):
    shutil.copytree(tiny_sd_dir, folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["prediction_type"] = prediction_type
    config_path.write_text(json.dumps(config))
    return folder


def alpha_bar(t: int) -> float:
    """ᾱ_t of SD's scaled-linear schedule (β from 0.00085 to 0.012, linear in √β), by hand in float64."""
    lo, hi = math.sqrt(0.00085), math.sqrt(0.012)
    product = 1.0
    for i in range(t + 1):
        product *= 1.0 - (lo + (hi - lo) * i / 999) ** 2
    return product


def test_v_prediction_output_is_converted_to_epsilon(tiny_sd_dir, tiny_sd_prior, tmp_path):
    v_prior = load_prior("stable-diffusion", str(copy_with_prediction_type(tiny_sd_dir, tmp_path / "v", "v_prediction")), "cpu")
    assert v_prior.prediction_type == "v_prediction"
    g = torch.Generator().manual_seed(0)
    cameras = sample_orbit_cameras(2, g)
    latents_noisy = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([100, 800])
    conditions = Conditions(torch.full((2,), PromptKind.PROMPT), cameras, v_prior.prepare_prompts("a cup", "ugly"))
    # Same weights: the ε-model's output IS the raw UNet output v, so ε = √ᾱ·v + √(1−ᾱ)·z_t by hand.
    v = tiny_sd_prior.predict_noise(latents_noisy, t, conditions)
    eps = v_prior.predict_noise(latents_noisy, t, conditions)
    for row, step in enumerate(t.tolist()):
        a = alpha_bar(step)
        index = (row, 1, 3, 5)
        expected = math.sqrt(a) * float(v[index]) + math.sqrt(1 - a) * float(latents_noisy[index])
        assert abs(float(eps[index]) - expected) < 1e-4 * max(1.0, abs(expected))
    a = torch.tensor([alpha_bar(step) for step in t.tolist()]).view(-1, 1, 1, 1)
    assert torch.allclose(eps, a.sqrt() * v + (1 - a).sqrt() * latents_noisy, atol=1e-4)
    assert not torch.allclose(eps, v, atol=1e-2)  # the conversion is not a no-op


def test_an_unsupported_prediction_type_is_refused_by_name(tiny_sd_dir, tmp_path):
    folder = copy_with_prediction_type(tiny_sd_dir, tmp_path / "sample", "sample")
    with pytest.raises(ModelLoadError, match=r"prediction_type='sample'; only 'epsilon' and 'v_prediction'"):
        load_prior("stable-diffusion", str(folder), "cpu")
