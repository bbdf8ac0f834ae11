"""GenerationWorker (the Ray actor's class) run as a plain object: warm prior, mailbox, cancel, folder check."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from nfsd_server.farm import actors
from nfsd_server.pipeline import GenerationCancelled, GenerationResult
from nfsd_contract import resolve_spec


@pytest.fixture
def worker(monkeypatch):
    loads: list[tuple[str, str | None, str]] = []
    priors_used: list[object] = []
    gate = threading.Event()

    def load_prior(name, model, device, dtype="auto", encoder="vae"):
        loads.append((name, model, device))
        return object()

    def run_generation(spec, prior, out_dir, callbacks, resume=False, files=None, config=None):
        priors_used.append(prior)
        assert config.checkpoint_every_s == 60.0  # a killed worker loses at most a minute
        callbacks.on_stage("training")
        for step in (1, 2):
            callbacks.on_progress(step, 2, 0.25 * step, 1.0)
        callbacks.on_preview(2, np.zeros((4, 4, 3), np.uint8))
        while not gate.wait(0.01):
            if callbacks.should_cancel():
                raise GenerationCancelled("cancelled")
        callbacks.on_stage("exporting")
        return GenerationResult(out_dir / "x.glb", out_dir / "checkpoint.pt", {"faces": 7, "resumed": resume})

    monkeypatch.setattr("nfsd_server.guidance.registry.load_prior", load_prior)
    monkeypatch.setattr("nfsd_server.pipeline.run_generation", run_generation)  # run_job's train-and-export step
    instance = actors.GenerationWorker(cpu_threads=None)
    instance.loads, instance.priors_used, instance.gate = loads, priors_used, gate
    return instance


def test_worker_keeps_the_prior_warm_and_relays_only_the_latest_news(worker, tmp_path):
    settings = resolve_spec("a red ball", prior="analytic", seed=0)
    worker.gate.set()
    first = worker.run("job-1", settings, str(tmp_path), False)
    news = worker.poll("job-1")
    assert first == {"state": "done", "glb_path": str(tmp_path / "x.glb"),
                     "checkpoint_path": str(tmp_path / "checkpoint.pt"), "metadata": {"faces": 7, "resumed": False}}
    assert news["stages"] == ["loading", "training", "exporting"] and news["progress"] == (2, 2, 0.5, 1.0)
    assert news["preview"][0] == 2 and news["preview"][1].shape == (4, 4, 3)
    assert worker.poll("job-1") == {"stages": [], "progress": None, "preview": None}
    assert worker.run("job-2", settings, str(tmp_path), True)["metadata"]["resumed"] is True
    assert len(worker.loads) == 1 and worker.priors_used[0] is worker.priors_used[1]  # warm: loaded once
    worker.run("job-3", resolve_spec("a red ball", model="m", seed=0), str(tmp_path), False)
    assert worker.loads[1] == ("stable-diffusion", "m", worker.device)
    assert [key.label for key in worker._priors.warm_keys()] == ["stable-diffusion:m"]  # the first was evicted


def test_worker_cancel_stops_the_running_job_and_a_missing_folder_is_a_clear_error(worker, tmp_path):
    settings = resolve_spec("a red ball", prior="analytic", seed=0)
    outcome: list[dict] = []
    thread = threading.Thread(target=lambda: outcome.append(worker.run("job", settings, str(tmp_path), False)))
    thread.start()
    worker.cancel("job")
    thread.join(10)
    assert outcome == [{"state": "cancelled"}]
    with pytest.raises(FileNotFoundError, match="cannot see the job folder .*/nowhere; put the output folder on storage"):
        worker.run("other", settings, str(tmp_path / "nowhere"), False)
