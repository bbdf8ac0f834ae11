
import pytest
import torch

from nfsd_server.guidance.distillation import NFSDGuidance, SDSGuidance
from nfsd_server.guidance.registry import load_prior
from nfsd_server.guidance.stable_diffusion import ModelLoadError, StableDiffusionPrior
from nfsd_server.scene.cameras import VIEW_SUFFIXES, sample_orbit_cameras


@pytest.fixture
def counting_unet(tiny_sd_prior, monkeypatch):
    """Records the batch size of every UNet call."""
    calls = []
    original = tiny_sd_prior.unet.forward

    def forward(sample, timestep, *args, **kwargs):
        calls.append(sample.shape[0])
        return original(sample, timestep, *args, **kwargs)

    monkeypatch.setattr(tiny_sd_prior.unet, "forward", forward)
    return calls


def noisy_inputs(prior, batch, t_values):
    g = torch.Generator().manual_seed(0)
    cams = sample_orbit_cameras(batch, g)
    latents = torch.randn(batch, 4, 8, 8, generator=g)
    return latents, torch.randn_like(latents), torch.tensor(t_values), cams


def test_tiny_sd_loads_through_from_pretrained(tiny_sd_prior, tiny_sd_dir):
    assert isinstance(tiny_sd_prior, StableDiffusionPrior)
    assert tiny_sd_prior.image_size == 16  # UNet sample 8 × VAE factor 2
    assert tiny_sd_prior.alphas_cumprod.shape == (1000,)
    assert not any(p.requires_grad for p in tiny_sd_prior.unet.parameters())
    z = tiny_sd_prior.encode(torch.rand(2, 3, 32, 32, requires_grad=True))
    assert z.shape == (2, 4, 8, 8) and z.requires_grad


def test_prompt_embeddings_have_one_row_per_view(tiny_sd_prior):
    prompts = tiny_sd_prior.prepare_prompts("a hamburger", "ugly")
    assert prompts.prompt_views.shape == (len(VIEW_SUFFIXES), 77, 32)
    assert not torch.allclose(prompts.prompt_views[0], prompts.prompt_views[2])  # "front" ≠ "back"


def test_nfsd_drops_negative_row_when_all_t_below_200(tiny_sd_prior, counting_unet):
    prompts = tiny_sd_prior.prepare_prompts("a hamburger", "ugly")
    latents, noise, t, cams = noisy_inputs(tiny_sd_prior, 3, [10, 150, 199])
    NFSDGuidance(7.5).direction(tiny_sd_prior, latents, noise, t, cams, prompts)
    assert counting_unet == [6]  # one call: cond ×3 + uncond ×3, no negative


def test_nfsd_adds_negative_rows_only_for_large_t(tiny_sd_prior, counting_unet):
    prompts = tiny_sd_prior.prepare_prompts("a hamburger", "ugly")
    latents, noise, t, cams = noisy_inputs(tiny_sd_prior, 3, [10, 600, 900])
    NFSDGuidance(7.5).direction(tiny_sd_prior, latents, noise, t, cams, prompts)
    assert counting_unet == [8]  # 3 + 3 + 2 negatives, still one call
    counting_unet.clear()
    SDSGuidance(100.0).direction(tiny_sd_prior, latents, noise, t, cams, prompts)
    assert counting_unet == [6]


def test_batched_rows_equal_separate_calls(tiny_sd_prior):
    """Batching must not change the maths: compare with per-kind predictions."""
    from nfsd_server.guidance.prior import Conditions, PromptKind
    from nfsd_server.guidance.score import nfsd_direction

    prompts = tiny_sd_prior.prepare_prompts("a hamburger", "ugly")
    latents, noise, t, cams = noisy_inputs(tiny_sd_prior, 2, [50, 700])
    got = NFSDGuidance(7.5).direction(tiny_sd_prior, latents, noise, t, cams, prompts)

    def eps(kind):
        return tiny_sd_prior.predict_noise(latents, t, Conditions(torch.full((2,), kind), cams, prompts))

    expected = nfsd_direction(eps(PromptKind.PROMPT), eps(PromptKind.NULL), eps(PromptKind.NEGATIVE), t, 7.5)
    assert torch.allclose(got, expected, atol=1e-4)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_prior("stable-diffusion", str(tmp_path / "nope"), "cpu")


def test_folder_without_components_names_what_is_missing(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelLoadError, match="missing vae, text_encoder, tokenizer, scheduler"):
        load_prior("stable-diffusion", str(tmp_path), "cpu")


def test_malformed_component_config_names_the_component(tmp_path, tiny_sd_dir):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd_dir, broken)
    (broken / "unet" / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="could not load unet of model folder"):
        load_prior("stable-diffusion", str(broken), "cpu")


