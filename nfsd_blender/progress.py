"""What the panel says about a job, as named phases with an ETA in m:ss (no bpy, so it is unit-testable)."""

from __future__ import annotations


def format_duration(seconds: float | None) -> str:
    """``125.4`` → ``'2:05'``; an hour or more → ``'1:02:05'``; None or negative → ''."""
    if seconds is None or seconds < 0:
        return ""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_size(n_bytes: int | None) -> str:
    if not n_bytes:
        return ""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} B"


def download(status: dict) -> tuple[str, float]:
    """(text, fraction) for a server's model download: sizing it first, then percent of the real total."""
    total, done = status.get("total_bytes") or 0, status.get("bytes_done") or 0
    if status.get("state") == "planning" or not total:
        return "sizing the download…", 0.0
    frac = min(done / total, 1.0)
    return f"downloading {int(frac * 100)}% of {format_size(total)}", frac


def phase(state: str, step: int = 0, total: int = 0, eta_s: float | None = None, queue_position: int = -1,
          client_phase: str = "", download_bytes: int = 0, elapsed_s: float | None = None,
          reconnect_attempt: int = 0, job_index: int = 0, job_count: int = 1) -> tuple[str, float]:
    """(one line of text, progress fraction 0–1) for the panel's progress bar.

    With variations (``job_count`` > 1) the text starts "2 of 3 · " and the fraction is the whole batch's, so the
    bar never jumps back to 0 when the next variation starts; ``job_index`` counts from 0.

    ``client_phase`` is what the add-on itself is doing (starting backend, downloading result, importing) and
    wins over the server's state; ``download_bytes`` > 0 means the model is not in the server's cache yet, so
    the silent first-load is named as the download it is.
    """
    text, frac = _one_job(state, step, total, eta_s, queue_position, client_phase, download_bytes, elapsed_s,
                          reconnect_attempt)
    if job_count <= 1:
        return text, frac
    index = min(max(job_index, 0), job_count - 1)
    return f"{index + 1} of {job_count} · {text}", (index + frac) / job_count


def _one_job(state, step, total, eta_s, queue_position, client_phase, download_bytes, elapsed_s,
             reconnect_attempt) -> tuple[str, float]:
    frac = step / total if total else 0.0
    if reconnect_attempt:
        return f"reconnecting to the server (try {reconnect_attempt})…", frac
    if client_phase:
        return f"{client_phase}…", (1.0 if client_phase in ("downloading result", "importing") else 0.0)
    if state == "queued":
        # The server's position counts the waiting jobs ahead (0 = runs next); the job it waits for is running.
        ahead = f" ({queue_position + 1} ahead)" if queue_position >= 0 else ""
        return f"queued{ahead}", 0.0
    if state == "running" and step == 0:
        if download_bytes:
            return f"downloading model ({format_size(download_bytes)}), then loading…", 0.0
        return "loading model…", 0.0
    if state == "running":
        eta = format_duration(eta_s)
        return f"training {step}/{total}" + (f" · ETA {eta}" if eta else ""), frac
    if state == "exporting":
        took = format_duration(elapsed_s)
        return "exporting mesh and texture" + (f" · {took}" if took else ""), 1.0
    if state == "fetching":  # the server is done; its result is on the way here
        return "downloading result…", 1.0
    if state == "starting":  # the job has not reached the server yet
        return "sending the job to the server…", 0.0
    return state or "starting", frac
