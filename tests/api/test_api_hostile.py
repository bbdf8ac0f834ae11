"""What a hostile client or a hostile data dir cannot do: resurrect a job, freeze the server, make it answer 500,
or reach a token-less server from a web page (TestClient; disk-full by a patched write raising ENOSPC)."""

from __future__ import annotations

import errno
import json
import os
import threading
import time
import uuid

import pytest
import trimesh

import nfsd_contract as contract
from api_helpers import RED_BALL, refuse_job_records, submit, wait_for, wait_state

MESH_HEADERS = {"Content-Type": "application/octet-stream"}


def _disk(error_number: int):
    def refuse(path, data):
        raise OSError(error_number, os.strerror(error_number))

    return refuse


# -- 1. an end that cannot be recorded is not reported, and never undone by a restart --------------------
def test_api_a_cancel_on_a_full_disk_survives_a_restart(make_client, fake_pipeline, tmp_path, monkeypatch):
    before = make_client()
    fake_pipeline.gate.clear()  # the first job holds the worker, so the second stays queued
    running, queued = submit(before), submit(before, prompt="a blue cube")
    wait_state(before, running, "running")
    refuse_job_records(monkeypatch)
    assert before.delete(f"/v1/jobs/{queued}").json()["state"] == "cancelled"
    assert before.delete(f"/v1/jobs/{running}").status_code == 200  # flagged; ends at the next step
    before.__exit__(None, None, None)  # the server stops before the running job saw its cancel
    monkeypatch.undo()
    fake_pipeline.gate.set()
    after = make_client(data_dir=tmp_path / "jobs")
    states = {job["id"]: job["state"] for job in after.get("/v1/jobs").json()["jobs"]}
    assert states == {queued: "cancelled", running: "cancelled"}  # before: both queued again and run
    assert fake_pipeline.started == ["a red ball"]


def test_api_a_cancel_that_cannot_be_recorded_at_all_is_507_and_changes_nothing(client, fake_pipeline, monkeypatch):
    from nfsd_server.api.job_store import JobStore

    fake_pipeline.gate.clear()
    running, queued = submit(client), submit(client, prompt="a blue cube")
    wait_state(client, running, "running")
    refuse_job_records(monkeypatch)
    monkeypatch.setattr(JobStore, "mark_end", staticmethod(_disk(errno.ENOSPC)))  # no inode left either
    for job_id in (queued, running):
        response = client.delete(f"/v1/jobs/{job_id}")
        assert response.status_code == 507 and "was not cancelled" in response.json()["detail"], response.text
    assert client.get(f"/v1/jobs/{queued}").json()["state"] == "queued"
    monkeypatch.undo()
    fake_pipeline.gate.set()
    assert wait_state(client, running, "done")["error"] is None  # the refused cancel did not stop it


def test_api_ends_on_a_full_disk_are_not_run_again_after_a_restart(make_client, fake_pipeline, tmp_path, monkeypatch):
    before = make_client()
    fake_pipeline.gate.clear()  # the first job holds the worker while the second is recorded as queued
    done, failing = submit(before), submit(before, prompt="an unknown prompt")  # the fake prior fails it
    wait_state(before, done, "running")
    refuse_job_records(monkeypatch)
    fake_pipeline.gate.set()
    wait_state(before, failing, "failed")
    before.__exit__(None, None, None)
    monkeypatch.undo()
    records = [json.loads((tmp_path / "jobs" / job_id / "job.json").read_text()) for job_id in (done, failing)]
    assert [record["state"] for record in records] == ["running", "queued"]  # what the full disk kept…
    after = make_client(data_dir=tmp_path / "jobs")
    failed = after.get(f"/v1/jobs/{failing}").json()
    assert failed["state"] == "failed" and "disk was full" in failed["error"]  # …and the end markers won
    assert after.get(f"/v1/jobs/{done}").json()["state"] == "done"
    assert after.get(f"/v1/jobs/{done}/result.glb").status_code == 200
    assert fake_pipeline.started == ["a red ball", "an unknown prompt"]  # neither ran again
    assert not list((tmp_path / "jobs" / done).glob("job.json.*"))  # the record, rewritten, replaced the marker


