"""The worker thread behind a generation (no bpy): start backend, submit, poll, download.

It only puts events on a thread-safe queue; the bpy timer in ``operators`` reads them on the main thread.
"""

from __future__ import annotations

import os
import queue
import threading
import time

from .backend import BACKEND
from .client import BackendError, Client

EVENTS: queue.Queue = queue.Queue()
POLL_S = 0.5


class Settings:
    """A snapshot of the preferences taken on the main thread (threads never touch bpy)."""

    def __init__(self, mode, python_path, data_dir, url, token, prior, model):
        self.mode, self.python_path, self.data_dir = mode, python_path, data_dir
        self.url, self.token, self.prior, self.model = url, token, prior, model


def make_client(settings: Settings) -> Client:
    if settings.mode == "LOCAL":
        if not BACKEND.running:
            BACKEND.start(settings.python_path, settings.data_dir, settings.prior, settings.model)
        return Client(BACKEND.url, BACKEND.token)
    return Client(settings.url, settings.token)


class JobWorker(threading.Thread):
    def __init__(self, settings: Settings, request: dict, events: queue.Queue = EVENTS):
        super().__init__(daemon=True)
        self.settings, self.request, self.events = settings, request, events
        self.cancel_event = threading.Event()
        self.stop_event = threading.Event()
        self.job_id: str | None = None

    def run(self) -> None:
        try:
            client = make_client(self.settings)
            self.job_id = client.submit(self.request)
            self.events.put(("submitted", self.job_id, self.request))
            self._poll(client)
        except BackendError as err:
            self.events.put(("error", self.job_id, str(err)))
        except Exception as err:  # noqa: BLE001  (a bug must not leave the panel spinning)
            self.events.put(("error", self.job_id, f"Unexpected error: {err!r}"))

    def _poll(self, client: Client) -> None:
        out_dir = os.path.join(self.settings.data_dir or ".", "blender")
        os.makedirs(out_dir, exist_ok=True)
        preview_step = None
        cancelled_sent = False
        while not self.stop_event.is_set():
            if self.cancel_event.is_set() and not cancelled_sent:
                client.cancel(self.job_id)
                cancelled_sent = True
            status = client.status(self.job_id)
            self.events.put(("status", self.job_id, status))
            if status.get("has_preview") and status.get("preview_step") != preview_step:
                try:
                    path = os.path.join(out_dir, f"{self.job_id}_preview.png")
                    _write(path, client.preview(self.job_id))
                    preview_step = status.get("preview_step")
                    self.events.put(("preview", self.job_id, path))
                except BackendError:
                    pass  # a preview is a nicety
            state = status.get("state")
            if state == "done":
                path = os.path.join(out_dir, f"{self.job_id}.glb")
                _write(path, client.result_glb(self.job_id))
                self.events.put(("done", self.job_id, {"status": status, "glb": path}))
                return
            if state in ("failed", "cancelled"):
                self.events.put((state, self.job_id, status))
                return
            time.sleep(POLL_S)


def _write(path: str, data: bytes) -> None:
    tmp = path + ".part"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
