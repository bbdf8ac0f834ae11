"""Where a Stable Diffusion model comes from, checked in milliseconds before anything loads.

``from_pretrained`` on a hub id the machine cannot fetch spends ~20 s in retries while offline, holding the
only worker; a folder that is a file is reported as missing; a 4,096-character name comes back as a
2,000-character errno. ``check_model`` answers each of these at once with one short line (a ValueError).
"""

from __future__ import annotations

import errno
import os
import re
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

from nfsd_contract import BUNDLED_MODEL_LABELS

# Models that ship inside the backend, by short name: ordinary diffusers folders (nfsd_server/models/). The
# micro Stable Diffusion is trained on the lab's procedural world (lab/nfsd_lab/micro/, README "Priors").
BUNDLED_MODELS = {name: Path(__file__).resolve().parent / "models" / name for name in BUNDLED_MODEL_LABELS}
BENCHMARK_PREFIX = "random:"  # random-weight architectures for benchmarks (guidance/random_models.py)
# The hub's rule for repo ids: an optional namespace, a name; letters, digits, '-', '_', '.'; ≤ 96 each.
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")
PROBE_TIMEOUT_S = 2.0


class BenchmarkModelRefused(ValueError):
    """A ``random:*`` model on a server started without --allow-benchmark-models."""


def short(model: str, limit: int = 80) -> str:
    """The model name for a message: long names cut, so an error stays one readable line."""
    return repr(model if len(model) <= limit else f"{model[:limit]}… ({len(model)} characters)")


def looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


def resolve_bundled(model: str) -> str:
    """The folder of a bundled model's short name ("micro"); any other name unchanged. A bundled name wins
    over a hub id of the same spelling."""
    folder = BUNDLED_MODELS.get(model)
    return str(folder) if folder is not None else model


def check_benchmark_allowed(model: str | None, allowed: bool) -> None:
    if model is not None and model.startswith(BENCHMARK_PREFIX) and not allowed:
        raise BenchmarkModelRefused(
            f"model {short(model)} is a random-weight benchmark model, which this server does not offer; "
            "use a real model, or start the server with --allow-benchmark-models"
        )


def check_model(model: str) -> None:
    """ValueError (one line) unless ``model`` is a diffusers folder, or a hub id that is cached or reachable."""
    if model.startswith(BENCHMARK_PREFIX):
        return
    if model in BUNDLED_MODELS:
        if not (BUNDLED_MODELS[model] / "model_index.json").is_file():
            raise ValueError(f"the bundled model {model!r} is missing from this install "
                             f"({BUNDLED_MODELS[model]}); reinstall the backend")
        return
    if looks_like_path(model) or _exists(model):
        _check_folder(model)
        return
    if not _HUB_ID.match(model):
        raise ValueError(
            f"model {short(model)} is neither a folder on the server nor a hub id like 'owner/name'; "
            "pass a diffusers folder or a Hugging Face model id"
        )
    if not is_cached(model) and not hub_reachable():
        raise ValueError(
            f"model {short(model)} is not in this server's model cache and the Hugging Face hub cannot be reached "
            f"(offline); download it once where there is internet (`huggingface-cli download {model}`) "
            "or pass a local diffusers folder"
        )


def _exists(model: str) -> bool:
    try:
        return Path(model).expanduser().exists()
    except OSError:  # a name too long to be a path is not a path
        return False


def _check_folder(model: str) -> None:
    folder = Path(model).expanduser()
    try:
        if folder.is_dir():
            return
        exists, is_file = folder.exists(), folder.is_file()
    except OSError as error:
        why = "the name is too long for a path" if error.errno == errno.ENAMETOOLONG else (error.strerror or "")
        raise ValueError(f"model folder {short(model)} cannot be read: {why}") from None
    if is_file:
        raise ValueError(f"model {short(model)} is a file, not a folder; pass the diffusers model folder holding it")
    if not exists:
        raise ValueError(f"model folder {short(model)} does not exist; pass a diffusers model folder or a hub id")
    raise ValueError(f"model {short(model)} is not a folder; pass a diffusers model folder or a hub id")


def is_cached(model: str) -> bool:
    """True if the hub cache on this machine holds the model's index (so loading needs no network)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model, "model_index.json"), str)


def hub_reachable(timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """The hub endpoint (HF_ENDPOINT) resolves and accepts a TCP connect, both within ``timeout_s`` together;
    False in offline mode, on any failure, or when time runs out."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    deadline = time.monotonic() + timeout_s
    for family, kind, proto, _, address in _resolve(endpoint.hostname or "huggingface.co", port, timeout_s):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(remaining)
                sock.connect(address)
                return True
        except OSError:
            continue
    return False


def _resolve(host: str, port: int, timeout_s: float) -> list[tuple]:
    """getaddrinfo's answers for ``host``; [] if it fails or has not answered within ``timeout_s``.

    getaddrinfo takes no timeout (socket timeouts do not cover it) and a broken resolver can block it for
    minutes, so it runs in a daemon thread that is left behind, not waited for, when it is late.
    """
    answers: list[tuple] = []

    def lookup() -> None:
        try:
            answers.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError):  # no such name, no resolver; UnicodeError: a name IDNA cannot encode
            pass

    thread = threading.Thread(target=lookup, name="nfsd-hub-resolve", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return [] if thread.is_alive() else answers
