"""Where jobs live between server runs: one folder per job with its ``job.json``, recovery at start-up and
retention. Files only; what a job's state may become is the job runner's (``api/jobs.py``) to decide.

Not thread-safe by itself: the runner calls it under its lock, except ``delete_folders``, which only touches
folders already taken out of the store.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nfsd_contract import FINISHED_STATES, JobSpec
from nfsd_server.api.mesh_store import purge_meshes
from nfsd_server.api.records import JOB_ID_PATTERN, JobRecord, UnsafePath, inside
from nfsd_server.checkpoints import LEGACY_NAME, CheckpointError, read_checkpoint_info
from nfsd_server.files import read_regular_file, write_atomic
from nfsd_server.train import CHECKPOINT_NAME

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
PREVIEW_FILE = "preview.png"
# A record is a few KB (the GLB metadata included); a larger job.json is not one this server wrote.
MAX_RECORD_BYTES = 4 * 2**20
# ``job.json.<state>``: an empty file that says a job ended where its record could not be rewritten (a full
# disk has no block for a new record, but an empty file needs none). Read at start-up; cancelled wins.
END_MARKER_STATES = ("cancelled", "failed", "done")
# Free space a job must leave beyond its own files (previews, records, the temporary copy of each write).
RESERVE_BYTES = 16 * 2**20


@dataclass
class Job:
    """One job's state as the worker and the routes share it (always read and written under the lock)."""

    id: str
    spec: JobSpec
    folder: Path
    created_at: datetime
    state: str = "queued"
    step: int = 0
    loss: float | None = None
    eta_s: float | None = None
    error: str | None = None
    hint: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    preview_step: int | None = None
    glb_name: str | None = None
    metadata: dict[str, Any] | None = None
    resumed_from_step: int | None = None  # set when a restart interrupted the job: the step it continues from
    cancel_requested: threading.Event = field(default_factory=threading.Event)

    def record(self) -> dict[str, Any]:
        """What job.json holds: enough to list the job again after a restart."""
        return {
            "id": self.id,
            "state": self.state,
            "request": self.spec.to_dict(),
            "step": self.step,
            "loss": self.loss,
            "eta_s": self.eta_s,
            "error": self.error,
            "hint": self.hint,
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "preview_step": self.preview_step,
            "glb_name": self.glb_name,
            "metadata": self.metadata,
            "resumed_from_step": self.resumed_from_step,
        }

    @classmethod
    def from_record(cls, text: str, folder: Path) -> Job:
        """A job from its job.json text; ValidationError/ValueError if the record breaks the schema."""
        record = JobRecord.model_validate_json(text)
        if record.id != folder.name:
            raise ValueError(f"the record's id {record.id!r} is not its folder's name {folder.name!r}")
        if record.glb_name is not None:
            inside(folder, record.glb_name)
        values = record.model_dump(exclude={"id"})
        values["spec"] = values.pop("request")
        return cls(id=record.id, folder=folder, **values | {"spec": record.request})


@dataclass(frozen=True)
class Purged:
    """What one purge deleted: finished jobs (ids, oldest first), job folders set aside at start-up for a bad
    record (names) and uploaded meshes (ids)."""

    jobs: list[str]
    set_aside: list[str]
    meshes: list[str]


def remove_link_or_tree(path: Path) -> None:
    """Delete ``path``: a symlink as a link (its target untouched), a folder with all it holds (links inside
    are removed as links, never followed). Logged, not raised: the purge runs on the worker thread."""
    if path.is_symlink() or not path.is_dir():
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            log.warning("cannot delete %s: %s", path, error)
    else:
        shutil.rmtree(path, ignore_errors=True)  # as much as it can; what is left is logged
        if path.exists():
            log.warning("cannot delete all of %s", path)


def checkpoint_step(folder: Path) -> int:
    """The step of the job's last checkpoint; 0 when there is none (or none this version can read).

    An unreadable checkpoint (or an old pickle one) is renamed ``*.unreadable``, else the resumed run would
    refuse to start on it.
    """
    path = folder / CHECKPOINT_NAME
    if (folder / LEGACY_NAME).exists():
        (folder / LEGACY_NAME).rename(folder / f"{LEGACY_NAME}.unreadable")
    if not path.exists() and not path.is_symlink():
        return 0
    try:
        if path.is_symlink() or not path.is_file():  # a link may lead anywhere; this server writes files
            raise CheckpointError(f"{str(path)!r} is a link or not a regular file, not a checkpoint this server wrote")
        return int(read_checkpoint_info(path)["step"])
    except (CheckpointError, KeyError, TypeError, ValueError) as error:
        log.warning("%s cannot be resumed from (%s); the job starts over", path, error)
        path.rename(folder / f"{CHECKPOINT_NAME}.unreadable")
        return 0


