"""Build the NFSD Blender extension zip with Blender's own extension CLI (bundled with the bpy module).

    python scripts/build_addon.py [--output-dir dist]

Stages blender_manifest.toml + the contents of nfsd_blender/ in a temp dir (the zip needs __init__.py next to
the manifest), vendors the job contract (server/nfsd_contract/, standard library only) into it as
``nfsd_blender/nfsd_contract/``, runs ``blender_ext.py build`` then ``validate`` on the zip, and prints the
zip's path. The zip needs no checkout and no backend install to run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def find_cli() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("bpy is not installed in this Python; activate the project's .venv")
    base = Path(next(iter(spec.submodule_search_locations)))
    hits = sorted(base.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not hits:
        raise SystemExit(f"blender_ext.py not found under {base}")
    return hits[-1]


def build(output_dir: Path) -> Path:
    cli = find_cli()
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / "nfsd_blender"
        skip = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(ROOT / "nfsd_blender", stage, ignore=skip)
        shutil.copytree(ROOT / "server" / "nfsd_contract", stage / "nfsd_contract", ignore=skip)
        shutil.copy2(ROOT / "blender_manifest.toml", stage / "blender_manifest.toml")
        subprocess.run(
            [sys.executable, str(cli), "build", "--source-dir", str(stage), "--output-dir", str(output_dir)],
            check=True,
        )
    zips = sorted(output_dir.glob("nfsd_blender-*.zip"), key=lambda p: p.stat().st_mtime)
    if not zips:
        raise SystemExit("the build made no zip")
    subprocess.run([sys.executable, str(cli), "validate", str(zips[-1])], check=True)
    return zips[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=ROOT / "dist")
    args = parser.parse_args()
    print(build(args.output_dir))


if __name__ == "__main__":
    main()
