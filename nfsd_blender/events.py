"""What the worker threads tell Blender's main thread (no bpy): one small frozen record per kind of news.

``jobs`` puts them on ``jobs.EVENTS``; ``session.poll_timer`` takes them off on the main thread and applies each
with the handler ``handlers.HANDLERS`` names for its class. A ``JobEvent`` is about one job, whose history entry
the handler gets along with it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    """What the add-on itself is doing for the job (starting backend, downloading result)."""

    text: str


@dataclass(frozen=True)
class Backend:
    """The server's /v1/health answer (for the panel's "ready on CUDA" line)."""

    health: dict


@dataclass(frozen=True)
class Models:
    """The server's /v1/models list (for the model picker)."""

    models: list


@dataclass(frozen=True)
class Taesd:
    """Whether the job downloads TAESD before it trains."""

    downloads: bool


@dataclass(frozen=True)
class Info:
    """The answer of Start Backend / Check Server / Refresh Models: health and models, or why there are none."""

    health: dict | None
    models: list | None
    error: str = ""
    downloads: list | None = None  # the server's model downloads; None when it did not say


@dataclass(frozen=True)
class DownloadStatus:
    """A GET /v1/models/downloads/{id} answer (state, bytes_done, total_bytes, error, hint)."""

    status: dict


@dataclass(frozen=True)
class DownloadEnded:
    """The download worker stopped: the server's last answer, and the models as they are now (None: unknown)."""

    status: dict
    models: list | None
    error: str = ""


@dataclass(frozen=True)
class InstallEnded:
    """Install Backend finished: done (``python`` is the new backend's), failed or cancelled (``error`` says)."""

    state: str
    python: str
    version: str
    error: str


@dataclass(frozen=True)
class JobEvent:
    """News about one job (None: a job the server has not accepted yet)."""

    job_id: str | None


@dataclass(frozen=True)
class Placement:
    """Where a job's result goes: onto the object named ``on`` (From Selection), beside the one named ``beside``
    (an Edit), else at the 3D cursor."""

    on: str = ""
    beside: str = ""


@dataclass(frozen=True)
class Submitted(JobEvent):
    """The server accepted ``request`` (a POST /v1/jobs body) as ``job_id``: variation ``variation`` of its batch,
    its result to be placed as ``placement`` says."""

    request: dict
    variation: int = 0
    placement: Placement = Placement()


@dataclass(frozen=True)
class Status(JobEvent):
    """A GET /v1/jobs/{id} answer; its ``request`` is the job as it runs, every default resolved."""

    status: dict


@dataclass(frozen=True)
class Reconnecting(JobEvent):
    """The server did not answer; the worker retries (attempt 1, 2, …)."""

    attempt: int
    error: str


@dataclass(frozen=True)
class Preview(JobEvent):
    """A newer preview image was downloaded to ``path``."""

    path: str


@dataclass(frozen=True)
class Done(JobEvent):
    """The job finished and its GLB was downloaded to ``glb``."""

    glb: str
    status: dict


@dataclass(frozen=True)
class Failed(JobEvent):
    """The server says the job failed; ``status`` carries its error and hint."""

    status: dict


@dataclass(frozen=True)
class Cancelled(JobEvent):
    """The server says the job was cancelled (Cancel, or a variation queued behind it)."""

    status: dict


@dataclass(frozen=True)
class Interrupted(JobEvent):
    """The job cannot be followed any more (the backend stopped, the server forgot it); nothing failed."""

    message: str


@dataclass(frozen=True)
class NotDownloaded:
    """The job's model turned out not to be on the server, so nothing was submitted: one sentence, one action."""

    message: str


@dataclass(frozen=True)
class Error(JobEvent):
    """The worker could not go on (bad token, unreachable server, a bug): one line for the panel."""

    message: str