def test_api_a_job_without_room_for_its_result_fails_before_training(client, fake_pipeline, monkeypatch):
    import shutil

    import nfsd_server.api.job_store as job_store

    usage = shutil.disk_usage("/")
    monkeypatch.setattr(job_store.shutil, "disk_usage", lambda path: usage._replace(free=5 * 2**20))
    status = wait_state(client, submit(client), "failed")
    assert "5 MiB free" in status["error"] and "disk is full" in status["hint"] and status["step"] == 0
    assert fake_pipeline.started == []


def test_api_a_job_fails_at_the_check_after_the_disk_fills(client, fake_pipeline, monkeypatch):
    import shutil

    import nfsd_server.api.job_store as job_store
    import nfsd_server.api.jobs as jobs

    monkeypatch.setattr(jobs, "FREE_SPACE_CHECK_S", 0.0)
    usage = shutil.disk_usage("/")
    free = [usage.free]
    monkeypatch.setattr(job_store.shutil, "disk_usage", lambda path: usage._replace(free=free[0]))
    fake_pipeline.pause_at_step = 4
    job_id = submit(client)
    wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["step"] == 4, what="step 4")
    free[0] = 2**20
    fake_pipeline.gate.set()
    status = wait_state(client, job_id, "failed")
    assert status["step"] == 5 and "No space left" in status["error"]  # not after all 12 steps


# -- 2. no 500s -----------------------------------------------------------------------------------
@pytest.mark.parametrize("error_number", [errno.ENOSPC, errno.EROFS])
def test_api_mesh_upload_on_a_full_or_read_only_disk_is_507(client, monkeypatch, error_number):
    import nfsd_server.api.mesh_store as mesh_store

    monkeypatch.setattr(mesh_store, "write_atomic", _disk(error_number))
    data = trimesh.creation.box().export(file_type="ply")
    response = client.post("/v1/meshes?format=ply", content=data, headers=MESH_HEADERS)
    assert response.status_code == 507, response.text
    assert os.strerror(error_number) in response.json()["detail"] and "free disk space" in response.json()["hint"]


@pytest.mark.parametrize("replace_with", ["nothing", "folder", "fifo"])
def test_api_a_preview_the_record_names_but_that_is_gone_is_404(client, tmp_path, replace_with):
    job_id = submit(client)
    wait_state(client, job_id, "done")
    preview = tmp_path / "jobs" / job_id / "preview.png"
    preview.unlink()
    if replace_with == "folder":
        preview.mkdir()
    elif replace_with == "fifo":
        os.mkfifo(preview)
    response = client.get(f"/v1/jobs/{job_id}/preview.png")
    assert response.status_code == 404 and "gone" in response.json()["detail"], response.text


# -- 3. a hostile data dir at start-up --------------------------------------------------------------
def _record_of(client, tmp_path) -> dict:
    job_id = submit(client)
    wait_state(client, job_id, "done")
    return json.loads((tmp_path / "jobs" / job_id / "job.json").read_text())


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "huge"])
def test_api_start_up_sets_aside_job_records_that_are_not_small_regular_files(make_client, client, tmp_path, kind):
    good = _record_of(client, tmp_path)
    hostile = tmp_path / "jobs" / uuid.uuid4().hex
    hostile.mkdir()
    if kind == "fifo":
        os.mkfifo(hostile / "job.json")
    elif kind == "dev-zero":
        (hostile / "job.json").symlink_to("/dev/zero")
    else:
        (hostile / "job.json").write_text(json.dumps({**good, "id": hostile.name, "padding": "x" * 5 * 2**20}))
    started = time.monotonic()
    after = make_client(data_dir=tmp_path / "jobs")  # before: hung forever (fifo) or read until OOM (/dev/zero)
    assert time.monotonic() - started < 10
    assert [job["id"] for job in after.get("/v1/jobs").json()["jobs"]] == [good["id"]]
    assert hostile.name in after.app.state.manager.store.set_aside


