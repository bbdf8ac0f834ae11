"""Connecting to a Ray cluster, and what one worker (one per GPU, else one per CPU) reserves on it."""

from __future__ import annotations

import logging
import socket
from types import ModuleType

log = logging.getLogger(__name__)

INSTALL_HINT = 'install the farm extra: pip install -e ".[farm]" (or pip install "ray[default]>=2.9")'


class FarmError(RuntimeError):
    """The cluster cannot be used; the message says why and what to do."""


def import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise FarmError(f"Ray is not installed; {INSTALL_HINT}") from None
    return ray


def connect(address: str) -> bool:
    """Join the cluster at ``address`` (``auto``: the one `ray start` runs on this box; ``local``: start a
    private one-box cluster). Returns True when this call started Ray (so the caller shuts it down)."""
    ray = import_ray()
    if ray.is_initialized():  # already connected in this process (tests, or an embedding program)
        return False
    if address not in ("auto", "local") and not address.startswith("ray://"):
        check_reachable(address)
    kwargs = {"include_dashboard": False} if address == "local" else {}
    try:
        ray.init(address=address, log_to_driver=False, **kwargs)
    except ConnectionError as error:
        raise FarmError(
            f"no Ray cluster at --ray {address}: {' '.join(str(error).split())[:300]}; start one with "
            "`ray start --head` (then --ray auto or HEAD_IP:6379), or use --ray local for this box only"
        ) from None
    log.info("connected to Ray at %s: %s", address, ray.cluster_resources())
    return True


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds on a wrong HEAD:PORT (Ray itself retries an unreachable head for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise FarmError(f"--ray {address!r} is not HOST:PORT; use e.g. 10.0.0.5:6379, auto or local")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise FarmError(
            f"cannot reach the Ray head at {address}: {error.strerror or error}; check the address "
            "(`ray status` on the head prints it) and that the port is open"
        ) from None


def uses_gpus() -> bool:
    return import_ray().cluster_resources().get("GPU", 0) >= 1


def worker_count(requested: int | None = None) -> int:
    """One worker per GPU on the cluster, else one per CPU; at most ``requested``."""
    resources = import_ray().cluster_resources()
    available = int(resources.get("GPU", 0)) or int(resources.get("CPU", 1))
    return max(1, min(available, requested) if requested else available)


def worker_options() -> dict:
    """Ray resources for one worker: a whole GPU where the cluster has them, else one CPU."""
    return {"num_gpus": 1, "num_cpus": 1} if uses_gpus() else {"num_cpus": 1}
