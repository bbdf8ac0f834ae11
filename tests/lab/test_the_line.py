"""What ships is only what an artist runs: the engine never imports the lab, and its wheel holds none of it."""

import ast
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def lab_imports(folder: Path) -> list[str]:
    """'path:line' of every import of nfsd_lab (plain, from, or importlib by name) under ``folder``."""
    hits = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value] if node.value.startswith("nfsd_lab") else []
            if any(name == "nfsd_lab" or name.startswith("nfsd_lab.") for name in names):
                hits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return hits


def test_the_engine_and_the_add_on_never_name_the_lab():
    assert lab_imports(ROOT / "server") == []
    assert lab_imports(ROOT / "nfsd_blender") == []


def test_the_scan_finds_an_import_of_the_lab(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text("import os\nfrom nfsd_lab.field_judge import judge_field\n")
    (tmp_path / "b.py").write_text("import importlib\nimportlib.import_module('nfsd_lab.experiments')\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert lab_imports(tmp_path) == ["a.py:2", "b.py:2"]


def test_loading_the_products_priors_imports_no_lab_module():
    import subprocess

    code = ("import sys; from nfsd_server.guidance.registry import load_prior; load_prior('analytic', device='cpu');"
            "import nfsd_server.api.app, nfsd_server.cli, nfsd_server.pipeline;"
            "print(sorted(m for m in sys.modules if m.startswith('nfsd_lab')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_the_backend_wheel_holds_the_engine_and_not_the_lab(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from build_addon import build_backend_wheel
    finally:
        sys.path.pop(0)
    names = zipfile.ZipFile(build_backend_wheel(tmp_path)).namelist()
    assert "nfsd_server/train.py" in names and "nfsd_contract/spec.py" in names
    assert not [name for name in names if name.startswith("nfsd_lab")]
    # The bundled micro model ships whole (an artist's offline model), its world and trainer do not.
    bundled = sorted(p.relative_to(ROOT / "server").as_posix()
                     for p in (ROOT / "server" / "nfsd_server" / "models" / "micro").rglob("*") if p.is_file())
    assert bundled and set(bundled) <= set(names)
