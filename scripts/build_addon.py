"""Build the NFSD Blender extension zip with Blender's own extension CLI (bundled with the bpy module).

    python scripts/build_addon.py [--output-dir dist]

Stages blender_manifest.toml + the contents of nfsd_blender/ in a temp dir (the zip needs __init__.py next to
the manifest), vendors the job contract (server/nfsd_contract/, standard library only) into it as
``nfsd_blender/nfsd_contract/``, builds the backend (``nfsd_server`` + ``nfsd_contract``) as a wheel into
``backend/`` for the preferences' Install Backend (not a manifest ``wheels`` entry: Blender would install it into
its own Python, and the backend runs in a venv of its own), runs ``blender_ext.py build`` then ``validate`` on
the zip, and prints the zip's path. The zip needs no checkout and no backend install to run.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
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


BACKEND_DIR = "backend"  # the folder in the zip that holds the backend wheel (nfsd_blender/installer.py reads it)


def required_build_tools() -> dict[str, tuple[int, ...]]:
    """pyproject's ``[build-system] requires`` as {name: minimum version}: the build skips pip's isolation (it must
    work offline), so this Python's own setuptools builds the wheel and must be new enough."""
    import tomllib

    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    minimums = {}
    for requirement in requires:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)\s*", requirement)
        if match is None:
            raise SystemExit(f"pyproject's build-system requirement {requirement!r} is not 'name>=version'")
        minimums[match[1]] = tuple(int(part) for part in match[2].split("."))
    return minimums


def check_build_tools(version_of=importlib.metadata.version) -> None:
    """SystemExit naming the command to run where this Python lacks what the backend's build needs."""
    for name, minimum in required_build_tools().items():
        wanted = ".".join(map(str, minimum))
        try:
            found = version_of(name)
        except importlib.metadata.PackageNotFoundError:
            found = None
        numbers = tuple(int(part) for part in re.findall(r"\d+", found or "")[:len(minimum)])
        if found is None or numbers < minimum:
            have = "is not installed" if found is None else f"is {found}"
            raise SystemExit(
                f"building the backend wheel needs {name} >= {wanted} in this Python ({sys.executable}); it {have}. "
                f"Run: {sys.executable} -m pip install '{name}>={wanted}'"
            )


def build_backend_wheel(out_dir: Path) -> Path:
    """``pip wheel`` the backend from a copy of what it is built from (the checkout stays free of build/ and
    egg-info), without its dependencies: Install Backend takes those from the package index."""
    check_build_tools()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "src"
        skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
        shutil.copytree(ROOT / "server", source / "server", ignore=skip)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, source / name)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
             "--wheel-dir", str(out_dir), str(source)],
            check=True,
        )
    wheels = sorted(out_dir.glob("nfsd_blender-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one backend wheel in {out_dir}, found {[w.name for w in wheels]}")
    return wheels[0]


def build(output_dir: Path) -> Path:
    cli = find_cli()
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / "nfsd_blender"
        skip = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(ROOT / "nfsd_blender", stage, ignore=skip)
        shutil.copytree(ROOT / "server" / "nfsd_contract", stage / "nfsd_contract", ignore=skip)
        shutil.copy2(ROOT / "blender_manifest.toml", stage / "blender_manifest.toml")
        build_backend_wheel(stage / BACKEND_DIR)
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
