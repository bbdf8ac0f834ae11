"""Install Backend (no bpy): a virtual environment holding the backend wheel that ships in the add-on zip, torch
matched to this machine, and a health check that starts the backend once.

It is built beside the working install (``<target>.installing``) and swapped in only after the health check
passes, so a failed or cancelled install leaves the previous backend as it was. Every command's output goes to a
log file the panel can open. Extra pip arguments come from ``NFSD_PIP_ARGS`` (split like a shell line), e.g.
``--no-index --find-links /path/to/wheelhouse`` for a machine without internet. Where those arguments or the
user's pip configuration name an index, torch comes from it; else from PyTorch's index for the machine, falling
back to the standard index when PyTorch's cannot be used (a mirror, a firewall that lets only PyPI through).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .backend import LocalBackend, venv_python
from .client import BackendError, Client
from .events import InstallEnded

PIP_ARGS_ENV = "NFSD_PIP_ARGS"
PYTORCH_INDEX = "https://download.pytorch.org/whl"
BACKEND_DIR = Path(__file__).resolve().parent / "backend"  # scripts/build_addon.py puts the wheel here
DIST_NAME = "nfsd-blender"  # the backend's distribution name (pyproject.toml)
MIN_PYTHON = (3, 11)
MARKER = "nfsd-install.json"  # in the environment: the wheel it was built from, written once it passed its check
SIZE_EVERY_S = 2.0  # how often the environment's size is measured for the panel (a walk of its files)
PIP_TMP = ".pip-tmp"  # pip's TMPDIR inside the new environment, so downloads in flight count in its size
# Options (and pip environment variables / configuration keys) by which a user names where packages come from.
INDEX_OPTIONS = ("--index-url", "-i", "--extra-index-url", "--no-index", "--find-links", "-f")
INDEX_ENV = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX", "PIP_FIND_LINKS")
INDEX_CONFIG_KEYS = ("index-url", "extra-index-url", "no-index", "find-links")


@dataclass(frozen=True)
class TorchChoice:
    """Which torch build to install, and the panel's one-line reason."""

    label: str
    index_url: str | None  # None: the package index's default torch
    reason: str
    expected_mb: float  # the finished environment's size, for the progress bar (measured installs, rounded up)


def torch_choice(system: str, nvidia_driver: bool) -> TorchChoice:
    """The torch build for ``system`` (``platform.system()``) with or without an NVIDIA driver."""
    if system == "Darwin":
        return TorchChoice("MPS", None, "macOS: the standard torch runs on the Apple GPU through MPS (about 1.2 GB)",
                           1200)
    if nvidia_driver and system == "Windows":
        return TorchChoice("CUDA", f"{PYTORCH_INDEX}/cu128",
                           "NVIDIA driver found: PyTorch's CUDA build (about 5 GB; the index's Windows torch is "
                           "CPU-only)", 5000)
    if nvidia_driver:
        return TorchChoice("CUDA", None, "NVIDIA driver found: the standard Linux torch, which is the CUDA build "
                           "(about 6 GB)", 6000)
    return TorchChoice("CPU", f"{PYTORCH_INDEX}/cpu",
                       "no NVIDIA driver found: the CPU build (about 1.4 GB installed instead of about 6 GB)", 1400)


def names_an_index(pip_args: list[str], environ: dict[str, str], pip_config: str) -> bool:
    """True when the user's pip arguments, pip environment variables or ``pip config list`` output say where
    packages come from: then torch is installed from there, never from an index of ours."""
    if any(arg.split("=", 1)[0] in INDEX_OPTIONS for arg in pip_args):
        return True
    if any(environ.get(name) for name in INDEX_ENV):
        return True
    keys = (line.split("=", 1)[0].strip() for line in pip_config.splitlines())
    return any(key.rsplit(".", 1)[-1] in INDEX_CONFIG_KEYS for key in keys)