def test_api_a_checkpoint_linked_outside_the_data_dir_is_not_resumed(make_client, client, tmp_path, fake_pipeline):
    from nfsd_server.checkpoints import write_checkpoint

    good = _record_of(client, tmp_path)
    outside = tmp_path / "elsewhere.safetensors"
    write_checkpoint(outside, {}, {"step": 10})
    crashed = good | {"id": "e" * 32, "state": "running", "step": 10, "started_at": good["created_at"]}
    folder = tmp_path / "jobs" / crashed["id"]
    folder.mkdir()
    (folder / "job.json").write_text(json.dumps(crashed))
    (folder / "checkpoint.safetensors").symlink_to(outside)
    after = make_client(data_dir=tmp_path / "jobs")
    status = wait_state(after, crashed["id"], "done")
    assert status["resumed_from_step"] == 0 and fake_pipeline.started_from["a red ball"] == 0
    assert (folder / "checkpoint.safetensors.unreadable").is_symlink() and outside.is_file()  # set aside, untouched


def test_api_an_uploaded_mesh_swapped_for_a_link_is_not_used(client, tmp_path):
    data = trimesh.creation.box().export(file_type="ply")
    mesh_id = client.post("/v1/meshes?format=ply", content=data, headers=MESH_HEADERS).json()["id"]
    stored = tmp_path / "jobs" / "meshes" / f"{mesh_id}.ply"
    (tmp_path / "outside.ply").write_bytes(data)
    stored.unlink()
    stored.symlink_to(tmp_path / "outside.ply")
    response = client.post("/v1/jobs", json={**RED_BALL, "init_mesh": mesh_id})
    assert response.status_code == 422 and "is not a mesh uploaded to this server" in response.json()["detail"]


# -- 5. a mesh upload does not freeze the server ------------------------------------------------------
def test_api_a_mesh_with_too_many_faces_is_refused_before_it_is_parsed(client, monkeypatch):
    import nfsd_server.scene.mesh_files as init_mesh

    monkeypatch.setattr(init_mesh.trimesh, "load", lambda *a, **k: pytest.fail("parsed a mesh over the face limit"))
    monkeypatch.setattr(contract, "MAX_INIT_MESH_FACES", 1000)
    many_faces = b"v 0 0 0\nv 1 0 0\nv 0 1 0\n" + b"f 1 2 3\n" * 1001
    response = client.post("/v1/meshes?format=obj", content=many_faces, headers=MESH_HEADERS)
    assert response.status_code == 422 and "has 1001 faces; the limit is 1000" in response.json()["detail"]
    ngons = b"v 0 0 0\nv 1 0 0\nv 0 1 0\n" + b"f" + b" 1 2 3" * 200 + b"\n"  # 598 triangles a line
    assert "1196 faces" in client.post("/v1/meshes?format=obj", content=ngons * 2, headers=MESH_HEADERS).json()["detail"]


def test_api_the_server_answers_while_a_mesh_is_parsed(client, monkeypatch):
    import nfsd_server.api.mesh_store as mesh_store

    parsing, release = threading.Event(), threading.Event()
    real_parse = mesh_store.parse_mesh

    def slow_parse(data, file_type, name):
        parsing.set()
        release.wait(10)  # on the event loop (before), health could not answer until this returned
        return real_parse(data, file_type, name)

    monkeypatch.setattr(mesh_store, "parse_mesh", slow_parse)
    upload: list = []
    data = trimesh.creation.box().export(file_type="ply")
    thread = threading.Thread(
        target=lambda: upload.append(client.post("/v1/meshes?format=ply", content=data, headers=MESH_HEADERS))
    )
    thread.start()
    assert parsing.wait(10)
    assert client.get("/v1/health").status_code == 200 and not release.is_set() and not upload
    release.set()
    thread.join(10)
    assert upload[0].status_code == 201