def test_unknown_hub_id_offline_says_how_to_fix():
    with pytest.raises(ModelLoadError, match="huggingface-cli download someone/no-such-model"):
        load_prior("stable-diffusion", "someone/no-such-model", "cpu")


def test_unknown_prior_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="stable-diffusion"):
        load_prior("dalle", None, "cpu")


def test_a_prompt_too_long_for_its_view_suffix_is_refused_with_its_token_count(tiny_sd_prior):
    tokenizer = tiny_sd_prior.tokenizer
    prompt = "a red ball " * 9
    count = len(tokenizer(f"{prompt.strip()}, overhead view", truncation=False, verbose=False).input_ids)
    assert count > 77  # the longest view text; before, it was truncated and lost "overhead view" silently
    with pytest.raises(ValueError, match=rf"^the prompt is {count} tokens with its view suffix \('overhead view'\); "
                                         rf"the text encoder reads 77, .* shorten the prompt by {count - 77} tokens$"):
        tiny_sd_prior.prepare_prompts(prompt.strip(), "ugly")
    fits = "a red ball " * 6
    views = tiny_sd_prior.prepare_prompts(fits.strip(), "ugly").prompt_views
    assert all(not torch.allclose(views[i], views[j]) for i in range(4) for j in range(i + 1, 4))


def test_cli_refuses_a_long_prompt_in_one_line(tiny_sd_dir, tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "nfsd_server", "generate", "a red ball " * 10, "--model", str(tiny_sd_dir),
         "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if line.strip()][-1].startswith(
        "nfsd generate: error: the prompt is "
    ) and "tokens with its view suffix" in result.stderr


def test_each_row_gets_its_own_cameras_view_embedding(tiny_sd_prior, monkeypatch):
    from nfsd_server.guidance.prior import Conditions, PromptKind
    from nfsd_server.scene.cameras import make_cameras

    captured = []
    original = tiny_sd_prior.unet.forward

    def forward(sample, timestep, encoder_hidden_states=None, **kwargs):
        captured.append(encoder_hidden_states.clone())
        return original(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs)

    monkeypatch.setattr(tiny_sd_prior.unet, "forward", forward)
    prompts = tiny_sd_prior.prepare_prompts("a hamburger", "ugly")
    # back, front, overhead, side, then the same four cameras as ∅ and negative rows
    cams = make_cameras(torch.tensor([0.0, 0.0, 75.0, 10.0]), torch.tensor([180.0, 10.0, 0.0, 90.0]),
                        torch.full((4,), 3.2), torch.full((4,), 45.0))
    assert cams.view.tolist() == [2, 0, 3, 1]
    from nfsd_server.scene.cameras import Cameras

    rows = Cameras.cat([cams, cams, cams])
    kinds = torch.tensor([PromptKind.PROMPT] * 4 + [PromptKind.NULL] * 4 + [PromptKind.NEGATIVE] * 4)
    tiny_sd_prior.predict_noise(torch.randn(12, 4, 8, 8), torch.full((12,), 500), Conditions(kinds, rows, prompts))
    (embeddings,) = captured
    for row, view in enumerate(cams.view.tolist()):
        assert torch.equal(embeddings[row], prompts.prompt_views[view]), row
        assert torch.equal(embeddings[4 + row], prompts.null[0])
        assert torch.equal(embeddings[8 + row], prompts.negative[0])


def test_a_declared_vocabulary_names_unknown_words_with_the_models_own_summary(tiny_sd_dir, tmp_path):
    import json
    import shutil

    from nfsd_server.guidance.stable_diffusion import ModelLoadError, read_vocabulary

    folder = tmp_path / "closed"
    shutil.copytree(tiny_sd_dir, folder)
    (folder / "vocabulary.json").write_text(json.dumps({"words": ["a", "red", "ball"]}))
    listed = load_prior("stable-diffusion", str(folder), "cpu")
    with pytest.raises(ValueError, match=r"does not know 'blue', 'cube' in the prompt; it knows: a, ball, red$"):
        listed.prepare_prompts("a blue cube", "")
    (folder / "vocabulary.json").write_text(json.dumps({"words": ["a", "red", "ball"], "summary": "red balls only"}))
    with pytest.raises(ValueError, match=r"in the negative prompt; it knows: red balls only$"):
        load_prior("stable-diffusion", str(folder), "cpu").prepare_prompts("a red ball", "ugly")
    (folder / "vocabulary.json").write_text(json.dumps({"words": ["a"], "summary": 3}))
    with pytest.raises(ModelLoadError, match='"summary" must be a string'):
        read_vocabulary(str(folder))