class JobStore:
    """The jobs this server knows (``jobs``, in submission order) and their records under ``data_dir``.

    Retention: finished jobs older than ``retention_days`` or beyond the newest ``max_finished`` (None: no
    limit) go with their folders, and so do uploaded meshes no unfinished job names and job folders set aside
    for a bad record, once older than ``retention_days`` too.
    """

    def __init__(self, data_dir: Path, retention_days: float | None = 30.0, max_finished: int | None = 1000):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.retention_days, self.max_finished = retention_days, max_finished
        self.jobs: dict[str, Job] = {}  # insertion order = submission order
        self.set_aside: dict[str, Path] = {}  # job folders whose record failed to load, by name, until purged

    def new_folder(self, job_id: str) -> Path:
        folder = self.data_dir / job_id
        folder.mkdir(parents=True)
        return folder

    def write(self, job: Job) -> None:
        """Write ``job.json`` atomically; OSError if the disk refuses."""
        write_atomic(job.folder / JOB_FILE, json.dumps(job.record(), indent=1).encode("utf-8"))

    def record_end(self, job: Job) -> None:
        """Make a job's end (its current, finished state) survive a restart: its record, or where the disk refuses
        that, an end marker. OSError only when neither could be written (then a restart would not know)."""
        try:
            self.write(job)
        except OSError as error:
            log.error("job %s: cannot write %s: %s; leaving an end marker", job.id, job.folder / JOB_FILE, error)
            self.mark_end(job.folder, job.state)
        else:
            for state in END_MARKER_STATES:
                (job.folder / f"{JOB_FILE}.{state}").unlink(missing_ok=True)

    @staticmethod
    def mark_end(folder: Path, state: str) -> None:
        """The empty ``job.json.<state>`` file; OSError if even that cannot be made."""
        os.close(os.open(folder / f"{JOB_FILE}.{state}", os.O_WRONLY | os.O_CREAT, 0o644))

    def apply_end_marker(self, job: Job) -> None:
        """A job whose record says it has not ended but a marker says it has: ended, as the marker says."""
        if job.state in FINISHED_STATES:
            return
        marked = next((state for state in END_MARKER_STATES if (job.folder / f"{JOB_FILE}.{state}").exists()), None)
        if marked is None:
            return
        results = [path.name for path in job.folder.glob("*.glb") if path.is_file() and not path.is_symlink()]
        if marked == "done" and len(results) == 1:
            job.state, job.glb_name, job.step = "done", results[0], job.spec.steps
        elif marked in ("done", "failed"):
            job.state = "failed"
            job.error = "the job ended but the server could not record how (its disk was full)"
            job.hint = "free disk space in the server's --data-dir and submit the job again"
        else:
            job.state = "cancelled"
        job.eta_s = None
        job.finished_at = datetime.fromtimestamp(
            (job.folder / f"{JOB_FILE}.{marked}").stat().st_mtime, timezone.utc
        )
        log.info("job %s: its end marker says %s; it stays %s", job.id, marked, job.state)
        try:
            self.record_end(job)
        except OSError:
            pass  # the marker stays, and says the same at the next start

    def check_free_space(self, job: Job) -> None:
        """OSError(ENOSPC) unless the data dir has room for what is left of the job: its GLB (at most the
        textures uncompressed plus the mesh), a new checkpoint beside the old one, and ``RESERVE_BYTES``."""
        checkpoint = job.folder / CHECKPOINT_NAME
        checkpoint_bytes = checkpoint.stat().st_size if checkpoint.is_file() else 0
        spec = job.spec
        needed = 3 * 4 * spec.texture_size**2 + 100 * spec.poly_budget + 2 * checkpoint_bytes + RESERVE_BYTES
        free = shutil.disk_usage(job.folder).free
        if free < needed:
            raise OSError(
                errno.ENOSPC,
                f"No space left on device: {free / 2**20:.0f} MiB free in the data dir, the job needs about "
                f"{needed / 2**20:.0f} MiB to finish",
            )

    def persist(self, job: Job) -> None:
        """``write``, logging instead of raising: memory is the truth while the server runs and the file is for
        the next start, so a full or vanished disk must not stop a state change halfway."""
        try:
            self.write(job)
        except OSError as error:
            log.error("job %s: cannot write %s: %s", job.id, job.folder / JOB_FILE, error)

    def load(self) -> list[Job]:
        """Every valid record under ``data_dir``, oldest first. A record that breaks the schema is set aside
        (logged, not listed, left on disk for a person to read)."""
        records = []
        root = self.data_dir.resolve()
        for path in self.data_dir.glob(f"*/{JOB_FILE}"):
            try:
                if path.parent.resolve().parent != root:
                    raise UnsafePath(f"the job folder {str(path.parent)!r} links outside {str(self.data_dir)!r}")
                # Not read_text: a FIFO would hang the start, a link to /dev/zero would fill memory.
                text = read_regular_file(path, MAX_RECORD_BYTES).decode("utf-8")
                job = Job.from_record(text, path.parent)
                self.apply_end_marker(job)
            except (OSError, ValueError) as error:  # pydantic's ValidationError is a ValueError
                reason = " ".join(str(error).split())[:300]
                log.warning("setting aside %s: not a valid job record (%s)", path, reason)
                if re.fullmatch(JOB_ID_PATTERN, path.parent.name):  # only folders named as this server names them
                    self.set_aside[path.parent.name] = path.parent
                continue
            records.append(job)
        return sorted(records, key=lambda job: job.created_at)

    def take_purgeable(self, older_than_s: float | None, now: datetime) -> tuple[list[Path], Purged]:
        """Remove from the store what a purge deletes, and delete the unused meshes (their check must happen
        under the caller's lock, as a submit's does). Returns the folders to delete (``delete_folders``, outside
        the lock) and what the purge deleted.

        With ``older_than_s``: what is older than that. Without: the retention policy. A job's age runs from
        when it finished, a mesh's and a set-aside folder's from their mtime. Unfinished jobs are never
        deleted, nor the meshes and the edits' sources they name: they read them when they run, export and resume.
        """
        finished = sorted(
            (job for job in self.jobs.values() if job.state in FINISHED_STATES),
            key=lambda job: job.finished_at or job.created_at,
        )
        age_limit_s = older_than_s if older_than_s is not None else (
            None if self.retention_days is None else self.retention_days * 86400
        )
        doomed = {
            job.id: job for job in finished
            if age_limit_s is not None and (now - (job.finished_at or job.created_at)).total_seconds() > age_limit_s
        }
        if older_than_s is None and self.max_finished is not None:
            doomed.update({job.id: job for job in finished[: max(0, len(finished) - self.max_finished)]})
        # An edit that is still to run or resume reads its source's checkpoint: the source stays until it ends.
        for job in self.jobs.values():
            if job.state not in FINISHED_STATES and job.spec.edit_of is not None:
                doomed.pop(job.spec.edit_of, None)
        for job_id in doomed:
            del self.jobs[job_id]
        meshes: list[str] = []
        set_aside: dict[str, Path] = {}
        if age_limit_s is not None:
            in_use = {
                job.spec.init_mesh for job in self.jobs.values()
                if job.state not in FINISHED_STATES and job.spec.init_mesh is not None
            }
            meshes = purge_meshes(self.data_dir, age_limit_s, in_use, now.timestamp())
            for name, folder in list(self.set_aside.items()):
                try:
                    mtime = folder.lstat().st_mtime  # the link's own time for a link: never followed
                except OSError:  # gone already (a person cleaned up)
                    del self.set_aside[name]
                    continue
                if now.timestamp() - mtime > age_limit_s:
                    set_aside[name] = self.set_aside.pop(name)
        purged = Purged(jobs=[job.id for job in finished if job.id in doomed], set_aside=sorted(set_aside), meshes=meshes)
        return [job.folder for job in doomed.values()] + list(set_aside.values()), purged

    @staticmethod
    def delete_folders(folders: list[Path], purged: Purged) -> None:
        for folder in folders:
            remove_link_or_tree(folder)
        if purged.jobs or purged.set_aside or purged.meshes:
            log.info(
                "purged %d finished job(s), %d set-aside job folder(s), %d uploaded mesh(es)",
                len(purged.jobs), len(purged.set_aside), len(purged.meshes),
            )

