"""The worker thread behind a generation (no bpy): start backend, submit, poll, download.

It only puts ``events`` records on a thread-safe queue; the bpy timer in ``session`` applies them on the main
thread.
"""

from __future__ import annotations

import os
import queue
import threading
import time

from . import contract
from .backend import BACKEND
from .client import BackendError, Client, refused_token
from .events import (
    Backend, Cancelled, Done, DownloadEnded, DownloadStatus, Error, Failed, Info, Interrupted, Models,
    NotDownloaded, Phase, Placement, Preview, Reconnecting, Status, Submitted, Taesd,
)

EVENTS: queue.Queue = queue.Queue()
POLL_S = 0.5
# Back-off between retries of a status call that failed transiently (~30 s in all, then the job is lost).
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)
END_EVENTS = {"failed": Failed, "cancelled": Cancelled}  # the end states besides done, as the server names them
GLB_TRIES = 3  # a result that arrives cut short is fetched again this many times in all


class BackendGone(BackendError):
    """The local backend is not running any more (Stop Backend, or it died): nothing to reconnect to."""


class Settings:
    """A snapshot of the preferences taken on the main thread (threads never touch bpy)."""

    def __init__(self, mode, python_path, data_dir, url, token, prior, model):
        self.mode, self.python_path, self.data_dir = mode, python_path, data_dir
        self.url, self.token, self.prior, self.model = url, token, prior, model


def make_client(settings: Settings, events: queue.Queue | None = None) -> Client:
    if settings.mode == "LOCAL":
        if not BACKEND.running:
            if events is not None:
                events.put(Phase("starting backend"))
            BACKEND.start(settings.python_path, settings.data_dir, settings.prior, settings.model)
        return Client(BACKEND.url, BACKEND.token, mode="LOCAL")
    return Client(settings.url, settings.token)


def find_model(models: list[dict], prior: str, model: str) -> dict | None:
    """The /v1/models entry a request will use ('' model = the server's default), or None."""
    for entry in models:
        if entry.get("prior") != prior:
            continue
        if prior != "stable-diffusion" or entry.get("model") == model or (not model and entry.get("default")):
            return entry
    return None


def request_encoder(prior: str, choice: str) -> str:
    """The request's ``encoder`` for the preference ``choice``, which picks Stable Diffusion's RGB encoder; the
    analytic prior has one fixed encoder (the server refuses another), so it gets the default."""
    return choice if prior == "stable-diffusion" else contract.DEFAULT_ENCODER


def not_downloaded(entry: dict) -> str:
    """What Generate says when the job's model must be downloaded first (before or after the model list is known)."""
    return f"{entry['label']} is not downloaded yet: press Download above Generate"


def needs_taesd(request: dict, prior: str) -> bool:
    """Whether the job encodes its RGB phase with TAESD ("auto" resolved as the server does: the preset's)."""
    encoder = request.get("encoder") or contract.DEFAULT_ENCODER
    if encoder == "auto":
        encoder = contract.PRESET_ENCODERS[request.get("preset") or contract.DEFAULT_PRESET]
    return prior == "stable-diffusion" and encoder == "taesd"


def downloads_taesd(entry: dict | None, request: dict, prior: str) -> bool:
    """True when the job fetches TAESD before it trains: it needs TAESD and the model's /v1/models ``entry`` says
    the server has none (no entry, or one that does not say: unknown, so no claim)."""
    return entry is not None and entry.get("taesd_cached") is False and needs_taesd(request, prior)


def server_info(settings: Settings, start: bool, events: queue.Queue = EVENTS) -> None:
    """Thread body: the server's health and models (starting the local one if ``start``), as one ``Info``."""
    if settings.mode == "LOCAL" and not BACKEND.running and not start:
        events.put(Info(None, None, "not running (starts on Generate)"))
        return
    try:
        client = make_client(settings)
        health = client.health()
        if health.get("authenticated") is False:  # health answers anyone: "up" is not "will take our jobs"
            raise refused_token(client.token)
        events.put(Info(health, client.models(), downloads=_downloads_or_none(client)))
    except BackendError as err:
        events.put(Info(None, None, str(err)))


def _downloads_or_none(client: Client) -> list | None:
    try:
        return client.downloads()
    except BackendError:  # an older backend has no downloads: the menu just shows no progress
        return None


class DownloadWorker(threading.Thread):
    """Starts (or resumes) the server's download of ``model`` and polls it to the end; ``cancel_event`` cancels."""

    def __init__(self, settings: Settings, model: str, events: queue.Queue = EVENTS):
        super().__init__(daemon=True)
        self.settings, self.model, self.events = settings, model, events
        self.cancel_event = threading.Event()
        self.stop_event = threading.Event()

    def run(self) -> None:
        status: dict = {"model": self.model, "state": "failed"}
        try:
            client = make_client(self.settings, self.events)
            status = client.start_download(self.model)
            while status["state"] in ("planning", "running") and not self.stop_event.is_set():
                self.events.put(DownloadStatus(status))
                if self.cancel_event.wait(POLL_S):
                    status = client.cancel_download(status["id"])
                    break
                status = client.download(status["id"])
            self.events.put(DownloadEnded(status, client.models()))
        except BackendError as err:
            self.events.put(DownloadEnded(status, None, f"Download of {self.model} stopped: {err}"))


