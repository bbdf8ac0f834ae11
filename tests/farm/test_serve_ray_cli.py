"""`nfsd serve --ray ADDRESS` as a real process: it joins the cluster by address, announces its port as
usual, runs a job on a Ray worker, and stops its workers when its stdin closes (as when Blender quits)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import httpx
import pytest
from farm_helpers import FAST_JOB, wait_until


@pytest.mark.slow  # ~30 s: a server process, two workers importing torch, one 40-step job
def test_serve_with_ray_address_runs_jobs_on_the_cluster_and_exits_with_stdin(tmp_path, ray_cluster):
    import ray

    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "nfsd_server", "serve", "--port", "0", "--parent-stdin", "--default-prior", "analytic",
         "--data-dir", str(tmp_path / "jobs"), "--ray", ray_cluster],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
    )
    try:
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(180)
        assert line and line[0], (tmp_path / "server.log").read_text(errors="replace")[-3000:]
        with httpx.Client(base_url=f"http://127.0.0.1:{json.loads(line[0])['port']}", timeout=30) as http:
            assert http.get("/v1/health").json()["device"] == "ray: 2 CPU workers"
            job = http.post("/v1/jobs", json={**FAST_JOB, "prompt": "a red ball", "seed": 1}).json()["id"]
            done = wait_until(lambda: (s := http.get(f"/v1/jobs/{job}").json())["state"] in ("done", "failed") and s,
                              180, "the job to finish", every=0.2)
            assert done["state"] == "done", done
            assert http.get(f"/v1/jobs/{job}/result.json").json()["farm"]["attempts"] == 1
        process.stdin.close()
        assert process.wait(60) == 0
        # The server's workers went with it: both CPUs are free again.
        wait_until(lambda: ray.available_resources().get("CPU") == 2, 30, "the server's Ray workers to stop")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()
