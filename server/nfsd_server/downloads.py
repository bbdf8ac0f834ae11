"""Model downloads for the panel: only the files the Stable Diffusion prior loads, with progress in bytes, cancel,
and resume after a restart.

``huggingface_hub.snapshot_download`` fetches (``allow_patterns`` = the exact files ``files_to_fetch`` picks from
the repo's listing) in a child process, so Cancel can stop it mid-file. Resuming is per file: what finished is in
the hub cache and is not fetched again; the file in flight starts over (huggingface_hub 1.x+ writes every attempt
to a temp file of its own, huggingface/huggingface_hub#4228, and deletes it unless the process is killed; a killed
child's temp files are removed before the next start). Records live in ``<data-dir>/downloads/`` as JSON, so a
server restarted mid-download starts it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nfsd_server.files import read_regular_file, write_atomic

log = logging.getLogger(__name__)

# What StableDiffusionPrior.from_pretrained reads: these subfolders' configs and weights, and the root index.
PRIOR_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
ROOT_FILES = ("model_index.json",)
CONFIG_SUFFIXES = (".json", ".txt", ".model")  # configs, tokenizer vocab/merges, sentencepiece
WEIGHTS_SUFFIX = ".safetensors"  # never pickles: .bin / .ckpt are not fetched
# The components a GPU runs in fp16 (guidance/dtype_policy: the UNet; VAE and text encoder stay fp32), so the
# only ones whose fp16 weight variant is worth fetching: SD 2.1's UNet is 3.5 GB as fp32, 1.7 GB as fp16.
FP16_COMPONENTS = ("unet",)
ACTIVE = ("planning", "running")
FINISHED = ("done", "failed", "cancelled")
RECORDS_DIR = "downloads"
MAX_RECORD_BYTES = 1 << 20  # a record is a few hundred bytes; anything larger was not written by us
OFFLINE_HINT = ("connect this server to the internet and press Download again; or download the model elsewhere "
                "(`huggingface-cli download <model>`) and copy the Hugging Face cache")


class DownloadNotFound(KeyError):
    pass


def files_to_fetch(repo_files: list[str], variant: str | None = None) -> list[str]:
    """The files of a diffusers repo that the prior loads, from the repo's file list: the root index, every
    component's configs, and one ``.safetensors`` weight set per component (for ``FP16_COMPONENTS`` the
    ``variant`` one, e.g. fp16, where the repo has it). ValueError naming the component when a weight set exists
    only as pickles."""
    names = set(repo_files)
    chosen = [name for name in ROOT_FILES if name in names]
    if not chosen:
        raise ValueError("the repo has no model_index.json: it is not a diffusers pipeline; pick a diffusers model")
    for component in PRIOR_COMPONENTS:
        inside = sorted(n for n in names if n.startswith(component + "/") and n.count("/") == 1)
        chosen += [n for n in inside if n.endswith(CONFIG_SUFFIXES)]
        weights = [n for n in inside if n.endswith(WEIGHTS_SUFFIX)]
        plain = [n for n in weights if n.count(".") == 1]  # "model.fp16.safetensors" is a variant
        wants_variant = variant is not None and component in FP16_COMPONENTS
        wanted = [n for n in weights if wants_variant and n.endswith(f".{variant}{WEIGHTS_SUFFIX}")] or plain
        if not wanted and any(n.endswith((".bin", ".ckpt")) for n in inside):
            raise ValueError(f"the repo's {component} has no safetensors weights (only pickle files, which this "
                             "server does not load); pick a model published as safetensors")
        chosen += wanted
    return chosen


def record_id(model: str) -> str:
    """One download per model: its id is a hash of the model id (safe as a file name)."""
    return hashlib.sha256(model.encode()).hexdigest()[:16]


@dataclass
class Download:
    id: str
    model: str
    state: str = "planning"  # planning → running → done | failed | cancelled
    files: list[str] = field(default_factory=list)
    total_bytes: int | None = None  # known once planned
    error: str | None = None
    hint: str | None = None
    created_at: float = field(default_factory=time.time)


class DownloadManager:
    """The server's downloads: one child process each, records on disk; ``start`` again after a restart resumes
    what was running."""

    def __init__(self, data_dir: Path, python: str = sys.executable, variant: str | None = None):
        """``variant``: the weight variant to fetch for ``FP16_COMPONENTS`` ("fp16" on a CUDA server, see
        ``weights_variant``), where a repo has it."""
        self.folder = Path(data_dir) / RECORDS_DIR
        self.python = python
        self.variant = variant
        self._lock = threading.Lock()
        self._downloads: dict[str, Download] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._stopping = False
        self._load()

    # -- records ------------------------------------------------------------------------------------------
    def _load(self) -> None:
        for path in sorted(self.folder.glob("*.json")):
            try:
                raw = json.loads(read_regular_file(path, MAX_RECORD_BYTES))  # a FIFO or /dev/zero is refused
                download = Download(**{k: raw[k] for k in Download.__dataclass_fields__ if k in raw})
            except (OSError, ValueError, TypeError, KeyError) as error:
                log.warning("ignoring the unreadable download record %s: %s", path.name, error)
                continue
            if download.id == record_id(download.model) and path.stem == download.id:
                self._downloads[download.id] = download

    def _persist(self, download: Download) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.folder / f"{download.id}.json", json.dumps(asdict(download)).encode("utf-8"))

    # -- lifecycle ----------------------------------------------------------------------------------------
    def resume_interrupted(self) -> None:
        """Start again every download a previous run left unfinished (its partial files are kept)."""
        for download in list(self._downloads.values()):
            if download.state in ACTIVE:
                log.info("download of %s was interrupted; resuming it", download.model)
                self._spawn(download)

    def stop(self) -> None:
        """End the child processes; their records still say running, so the next start resumes them."""
        with self._lock:
            self._stopping = True
            procs = list(self._procs.values())
        for proc in procs:
            _end(proc)

    # -- the API --------------------------------------------------------------------------------------------
    def start(self, model: str) -> Download:
        """Download ``model`` (a hub id), or return its download when one is running or done."""
        with self._lock:
            download = self._downloads.get(record_id(model))
            if download is not None and (download.state in ACTIVE or download.state == "done" and _cached(model)):
                return download
            download = Download(record_id(model), model)
            self._persist(download)  # first: one the disk refused is not started (OSError → 507)
            self._downloads[download.id] = download
        self._spawn(download)
        return download

    def cancel(self, download_id: str) -> Download:
        with self._lock:
            download = self._get(download_id)
            proc = self._procs.get(download_id)
            if download.state in ACTIVE:
                before, download.state = download.state, "cancelled"
                try:
                    self._persist(download)
                except OSError:  # not on disk → not cancelled: a restart would resume it
                    download.state = before
                    raise
        if proc is not None:
            _end(proc)
        return download

    def get(self, download_id: str) -> Download:
        with self._lock:
            return self._get(download_id)

    def list(self) -> list[Download]:
        with self._lock:
            return sorted(self._downloads.values(), key=lambda d: d.created_at, reverse=True)

    def bytes_done(self, download: Download) -> int:
        """Bytes on disk so far: the finished files of the plan plus the partial ones (capped at the total)."""
        if download.state == "done":
            return download.total_bytes or 0
        if not download.files:
            return 0
        return min(_bytes_on_disk(download.model, download.files), download.total_bytes or 0)

    def _get(self, download_id: str) -> Download:
        try:
            return self._downloads[download_id]
        except KeyError:
            raise DownloadNotFound(download_id) from None

    # -- the child process ------------------------------------------------------------------------------------
    def _spawn(self, download: Download) -> None:
        _remove_stale_partials(download.model)
        cmd = [self.python, "-m", "nfsd_server.downloads", download.model, *([self.variant] if self.variant else [])]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with self._lock:
            self._procs[download.id] = proc
            download.state, download.error, download.hint = "planning", None, None
            self._persist(download)
        threading.Thread(target=self._follow, args=(download, proc), daemon=True,
                         name=f"nfsd-download-{download.id}").start()

    def _follow(self, download: Download, proc: subprocess.Popen) -> None:
        """Apply the child's JSON lines ({"plan": ...}, {"done": ...}, {"error": ..., "hint": ...}) to the record."""
        last: dict = {}
        for line in proc.stdout:
            try:
                last = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                if "plan" in last and download.state == "planning":
                    download.files, download.total_bytes = last["plan"]["files"], last["plan"]["total_bytes"]
                    download.state = "running"
                    self._persist(download)
        stderr = proc.stderr.read()
        proc.wait()
        with self._lock:
            self._procs.pop(download.id, None)
            if self._stopping or download.state not in ACTIVE:
                return  # stopped (resumes at the next start) or cancelled
            if proc.returncode == 0 and "done" in last:
                download.state = "done"
            else:
                tail = stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
                download.state = "failed"
                download.error = last.get("error") or f"the download stopped: {tail[0]}"
                download.hint = last.get("hint") or "press Download again to resume it"
            self._persist(download)