class JobWorker(threading.Thread):
    """Submits ``requests`` (the server queues them: variations run one after another) and polls each to the end.

    With ``resume`` (job ids) it submits nothing and follows jobs a saved scene was waiting on. ``placement`` says
    where the results go; it travels in each job's record, never back to this thread.
    """

    def __init__(self, settings: Settings, requests: list[dict], events: queue.Queue = EVENTS,
                 resume: list[str] | None = None, placement: Placement = Placement()):
        super().__init__(daemon=True)
        self.settings, self.requests, self.events = settings, list(requests), events
        self.resume, self.placement = list(resume or []), placement
        self.cancel_event = threading.Event()
        self.stop_event = threading.Event()
        self.job_id: str | None = None
        self.job_ids: list[str] = []
        self.retry_delays = RETRY_DELAYS_S

    def run(self) -> None:
        try:
            client = make_client(self.settings, self.events)
            try:
                self.events.put(Backend(client.health()))  # for the panel's "ready on CUDA" line
            except BackendError:
                pass
            if self.requests and not self._announce_model(client):
                return
            for variation, request in enumerate(self.requests):
                if self.cancel_event.is_set():
                    break
                self.job_id = client.submit(request)
                self.job_ids.append(self.job_id)
                self.events.put(Submitted(self.job_id, request, variation, self.placement))
            self.job_ids += self.resume
            for job_id in list(self.job_ids):
                self.job_id = job_id
                if not self._poll(client, job_id) or self.stop_event.is_set():
                    break
        except BackendError as err:
            self.events.put(Error(self.job_id, str(err)))
        except Exception as err:  # noqa: BLE001  (a bug must not leave the panel spinning)
            self.events.put(Error(self.job_id, f"Unexpected error: {err!r}"))

    def _announce_model(self, client: Client) -> bool:
        """Tell the panel whether the model (and TAESD) must be downloaded first; False (nothing is submitted) when
        the model is not on the server, as Generate refuses when the list is known before. A server that cannot
        say delays nothing: the job runs and its status tells the rest."""
        request = self.requests[0]
        try:
            models = client.models()
        except BackendError:
            return True
        self.events.put(Models(models))
        prior = request.get("prior") or self.settings.prior
        entry = find_model(models, prior, request.get("model") or "")
        if entry is None:
            return True
        if not entry.get("cached", True):
            self.events.put(NotDownloaded(not_downloaded(entry)))
            return False
        self.events.put(Taesd(downloads_taesd(entry, request, prior)))
        return True

    def _status(self, client: Client, job_id: str) -> dict | None:
        """``client.status`` retried with back-off while the failure is transient; None once stopped."""
        for attempt, delay in enumerate((*self.retry_delays, None), start=1):
            try:
                return client.status(job_id)
            except BackendError as err:
                if err.transient and self.settings.mode == "LOCAL" and not BACKEND.running:
                    raise BackendGone("The backend was stopped while the job ran") from None
                if not err.transient or delay is None:
                    if err.transient:
                        raise BackendError(f"Lost contact with the server: {err.args[0]}", err.hint) from None
                    raise
                self.events.put(Reconnecting(job_id, attempt, err.args[0]))
                if self.stop_event.wait(delay):
                    return None
        return None

    def _poll(self, client: Client, job_id: str) -> bool:
        """Follow one job to its end; True when the next job should be followed too."""
        out_dir = os.path.join(self.settings.data_dir or ".", "blender")
        os.makedirs(out_dir, exist_ok=True)
        preview_step = None
        cancelled_sent = False
        while not self.stop_event.is_set():
            if self.cancel_event.is_set() and not cancelled_sent:
                cancelled_sent = self._cancel_all(client)
            try:
                status = self._status(client, job_id)
            except BackendGone as err:
                self.events.put(Interrupted(job_id, str(err)))
                return False
            except BackendError as err:
                if err.status == 404:
                    self.events.put(Interrupted(job_id, "The server no longer has this job"))
                    return True
                raise
            if status is None:
                return False
            self.events.put(Status(job_id, status))
            if status.get("has_preview") and status.get("preview_step") != preview_step:
                try:
                    path = os.path.join(out_dir, f"{job_id}_preview.png")
                    _write(path, client.preview(job_id))
                    preview_step = status.get("preview_step")
                    self.events.put(Preview(job_id, path))
                except BackendError:
                    pass  # a preview is a nicety
            state = status.get("state")
            if state == "done":
                self.events.put(Phase("downloading result"))
                path = os.path.join(out_dir, f"{job_id}.glb")
                _write(path, self._fetch_glb(client, job_id))
                self.events.put(Done(job_id, path, status))
                return True
            if state in END_EVENTS:
                self.events.put(END_EVENTS[state](job_id, status))
                return True  # after a cancel the other variations report 'cancelled' quickly
            time.sleep(POLL_S)
        return False

    def _fetch_glb(self, client: Client, job_id: str) -> bytes:
        """The job's GLB, fetched again while it arrives broken (a dropped connection cuts it short)."""
        problem = ""
        for _ in range(GLB_TRIES):
            data = client.result_glb(job_id)
            problem = glb_problem(data)
            if not problem:
                return data
        raise BackendError(f"The result arrived broken {GLB_TRIES} times ({problem})",
                           "press Re-import in History to fetch it again")

    def _cancel_all(self, client: Client) -> bool:
        """Cancel every job this worker submitted; False (try again next poll) if the server is unreachable."""
        for job_id in self.job_ids:
            try:
                client.cancel(job_id)
            except BackendError as err:
                if err.transient:
                    return False
        return True


def glb_problem(data: bytes) -> str:
    """'' if ``data`` is a whole binary glTF (its header's magic, and its declared length is what arrived), else
    what is wrong with it."""
    if len(data) < 12 or data[:4] != b"glTF":
        return f"not a binary glTF ({len(data)} bytes)"
    declared = int.from_bytes(data[8:12], "little")
    if declared != len(data):
        return f"{len(data)} of its {declared} bytes"
    return ""


def _write(path: str, data: bytes) -> None:
    tmp = path + ".part"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