# -- 6. web pages and DNS rebinding ------------------------------------------------------------------
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_api_bodies_a_web_page_can_send_unasked_are_415(client, tmp_path, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    data = trimesh.creation.box().export(file_type="ply")
    mesh = client.post("/v1/meshes?format=ply", content=data, headers=headers)
    assert mesh.status_code == 415 and "application/octet-stream" in mesh.json()["detail"], mesh.text
    job = client.post("/v1/jobs", content=json.dumps(RED_BALL), headers=headers)
    assert job.status_code == 415 and "application/json" in job.json()["detail"]
    assert not (tmp_path / "jobs" / "meshes").exists() and client.get("/v1/jobs").json()["jobs"] == []


def test_api_a_loopback_server_refuses_a_rebound_host(make_client):
    from nfsd_server.api.server import allowed_hosts_for

    hosts = allowed_hosts_for("127.0.0.1")
    assert hosts == {"127.0.0.1", "localhost", "::1"} and allowed_hosts_for("0.0.0.0") is None
    client = make_client(token=None, allowed_hosts=hosts)
    rebound = client.get("/v1/jobs", headers={"Host": "attacker.example:8765"})
    assert rebound.status_code == 421 and "attacker.example" in rebound.json()["detail"]
    for host in ("127.0.0.1:8765", "localhost:8765", "[::1]:8765"):
        assert client.get("/v1/jobs", headers={"Host": host}).status_code == 200


# -- 7. a 401 closes the connection ------------------------------------------------------------------
def test_api_a_401_closes_the_connection_instead_of_draining_the_body(client):
    response = client.post("/v1/jobs", json=RED_BALL, headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401 and response.headers["connection"] == "close"
    assert response.headers["www-authenticate"] == "Bearer"


# -- 4. slow and idle clients, and a flood of connections ---------------------------------------------
def _closed_by_server(sock, within_s: float) -> bool:
    """Whether the server closes ``sock`` within ``within_s`` seconds (EOF or a reset)."""
    import socket

    sock.settimeout(within_s)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_api_slow_idle_and_surplus_connections_are_closed_and_logged_once(tmp_path):
    import socket

    import httpx

    from api_helpers import SpawnedServer

    server = SpawnedServer(tmp_path / "jobs", "--header-timeout", "1", "--max-connections", "4")
    try:
        connect = lambda: socket.create_connection(("127.0.0.1", server.port), timeout=5)  # noqa: E731
        dribbler = connect()
        started = time.monotonic()
        for byte in b"GET /v1/health HTTP/1.1\r\n":  # a byte every 0.1 s: before, held as long as it kept on
            try:
                dribbler.send(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
        assert _closed_by_server(dribbler, 1.0) and time.monotonic() - started < 2.5
        idle = [connect() for _ in range(4)]  # the cap
        surplus = [connect() for _ in range(10)]
        assert all(_closed_by_server(sock, 0.5) for sock in surplus)  # at once, not after the header timeout
        assert all(_closed_by_server(sock, 1.5) for sock in idle)  # idle ones go at the header timeout
        assert httpx.get(f"{server.url}/v1/health", timeout=5).status_code == 200  # and real requests are served
        for sock in [dribbler, *idle, *surplus]:
            sock.close()
        wait_for(lambda: any("connections are open (the cap)" in line for line in server.stderr_lines), 5, "the cap log")
        log = "".join(server.stderr_lines)
        assert log.count("connections are open (the cap)") == 1 and log.count("no complete request headers") == 1
    finally:
        server.kill()


def test_api_the_open_file_limit_is_raised_and_the_connection_cap_stays_under_it():
    import resource

    from nfsd_server.api.connections import FD_RESERVE, LISTEN_BACKLOG, connection_cap, raise_fd_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(512, hard), hard))
        assert raise_fd_limit(target=min(2048, hard)) == min(2048, hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == min(2048, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert connection_cap(1024) == 1024 - LISTEN_BACKLOG - FD_RESERVE  # 1,100 idle connections no longer fit


def test_api_failed_accepts_log_one_line_a_minute_not_one_each(caplog):
    import asyncio

    from nfsd_server.api.connections import ConditionLog, accept_error_handler

    handler = accept_error_handler({"accept": ConditionLog("accept() fails")})
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level("WARNING"):
            for _ in range(1000):
                handler(loop, {"message": "socket.accept() out of system resource", "exception": OSError(24, "EMFILE")})
    finally:
        loop.close()
    assert [record.getMessage() for record in caplog.records] == ["accept() fails: [Errno 24] EMFILE"]



def test_api_a_body_that_stops_arriving_is_408_and_closes():
    import asyncio

    from nfsd_server.api.limits import GuardMiddleware

    async def app(scope, receive, send):
        pytest.fail("the app ran on a body that never arrived")

    async def receive():
        await asyncio.sleep(10)  # a client that sent its headers and then nothing

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    guard = GuardMiddleware(app, token=None, body_idle_timeout_s=0.05)
    scope = {"type": "http", "method": "POST", "path": "/v1/jobs", "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"100")]}
    started = time.monotonic()
    asyncio.run(guard(scope, receive, send))
    assert time.monotonic() - started < 2
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
