"""Ray stays optional: nothing imports it unless --ray is given, and --ray without Ray is one clear line."""

from __future__ import annotations

import subprocess
import sys

import pytest
from nfsd_server.cli import main


def test_default_install_never_imports_ray():
    code = (
        "import sys\n"
        "from nfsd_server.cli import build_parser\n"
        "import nfsd_server.api.app, nfsd_server.api.server, nfsd_server.farm.batch_command\n"
        "build_parser('batch'); build_parser('serve')\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(
    ("address", "message"),
    [("127.0.0.1:1", "cannot reach the Ray head at 127.0.0.1:1: Connection refused"),
     ("headnode", "--ray 'headnode' is not HOST:PORT")],
)
def test_batch_with_an_unreachable_ray_head_fails_in_seconds(tmp_path, capsys, address, message):
    pytest.importorskip("ray")
    (tmp_path / "p.txt").write_text("a red ball\n", encoding="utf-8")
    assert main(["batch", str(tmp_path / "p.txt"), "--out", str(tmp_path / "out"), "--ray", address]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err


@pytest.mark.parametrize(
    ("command", "message"),
    [(["batch", "{prompts}", "--out", "{out}", "--ray", "auto"],
      'Ray is not installed; install the farm extra: pip install -e ".[farm]"'),
     (["serve", "--ray", "auto", "--data-dir", "{out}", "--port", "0"], "Ray is not installed; install the farm extra"),
     (["serve", "--ray", "auto", "--ray-workers", "0", "--data-dir", "{out}"],
      "the number of Ray workers must be at least 1, got 0"),
     (["serve", "--ray", "auto", "--device", "cpu", "--data-dir", "{out}"], "--device is for jobs run here"),
     (["batch", "{prompts}", "--out", "{out}", "--ray", "auto", "--device", "cpu"], "--device is for running here")],
)
def test_ray_options_without_ray_or_with_bad_values_are_one_line_exit_2(tmp_path, capsys, monkeypatch, command, message):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the farm extra were not installed
    (tmp_path / "p.txt").write_text("a red ball\n", encoding="utf-8")
    argv = [arg.format(prompts=tmp_path / "p.txt", out=tmp_path / "out") for arg in command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
