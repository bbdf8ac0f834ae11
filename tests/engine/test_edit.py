"""Edit jobs: delta denoising's direction against hand-computed values, one batched prior call, the trainer
starting from its source and never changing it, keep shape, and the errors that say what to do instead."""

import hashlib
import subprocess
import sys

import pytest
import torch

from nfsd_contract import EDIT_STEPS_FRACTION, PRESET_STEPS, resolve_spec
from nfsd_server.checkpoints import CheckpointError
from nfsd_server.edit import EditError, edit_defaults, read_edit_source, read_edit_spec
from nfsd_server.guidance.distillation import DeltaDenoising
from nfsd_server.guidance.prior import Conditions, PromptKind
from nfsd_server.guidance.registry import load_prior
from nfsd_server.scene.cameras import make_cameras
from nfsd_server.train import CHECKPOINT_NAME, Callbacks, GenerationCancelled, TrainConfig, Trainer, train


def analytic(prompt="a red ball", **fields):
    return resolve_spec(prompt, prior="analytic", preset="draft", seed=0, **fields)


@pytest.fixture(scope="module")
def analytic_prior():
    return load_prior("analytic", None, "cpu")


@pytest.fixture(scope="module")
def source(analytic_prior, tmp_path_factory):
    """A finished 'a red ball' run (20 steps) and its checkpoint's hash."""
    folder = tmp_path_factory.mktemp("source")
    train(analytic(steps=20), analytic_prior, folder)
    path = folder / CHECKPOINT_NAME
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def cameras(n):
    return make_cameras(torch.full((n,), 15.0), torch.linspace(0, 270, n), torch.full((n,), 3.0), torch.full((n,), 45.0))


class ByPrompt:
    """A prior whose ε is a fixed value per (prompts, kind): edit prompt 'e', source 's'; counts its calls."""

    values = {("e", PromptKind.PROMPT): 3.0, ("e", PromptKind.NULL): 1.0,
              ("s", PromptKind.PROMPT): 2.5, ("s", PromptKind.NULL): 1.25}

    def __init__(self):
        self.calls = []

    def predict_noise_groups(self, groups):
        self.calls.append(sum(len(latents) for latents, _, _ in groups))
        return [torch.stack([torch.full_like(latents[0], self.values[(conditions.prompts, int(kind))])
                             for kind in conditions.kinds]) + 0 * latents
                for latents, _, conditions in groups]


def test_dds_is_the_scaled_difference_of_the_two_conditional_deltas_in_one_call():
    prior, batch = ByPrompt(), 3
    z, z_source = torch.randn(batch, 4, 8, 8), torch.randn(batch, 4, 8, 8)
    dds = DeltaDenoising(7.5)
    direction = dds.edit_direction(prior, z, z_source, torch.tensor([100, 400, 900]), cameras(batch), "e", "s")
    # 7.5 · ((3 − 1) − (2.5 − 1.25)) = 5.625 everywhere
    assert torch.allclose(direction, torch.full_like(direction, 5.625))
    assert prior.calls == [4 * batch] and dds.row_counts(batch, 0, 1000) == [4 * batch]


def test_dds_of_an_unchanged_asset_and_prompt_is_zero(tiny_sd_prior):
    prompts = tiny_sd_prior.prepare_prompts("a red ball", "")
    z = torch.randn(2, tiny_sd_prior.latent_channels, 8, 8)
    direction = DeltaDenoising(7.5).edit_direction(tiny_sd_prior, z, z.clone(), torch.tensor([300, 700]),
                                                   cameras(2), prompts, prompts)
    assert direction.abs().max() == 0


def test_stable_diffusion_answers_groups_of_different_prompts_in_one_unet_call(tiny_sd_prior):
    red, blue = (tiny_sd_prior.prepare_prompts(text, "") for text in ("a red ball", "a blue ball"))
    z, t = torch.randn(4, tiny_sd_prior.latent_channels, 8, 8), torch.tensor([100, 300, 500, 900])
    kinds = torch.tensor([PromptKind.PROMPT, PromptKind.NULL, PromptKind.PROMPT, PromptKind.NULL])
    groups = [(z[:2], t[:2], Conditions(kinds[:2], cameras(2), red)), (z[2:], t[2:], Conditions(kinds[2:], cameras(2), blue))]
    calls = []
    hook = tiny_sd_prior.unet.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        together = tiny_sd_prior.predict_noise_groups(groups)
    finally:
        hook.remove()
    apart = [tiny_sd_prior.predict_noise(*group) for group in groups]
    assert calls == [4]
    for one, other in zip(together, apart):
        torch.testing.assert_close(one, other, rtol=1e-4, atol=1e-5)


def test_an_edit_starts_from_its_source_and_never_changes_it(analytic_prior, source, tmp_path):
    path, sha = source
    spec = analytic("a blue cube", edit_of=str(path), source_prompt="a red ball", steps=6)
    trainer = Trainer(spec, analytic_prior, tmp_path / "edit")
    for name, value in trainer.field.state_dict().items():  # the source's field, exactly, before any step
        assert torch.equal(value, trainer.source_field.state_dict()[name]), name
    trainer.run()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
    assert any(not torch.equal(value, trainer.source_field.state_dict()[name])
               for name, value in trainer.field.state_dict().items())
    assert trainer.guidance.last_rows_evaluated in trainer.unet_row_counts()  # one batched call of 4B (+ guard) rows
    assert trainer.phase(0) == "rgb"  # an edit renders RGB from its first step


