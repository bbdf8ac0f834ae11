"""`nfsd batch` wall time for the same prompts on 1 vs 2 Ray workers (a private loopback cluster, this box).

Each worker reserves one device (here: one CPU, one torch thread), so the ratio is how well jobs spread across
devices, not a faster step. Last line: ``two_over_one=<wall(2 workers) / wall(1 worker)>``.

    python benchmarks/farm_batch.py [--steps 150] [--cpus 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only

PROMPTS = "a red ball\na blue cube\na green torus\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()

    import ray

    from nfsd_server.cli import main as nfsd

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             object_store_memory=128 * 2**20, log_to_driver=False)
    try:
        walls = {}
        with tempfile.TemporaryDirectory(prefix="nfsd-farm-bench-") as scratch:
            prompts = Path(scratch) / "prompts.txt"
            prompts.write_text(PROMPTS, encoding="utf-8")
            for workers in (1, 2):
                out = Path(scratch) / f"out-{workers}"
                started = time.perf_counter()
                code = nfsd(["batch", str(prompts), "--out", str(out), "--ray", "local", "--workers", str(workers),
                             "--steps", str(args.steps), "--texture-size", "512", "--poly-budget", "2000"])
                walls[workers] = time.perf_counter() - started
                jobs = json.loads((out / "summary.json").read_text())["jobs"]
                print(f"workers={workers} exit={code} wall_s={walls[workers]:.1f} "
                      f"job_s={[job['seconds'] for job in jobs]}", flush=True)
        print(f"two_over_one={walls[2] / walls[1]:.2f}")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
