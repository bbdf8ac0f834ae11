"""Fixtures for the farm tests: a two-CPU Ray cluster on 127.0.0.1, started once and shut down at the end."""

from __future__ import annotations

import os

import pytest

# Read when Ray is imported: on Linux Ray otherwise advertises (and binds) the machine's routable address;
# with it, every Ray process listens on 127.0.0.1 only.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(scope="module")
def ray_cluster():
    """The cluster's address, per test module (about 5 s to start), so no idle Ray outlives the farm tests;
    its workers import this checkout (they inherit PYTHONPATH)."""
    ray = pytest.importorskip("ray", reason='Ray is not installed: pip install -e ".[farm]"')
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
        object_store_memory=128 * 2**20, log_to_driver=False,
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_executor(ray_cluster):
    """Two workers (one per CPU), closed when the module ends."""
    from nfsd_server.farm.ray_jobs import RayExecutor

    executor = RayExecutor(workers=2, poll_s=0.1)
    try:
        yield executor
    finally:
        executor.close()
