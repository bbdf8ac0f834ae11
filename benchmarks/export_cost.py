"""What one export costs, stage by stage: 256³ grid → 20k faces → 1024² texture on a NeRF-like field.

    .venv/bin/python benchmarks/export_cost.py                 # the default export settings
    .venv/bin/python benchmarks/export_cost.py --grid 128 --texture 512 --repeats 3

The field is the export tests' LumpyField (a bumpy ball with a soft shell, colour varying with x and z), so the
figures are the exporter's own cost; a real NeRFField adds its query time to grid sampling and bake (on CPU the
hash-grid NeRF takes seconds per 2^18 points, so a CPU export of a trained field is dominated by those two).
Each stage's time is the median over the repeats; the LAST line is ``export_s=<median total seconds>``.
The goal is ≤ 4 s on 2 CPU cores; on a shared machine other processes inflate the figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from nfsd_server.export import ExportSettings, export_glb

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "export"))
from export_fields import LumpyField  # noqa: E402  (the tests' analytic fields, one copy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=256)
    parser.add_argument("--faces", type=int, default=20_000)
    parser.add_argument("--texture", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    settings = ExportSettings(grid_resolution=args.grid, poly_budget=args.faces, texture_size=args.texture)
    print(f"export {args.grid}³ → {args.faces} faces → {args.texture}² texture, {torch.get_num_threads()} threads")
    runs, totals = [], []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            start = time.perf_counter()
            report = export_glb(LumpyField(), Path(folder) / "lumpy.glb", settings, {"prompt": "a lumpy ball"})
            totals.append(time.perf_counter() - start)
            runs.append(report.timings)
        size_kib = report.path.stat().st_size / 1024
    for stage in runs[0]:
        seconds = statistics.median(run[stage] for run in runs)
        print(f"{stage:>14}: {seconds:6.3f} s")
    print(f"{report.n_faces} faces, {report.n_vertices} vertices, GLB {size_kib:.0f} KiB")
    print(f"export_s={statistics.median(totals):.3f}")


if __name__ == "__main__":
    main()
