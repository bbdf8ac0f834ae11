"""Server latency as the add-on sees it: a real `nfsd serve` on loopback, the analytic prior, stdlib HTTP.

Prints warm submit → first progress latency (the second job, after the prior is loaded) and the status-poll
latency (p50/p99) while that job trains, for a new connection per request (the add-on's urllib) and for one
kept-alive connection (curl, httpx, a browser). Last line: ``keepalive_p50_ms=<milliseconds>``.

    python benchmarks/server_latency.py [--polls 300] [--steps 400]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

JOB = {"prompt": "a red ball", "prior": "analytic", "preset": "draft", "poly_budget": 1000, "texture_size": 512}


class Client:
    """urllib, one connection per request, exactly like the add-on's client."""

    def __init__(self, port: int, token: str):
        self.base, self.headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        headers = {**self.headers, **({"Content-Type": "application/json"} if data else {})}
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def wait(self, job_id: str, done, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.call("GET", f"/v1/jobs/{job_id}")
            if done(status):
                return status
        raise TimeoutError(f"job {job_id} did not get there in {timeout} s: {status}")


class KeepAliveClient:
    """http.client on one persistent connection: where a missing TCP_NODELAY costs ~40 ms per request."""

    def __init__(self, port: int, token: str):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str) -> dict:
        self.connection.request("GET", path, headers=self.headers)
        response = self.connection.getresponse()
        body = response.read()
        if response.will_close:
            raise RuntimeError("the server closed a keep-alive connection")
        return json.loads(body)

    def close(self) -> None:
        self.connection.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=300, help="status polls to time while a job trains")
    parser.add_argument("--steps", type=int, default=400, help="steps of the timed job (it is cancelled after)")
    args = parser.parse_args()

    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="nfsd-bench-") as data_dir:
        started = time.perf_counter()
        server = subprocess.Popen(
            [sys.executable, "-m", "nfsd_server", "serve", "--port", "0", "--parent-stdin", "--data-dir", data_dir,
             "--default-prior", "analytic", "--device", "cpu", "--log-level", "warning"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, "NFSD_TOKEN": token},
        )
        try:
            port = json.loads(server.stdout.readline())["port"]
            print(f"server_start_s={time.perf_counter() - started:.3f}")
            client = Client(port, token)

            cold = time.perf_counter()
            warmup = client.call("POST", "/v1/jobs", {**JOB, "steps": 3})["id"]
            client.wait(warmup, lambda status: status["state"] in ("done", "failed"))
            print(f"cold_job_3_steps_s={time.perf_counter() - cold:.3f} (prior load + 3 steps + export)")

            submitted = time.perf_counter()
            job_id = client.call("POST", "/v1/jobs", {**JOB, "steps": args.steps})["id"]
            client.wait(job_id, lambda status: status["step"] >= 1 or status["state"] == "failed")
            first_progress_s = time.perf_counter() - submitted

            latencies = []
            for _ in range(args.polls):
                tick = time.perf_counter()
                status = client.call("GET", f"/v1/jobs/{job_id}")
                latencies.append(time.perf_counter() - tick)
            keep_alive = KeepAliveClient(port, token)
            keepalive_latencies = []
            for _ in range(args.polls):
                tick = time.perf_counter()
                status = keep_alive.get(f"/v1/jobs/{job_id}")
                keepalive_latencies.append(time.perf_counter() - tick)
            keep_alive.close()
            assert status["state"] == "running", f"the job stopped before the polls ended: {status['state']}"
            steps_during_polls = status["step"]
            client.call("DELETE", f"/v1/jobs/{job_id}")
            client.wait(job_id, lambda status: status["state"] == "cancelled")

            ms = [latency * 1000 for latency in latencies]
            print(f"status_poll_ms p50={percentile(ms, 0.5):.2f} p99={percentile(ms, 0.99):.2f} "
                  f"mean={statistics.fmean(ms):.2f} n={len(ms)} (job running, step {steps_during_polls})")
            keepalive_ms = [latency * 1000 for latency in keepalive_latencies]
            print(f"keepalive_poll_ms p50={percentile(keepalive_ms, 0.5):.2f} p99={percentile(keepalive_ms, 0.99):.2f} "
                  f"mean={statistics.fmean(keepalive_ms):.2f} n={len(keepalive_ms)} (one connection)")
            print(f"first_progress_s={first_progress_s:.3f}")
            print(f"keepalive_p50_ms={percentile(keepalive_ms, 0.5):.2f}")
        finally:
            server.stdin.close()
            server.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
