"""POST /v1/jobs with edit_of: a done job's asset edited by id, its defaults inherited, its checkpoint handed to
the run as a file, refused clearly when it cannot be edited, and never purged while an edit needs it."""

from __future__ import annotations

from dataclasses import asdict

from api_helpers import submit, wait_for, wait_state
from nfsd_contract import EDIT_STEPS_FRACTION, PRESET_STEPS, resolve_spec
from nfsd_server.checkpoints import write_checkpoint
from nfsd_server.scene.field import FieldConfig, NeRFField
from nfsd_server.train import CHECKPOINT_NAME


def finished_source(client, tmp_path, **overrides) -> str:
    """A done job whose folder holds a real checkpoint of its spec (the fake pipeline writes only its step)."""
    job_id = submit(client, **overrides)
    status = wait_state(client, job_id, "done")
    spec = resolve_spec(**status["request"])
    folder = tmp_path / "jobs" / job_id
    write_checkpoint(folder / CHECKPOINT_NAME, {"field": NeRFField(FieldConfig()).state_dict()},
                     {"settings": spec.to_dict(), "field_config": asdict(FieldConfig()), "background_kind": "learned"})
    return job_id


def test_an_edit_of_a_done_job_inherits_its_prompt_and_runs_on_its_checkpoint(client, fake_pipeline, tmp_path):
    source = finished_source(client, tmp_path)
    response = client.post("/v1/jobs", json={"prompt": "a blue cube", "edit_of": source, "preset": "draft"})
    assert response.status_code == 202, response.text
    status = wait_state(client, response.json()["id"], "done")
    request = status["request"]
    assert (request["edit_of"], request["source_prompt"], request["prior"]) == (source, "a red ball", "analytic")
    assert request["steps"] == round(PRESET_STEPS["draft"] * EDIT_STEPS_FRACTION)
    assert fake_pipeline.files_seen[-1].edit_source == tmp_path / "jobs" / source / CHECKPOINT_NAME
    assert fake_pipeline.files_seen[0].edit_source is None  # the source itself was no edit


def test_what_cannot_be_edited_is_refused_naming_edit_of(client, fake_pipeline, tmp_path):
    def refusal(**body):
        response = client.post("/v1/jobs", json={"prompt": "a blue cube", **body})
        assert response.status_code == 422, response.text
        return str(response.json()["detail"])

    assert "not a job on this server" in refusal(edit_of="0" * 32)
    assert "edit_of" in refusal(edit_of="../../etc/passwd")  # a path is no job id
    fake_pipeline.gate.clear()
    running = submit(client)
    wait_state(client, running, "running")
    assert "is running; only a done job's asset can be edited" in refusal(edit_of=running)
    fake_pipeline.gate.set()
    wait_state(client, running, "done")
    (tmp_path / "jobs" / running / CHECKPOINT_NAME).unlink()
    assert "has no checkpoint left" in refusal(edit_of=running)


def test_a_source_stays_while_an_edit_needs_it_and_goes_after(client, fake_pipeline, tmp_path):
    source = finished_source(client, tmp_path)
    fake_pipeline.pause_at_step = 3
    edit = submit(client, prompt="a blue cube", edit_of=source)
    wait_for(lambda: client.get(f"/v1/jobs/{edit}").json()["step"] == 3, what="the edit at step 3")
    purged = client.delete("/v1/jobs", params={"older_than_s": 0}).json()
    assert source not in purged["deleted"] and (tmp_path / "jobs" / source / CHECKPOINT_NAME).is_file()
    fake_pipeline.pause_at_step = None
    fake_pipeline.gate.set()
    wait_state(client, edit, "done")
    purged = client.delete("/v1/jobs", params={"older_than_s": 0}).json()
    assert source in purged["deleted"] and not (tmp_path / "jobs" / source).exists()