def pip_config(python: str) -> str:
    """``pip config list`` for ``python``: the user's pip configuration files as pip itself reads them."""
    try:
        return subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60,
                              check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def pip_error(output: str) -> str:
    """pip's own reason from a failed command's output: its last "ERROR:" line (without the prefix), else its
    last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["pip printed nothing"])[-1][:300]


def detect_machine() -> tuple[str, bool]:
    """(``platform.system()``, whether an NVIDIA driver is installed)."""
    driver = shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia/version").exists()
    return platform.system(), driver


def find_wheel(folder: Path = BACKEND_DIR) -> Path | None:
    wheels = sorted(folder.glob("nfsd_blender-*.whl"))
    return wheels[-1] if wheels else None


def wheel_version(wheel: Path) -> str:
    return wheel.name.split("-")[1]


def suitable_python() -> str:
    """A Python ≥ 3.11 to create the environment with: the one running this add-on (Blender's bundled Python)
    when it is recent enough, else python3.11 / python3.12 / python3 on PATH; '' if none is."""
    if sys.version_info[:2] >= MIN_PYTHON and Path(sys.executable).name.startswith("python"):
        return sys.executable
    for name in ("python3.11", "python3.12", "python3.13", "python3"):
        found = shutil.which(name)
        if found and _version_of(found) >= MIN_PYTHON:
            return found
    return ""


def _version_of(python: str) -> tuple[int, int]:
    try:
        out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True,
                             text=True, timeout=20, check=False).stdout.split()
        return int(out[0]), int(out[1])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return (0, 0)


def installed_version(python: Path) -> str:
    """The backend version installed for ``python`` ('' if none), read from its metadata (nothing imported)."""
    if not python.is_file():
        return ""
    res = subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({DIST_NAME!r}))"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    return res.stdout.strip() if res.returncode == 0 else ""


class InstallFailed(Exception):
    """An install step failed: the panel's sentence, and the tool's own reason in a few words."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


class InstallCancelled(Exception):
    pass


class Installer(threading.Thread):
    """The whole install on one thread. The panel reads ``phase``, ``megabytes`` and ``state`` (plain values);
    ``cancel_event`` stops the running command and removes the half-built environment."""

    def __init__(self, python: str, wheel: Path, target: Path, log_path: Path, data_dir: str,
                 choice: TorchChoice, events, pip_args: list[str] | None = None):
        super().__init__(daemon=True)
        self.events = events
        self.python, self.wheel, self.target, self.log_path = python, wheel, Path(target), Path(log_path)
        self.data_dir, self.choice = data_dir, choice
        self.pip_args = shlex.split(os.environ.get(PIP_ARGS_ENV, "")) if pip_args is None else pip_args
        self.staging = self.target.with_name(self.target.name + ".installing")
        self.cancel_event = threading.Event()
        self.phase, self.megabytes, self.state, self.error, self.version = "starting", 0.0, "running", "", ""

    @property
    def fraction(self) -> float:
        """How far the install is, by the new environment's size against the build's expected size; it stops at
        0.99 until the health check has passed (a size is an estimate, not a promise)."""
        return 1.0 if self.state == "done" else min(0.99, self.megabytes / self.choice.expected_mb)

    @property
    def progress_text(self) -> str:
        """The panel's line: the step, and the size so far against the expected size."""
        return f"{self.phase}… · {self.megabytes:.0f} of about {self.choice.expected_mb:.0f} MB"

    @property
    def python_path(self) -> Path:
        return venv_python(self.target)

    def run(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as log:
            self._log = log
            try:
                self._install()
                self.state = "done"
            except InstallCancelled:
                self.state, self.error = "cancelled", "Install cancelled; the previous backend is unchanged"
            except InstallFailed as error:
                self.state, self.error = "failed", str(error)
            except (OSError, BackendError) as error:
                self.state, self.error = "failed", f"{self.phase} failed: {error}"
            finally:
                if self.state != "done":
                    shutil.rmtree(self.staging, ignore_errors=True)
                log.write(f"== {self.state}: {self.error or self.version}\n")
        self.events.put(InstallEnded(self.state, str(self.python_path), self.version, self.error))

    def _install(self) -> None:
        version = wheel_version(self.wheel)
        self._log.write(f"== install {self.wheel.name} into {self.target} with {self.python} "
                        f"(torch: {self.choice.label}; {self.choice.reason})\n")
        wheel_sha256 = hashlib.sha256(self.wheel.read_bytes()).hexdigest()
        if _marker(self.target).get("wheel_sha256") == wheel_sha256 and installed_version(self.python_path) == version:
            self.phase, self.version = "already installed", version  # a re-run with the same wheel changes nothing
            return
        shutil.rmtree(self.staging, ignore_errors=True)
        python = venv_python(self.staging)
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
        self._run("creating the environment", [self.python, "-m", "venv", str(self.staging)])
        self._install_torch(pip)
        self._run("installing the backend", [*pip, *self.pip_args, str(self.wheel)])
        shutil.rmtree(self.staging / PIP_TMP, ignore_errors=True)
        if installed_version(python) != version:
            raise InstallFailed(f"the backend {version} is not in the new environment; see the log: {self.log_path}")
        if not self._healthy(python):
            raise InstallFailed(f"the new backend did not start ({self.error}); see the log: {self.log_path}")
        self.phase = "switching to the new backend"
        (self.staging / MARKER).write_text(json.dumps({"wheel": self.wheel.name, "wheel_sha256": wheel_sha256}))
        _swap(self.staging, self.target)
        self.version = version

    def _install_torch(self, pip: list[str]) -> None:
        """Torch from the user's index where they name one, else PyTorch's index for this machine, else (when
        PyTorch's index cannot be used) the standard index; the error names both attempts."""
        phase = f"installing torch ({self.choice.label})"
        if not self.choice.index_url or names_an_index(self.pip_args, dict(os.environ), pip_config(pip[0])):
            self._run(phase, [*pip, *self.pip_args, "torch"])
            return
        host = self.choice.index_url.split("/")[2]
        try:
            self._run(phase, [*pip, "--index-url", self.choice.index_url, *self.pip_args, "torch"])
            return
        except InstallFailed as error:
            first = error.reason
        self._log.write(f"== {host} could not be used ({first}); trying the standard package index\n")
        try:
            self._run(f"{phase} from the standard index", [*pip, *self.pip_args, "torch"])
        except InstallFailed as error:
            raise InstallFailed(
                f"{phase} failed: {host}: {first}; the standard index: {error.reason}. Set NFSD_PIP_ARGS to your "
                f"own index or wheel folder (e.g. --index-url URL); the log: {self.log_path}", error.reason,
            ) from error

    def _healthy(self, python: Path) -> bool:
        """Start the backend once from ``python`` and ask its health (the step a Generate would take)."""
        self.phase = "checking the backend"
        backend = LocalBackend()
        try:
            backend.start(str(python), self.data_dir)
            health = Client(backend.url, backend.token).health()
            self._log.write(f"== health: {health}\n")
            return health.get("authenticated", True) is not False
        except BackendError as error:
            self.error = str(error)
            self._log.write(f"== health check failed: {error}\n")
            return False
        finally:
            backend.stop()

    def _run(self, phase: str, cmd: list[str]) -> None:
        """Run one command, its output into the log; the size of the new environment measured as it grows."""
        if self.cancel_event.is_set():
            raise InstallCancelled()
        self.phase = phase
        self._log.write(f"== {phase}: {shlex.join(cmd)}\n")
        self._log.flush()
        started_at = self._log.tell()
        tmp = self.staging / PIP_TMP
        env = dict(os.environ)
        if self.staging.is_dir():  # pip downloads into TMPDIR: there its bytes count while they arrive
            tmp.mkdir(exist_ok=True)
            env["TMPDIR"] = env["TEMP"] = env["TMP"] = str(tmp)
        proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        measured = 0.0
        while proc.poll() is None:
            if self.cancel_event.wait(0.2):
                proc.terminate()
                proc.wait()
                raise InstallCancelled()
            if time.monotonic() - measured > SIZE_EVERY_S:
                self.megabytes, measured = _folder_mb(self.staging), time.monotonic()
        self.megabytes = _folder_mb(self.staging)
        if proc.returncode != 0:
            self._log.flush()
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                log.seek(started_at)
                reason = pip_error(log.read())
            raise InstallFailed(f"{phase} failed: {reason}; the log: {self.log_path}", reason)


def _marker(target: Path) -> dict:
    try:
        return json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def _folder_mb(folder: Path) -> float:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total / 1e6


def _swap(new: Path, target: Path) -> None:
    """Put ``new`` where ``target`` is; the old one is removed only once the new one is in place."""
    previous = target.with_name(target.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        target.rename(previous)
    new.rename(target)
    shutil.rmtree(previous, ignore_errors=True)