def _end(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _repo_folder(model: str) -> Path:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=model, repo_type="model")


def _remove_stale_partials(model: str) -> None:
    for partial in (_repo_folder(model) / "blobs").glob("*.incomplete"):
        partial.unlink(missing_ok=True)


def _cached(model: str) -> bool:
    from nfsd_server.model_source import is_cached

    return is_cached(model)


def _bytes_on_disk(model: str, files: list[str]) -> int:
    """The plan's files already in a snapshot, plus the ``.incomplete`` temp files being written."""
    folder = _repo_folder(model)
    done = max((sum(_size(snapshot / name) for name in files) for snapshot in (folder / "snapshots").glob("*")),
               default=0)
    return done + sum(_size(p) for p in (folder / "blobs").glob("*.incomplete"))


def _size(path: Path) -> int:
    """0 for a file that is not there (a temp file can be renamed or deleted between listing and reading)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


# -- the child: plan, say it, download ----------------------------------------------------------------------


def _one_line(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:limit]


def _say(**message) -> None:
    print(json.dumps(message), flush=True)


def plan(model: str, variant: str | None = None) -> tuple[list[str], int]:
    """(the files to fetch, their total size in bytes), from the hub's listing (no file is downloaded)."""
    from huggingface_hub import snapshot_download

    listing = snapshot_download(model, dry_run=True)
    files = files_to_fetch([info.filename for info in listing], variant)
    sizes = {info.filename: info.file_size or 0 for info in listing}
    return files, sum(sizes[name] for name in files)


def weights_variant(device: str | None) -> str | None:
    """The weight variant a server on ``device`` loads its UNet from: "fp16" on CUDA (where it runs in fp16), else
    None (the plain fp32 weights)."""
    from nfsd_server.devices import check_device

    return "fp16" if check_device(device).type == "cuda" else None


def _run_child(model: str, variant: str | None = None) -> int:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        files, total = plan(model, variant)
        _say(plan={"files": files, "total_bytes": total})
        path = snapshot_download(model, allow_patterns=files)
    except RepositoryNotFoundError:
        _say(error=f"the hub has no model {model!r}", hint="check the model id (owner/name) and press Download again")
        return 1
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        cause = error.__cause__ or error  # the dry run wraps what the connection said
        _say(error=f"cannot reach the Hugging Face hub at {constants.ENDPOINT}: {_one_line(cause)}", hint=OFFLINE_HINT)
        return 1
    except ValueError as error:
        _say(error=str(error), hint=None)
        return 1
    _say(done=str(path))
    return 0


if __name__ == "__main__":
    raise SystemExit(_run_child(*sys.argv[1:3]))
