"""RayExecutor on its own (and the test cluster): loopback only; a pool that loses its last worker and cannot
replace it fails jobs, never hangs."""

from __future__ import annotations

import os
import signal
import threading

import pytest
from farm_helpers import FAST_JOB, wait_until
from nfsd_server.farm.cluster import FarmError
from nfsd_server.pipeline import Callbacks
from nfsd_contract import resolve_spec
from nfsd_server.farm.ray_jobs import RayExecutor, WorkerLost


def test_the_test_cluster_listens_on_loopback_only(ray_cluster):
    import ipaddress

    import psutil

    def loopback(ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        return (getattr(address, "ipv4_mapped", None) or address).is_loopback  # ::ffff:127.0.0.1 too

    ray_processes = psutil.Process().children(recursive=True)
    listening = {(conn.laddr.ip, process.name()) for process in ray_processes
                 for conn in process.net_connections(kind="inet") if conn.status == psutil.CONN_LISTEN}
    assert listening and all(loopback(ip) for ip, _ in listening), listening
    assert ray_cluster.startswith("127.0.0.1:")


@pytest.mark.slow  # ~10 s: one worker starts (imports torch), then is killed
def test_ray_executor_fails_jobs_fast_when_a_lost_worker_cannot_be_replaced(tmp_path, ray_cluster, monkeypatch):
    executor = RayExecutor(workers=1, poll_s=0.1)
    try:
        def no_free_cpu(count, timeout=0.0):
            raise FarmError("1 Ray worker(s) did not start within 0 s")

        monkeypatch.setattr(executor, "_new_workers", no_free_cpu)
        settings = resolve_spec("a red ball", seed=0, **{**FAST_JOB, "steps": 5000})
        folder = tmp_path / "job"
        folder.mkdir()
        raised: list[BaseException] = []

        def run() -> None:
            try:
                executor.run(settings, folder, Callbacks())
            except BaseException as error:  # noqa: BLE001  (handed to the test thread to assert on)
                raised.append(error)

        thread = threading.Thread(target=run)
        thread.start()
        worker = wait_until(lambda: executor.running().get(str(folder.resolve())), 120, "the job to start")
        os.kill(worker["pid"], signal.SIGKILL)
        thread.join(60)
        assert not thread.is_alive() and len(raised) == 1 and isinstance(raised[0], WorkerLost), raised
        assert "no Ray workers left" in str(raised[0]) and f"worker pid {worker['pid']} " in str(raised[0])
        with pytest.raises(WorkerLost, match="no Ray workers left"):  # the next job too, at once
            executor.run(settings, folder, Callbacks())
    finally:
        executor.close()