def test_keep_shape_changes_colour_only(analytic_prior, source):
    path, _ = source
    spec = analytic("a blue cube", edit_of=str(path), keep_shape=True, steps=6)
    trainer = Trainer(spec, analytic_prior, None)
    trainer.run()
    points = torch.rand(2000, 3) * 2 - 1
    with torch.no_grad():
        assert torch.equal(trainer.field.density(points), trainer.source_field.density(points))
        assert not torch.equal(trainer.field.albedo(points), trainer.source_field.albedo(points))


def test_an_edit_resumes_exactly_and_refuses_a_changed_source(analytic_prior, source, tmp_path):
    import shutil

    own = tmp_path / "source" / CHECKPOINT_NAME
    own.parent.mkdir()
    shutil.copy(source[0], own)
    spec, every_2 = analytic("a blue cube", edit_of=str(own), steps=6), TrainConfig(checkpoint_every=2)
    straight = train(spec, analytic_prior, tmp_path / "straight", config=every_2)
    seen = []
    stop = Callbacks(on_progress=lambda step, *_: seen.append(step), should_cancel=lambda: len(seen) >= 3)
    with pytest.raises(GenerationCancelled):
        train(spec, analytic_prior, tmp_path / "resumed", stop, config=every_2)
    resumed = train(spec, analytic_prior, tmp_path / "resumed", resume=True, config=every_2)
    for name, value in straight.field.state_dict().items():
        assert torch.equal(value, resumed.field.state_dict()[name]), name
    train(analytic(steps=21), analytic_prior, own.parent)  # the source's folder now holds another run
    with pytest.raises(CheckpointError, match="edited another version"):
        train(spec, analytic_prior, tmp_path / "resumed", resume=True)


def test_an_edit_inherits_its_sources_model_and_prompt_and_takes_a_quarter_of_the_steps(source):
    path, _ = source
    request = edit_defaults(read_edit_spec(path), {"edit_of": str(path), "prior": None, "model": None,
                                                     "source_prompt": None})
    spec = resolve_spec("a blue cube", **request)
    assert (spec.prior, spec.model, spec.source_prompt) == ("analytic", None, "a red ball")
    assert spec.steps == round(PRESET_STEPS[spec.preset] * EDIT_STEPS_FRACTION)
    assert spec.metadata()["edit_of"] == CHECKPOINT_NAME and spec.metadata()["source_prompt"] == "a red ball"
    assert "edit_of" not in analytic().metadata() and "keep_shape" not in analytic().metadata()


@pytest.mark.parametrize("fields, message", [
    ({"edit_of": "x.safetensors", "init_mesh": "cube.obj"}, "init_mesh cannot be given with edit_of"),
    ({"keep_shape": True}, "belong to an edit; give edit_of"),
    ({"source_prompt": "a red ball"}, "belong to an edit; give edit_of"),
    ({"edit_of": "x.safetensors", "edit_strength": 1.5}, "edit_strength must be in 0..1"),
])
def test_edit_fields_that_do_not_fit_are_refused_by_name(fields, message):
    with pytest.raises(ValueError, match=message):
        analytic("a blue cube", **fields)


def test_a_texture_mode_asset_or_a_missing_checkpoint_cannot_be_edited(tmp_path):
    from dataclasses import asdict

    from nfsd_server.checkpoints import write_checkpoint
    from nfsd_server.scene.field import FieldConfig

    for keep_geometry, advice in ((True, "generate its texture again"), (False, "generate from that mesh again")):
        textured = analytic(init_mesh="cube.obj", keep_geometry=keep_geometry)
        path = tmp_path / f"{keep_geometry}.safetensors"
        write_checkpoint(path, {"field": {"w": torch.zeros(1)}},
                         {"settings": textured.to_dict(), "field_config": asdict(FieldConfig())})
        for read in (read_edit_spec, read_edit_source):  # the boundary's check and the run's
            with pytest.raises(EditError, match=advice):
                read(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_edit_source(tmp_path / "gone.safetensors")


def read_gltf_json(path) -> dict:
    import json
    import struct

    data = path.read_bytes()
    length = struct.unpack_from("<I", data, 12)[0]
    return json.loads(data[20:20 + length])


def nfsd(*args):
    return subprocess.run([sys.executable, "-m", "nfsd_server", *args], capture_output=True, text=True, timeout=300)


def test_nfsd_edit_writes_beside_its_source_and_refuses_to_overwrite_it(source, tmp_path):
    import shutil

    path, sha = source
    folder = tmp_path / "ball"
    shutil.copytree(path.parent, folder)
    refused = nfsd("edit", str(folder / CHECKPOINT_NAME), "a blue cube", "--out", str(folder))
    assert refused.returncode == 2 and "never overwrites its source" in refused.stderr
    done = nfsd("edit", str(folder / CHECKPOINT_NAME), "a blue cube", "--steps", "4", "--poly-budget", "500",
                "--texture-size", "512")
    assert done.returncode == 0, done.stderr
    glb = tmp_path / "ball-edit" / "a-blue-cube.glb"
    assert glb.is_file() and hashlib.sha256((folder / CHECKPOINT_NAME).read_bytes()).hexdigest() == sha
    extras = next(node for node in read_gltf_json(glb)["nodes"] if "mesh" in node)["extras"]
    assert extras["source_prompt"] == "a red ball" and extras["edit_of"] == CHECKPOINT_NAME
    again = nfsd("edit", str(folder / CHECKPOINT_NAME), "a green torus", "--steps", "2", "--poly-budget", "500",
                 "--texture-size", "512")
    assert again.returncode == 0 and (tmp_path / "ball-edit-2" / "a-green-torus.glb").is_file()
