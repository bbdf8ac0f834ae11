"""The bundled micro Stable Diffusion: loaded through the real loader, drawing what its captions say."""

import pytest
import torch

from nfsd_lab.micro.judge import judge, silhouettes
from nfsd_lab.micro.sampling import ddim_sample
from nfsd_lab.micro.world import Truth, render_truth, sample_world, vocabulary
from nfsd_server.guidance.registry import load_prior
from nfsd_server.model_source import BUNDLED_MODELS, check_model
from nfsd_server.scene.cameras import make_cameras


@pytest.fixture(scope="module")
def micro():
    return load_prior("stable-diffusion", "micro", "cpu")


def test_the_bundled_folder_loads_as_an_ordinary_stable_diffusion(micro):
    assert type(micro).__name__ == "StableDiffusionPrior"
    assert (micro.image_size, micro.latent_side(), micro.latent_channels) == (32, 8, 4)
    assert micro.vocabulary.words == frozenset(vocabulary())
    check_model("micro")  # a bundled name passes the job's model check
    taesd = load_prior("stable-diffusion", str(BUNDLED_MODELS["micro"]), "cpu", encoder="taesd")
    latents = taesd.encode(torch.full((1, 3, 32, 32), 0.5))
    assert latents.shape == (1, 4, 8, 8) and torch.isfinite(latents).all()


def test_words_outside_the_vocabulary_are_named_with_what_it_knows(micro):
    with pytest.raises(ValueError, match=r"does not know 'hamburger' in the prompt; it knows: .*ball.*red"):
        micro.prepare_prompts("a hamburger", "")


def test_a_ddim_sample_of_a_red_ball_is_judged_a_red_ball(micro):
    verdict, = judge(ddim_sample(micro, ["a red ball"], steps=20, seed=0))
    assert (verdict.shape, verdict.color) == ("ball", "red")
    assert verdict.silhouette_iou > 0.6


def test_the_judge_reads_true_renders_it_was_not_built_from():
    cameras = make_cameras(torch.tensor([20.0]), torch.tensor([70.0]), torch.tensor([2.4]), torch.tensor([42.0]))
    images = torch.cat([render_truth(Truth(shape, color, None), cameras, 32)[0]
                        for shape, color in (("cube", "green"), ("torus", "purple"), ("cone", "orange"))])
    assert [(v.shape, v.color) for v in judge(images)] == [("cube", "green"), ("torus", "purple"), ("cone", "orange")]


@pytest.mark.parametrize("truth", [Truth("ball", "red", "yellow"), Truth("cube", "blue", "white")], ids=["face", "label"])
def test_the_judge_sees_a_feature_from_the_front_only(truth):
    views = [make_cameras(torch.tensor([20.0]), torch.tensor([azimuth]), torch.tensor([2.25]), torch.tensor([45.0]))
             for azimuth in (0.0, 180.0)]
    front, back = judge(torch.cat([render_truth(truth, c, 32, shading="diffuse")[0] for c in views]))
    # From the front the face covers most of the ball: the body is still read as red, not as the face's yellow.
    assert (front.shape, front.color, front.feature) == (truth.shape, truth.color, truth.feature_color)
    assert (back.shape, back.color, back.feature) == (truth.shape, truth.color, None)
    plain, = judge(render_truth(Truth(truth.shape, truth.color, None), views[0], 32, shading="diffuse")[0])
    assert plain.feature is None


def test_silhouettes_separate_the_object_from_a_pale_background():
    images, _, _ = sample_world(4, seed=3)
    masks = silhouettes(images.float() / 255)
    assert masks.any(dim=(1, 2)).all() and not masks[:, 0, :].any()


def test_training_writes_a_loadable_folder_and_a_rerun_resumes_instead_of_repeating(tmp_path):
    import json

    from nfsd_lab.micro.train import main

    work, out = tmp_path / "work", tmp_path / "out"
    argv = ["--work", str(work), "--out", str(out), "--scale", "0.001", "--images", "16"]
    main(argv)
    card = json.loads((out / "training.json").read_text())
    assert {name: stage["steps"] for name, stage in card["stages"].items()} == {"vae": 2, "unet": 6, "taesd": 2}
    first = (work / "unet.ckpt.safetensors").read_bytes()
    main(argv)  # every stage is complete: the rerun loads its checkpoints and trains nothing
    assert (work / "unet.ckpt.safetensors").read_bytes() == first
    prior = load_prior("stable-diffusion", str(out), "cpu", encoder="taesd")
    assert prior.image_size == 32 and prior.vocabulary.words == frozenset(vocabulary())


def test_a_short_distillation_on_the_micro_model_puts_density_where_the_ball_is(micro):
    from nfsd_contract import resolve_spec
    from nfsd_lab.field_judge import judge_field
    from nfsd_lab.micro.judge import true_object
    from nfsd_server.train import Trainer

    def iou(shape):
        return judge_field(trainer.field, true_object(Truth(shape, "red", None)), size=32)["silhouette_iou"]

    spec = resolve_spec("a red ball", steps=150, seed=0, preset="draft", prior="stable-diffusion", model="micro")
    trainer = Trainer(spec, micro, None)
    before = iou("ball")  # the field starts as a soft central blob
    trainer.run()  # ~15 s: three eighths of a draft run
    after = iou("ball")
    assert after > 0.8 and after > before + 0.1, (before, after)
    assert after > iou("cube") + 0.05  # the ball, not just any blob
