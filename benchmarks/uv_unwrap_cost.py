"""How long the exporter's UV unwrap (xatlas, with its chart options) takes on dense meshes.

    .venv/bin/python benchmarks/uv_unwrap_cost.py                      # 20k, 200k and 1M faces
    .venv/bin/python benchmarks/uv_unwrap_cost.py --faces 200000 --texture 2048

The mesh is a bumpy icosphere (like the export tests' LumpyField) decimated to each face count with the exporter's
own decimation. The exporter unwraps after decimating to the Poly Budget (at most 500k faces), so these are the
figures a budget pays; the last line is ``unwrap_s_<faces>=<seconds>`` for each count.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import trimesh

from nfsd_server.export import surface, texture


def bumpy_sphere(subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
    sphere = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.6)
    x, y, z = sphere.vertices.T
    bumps = 1.0 + 0.1 * np.sin(7 * x) * np.sin(6 * y) * np.sin(5 * z + 1.0)
    return sphere.vertices * bumps[:, None], np.asarray(sphere.faces, dtype=np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, nargs="+", default=[20_000, 200_000, 1_000_000])
    parser.add_argument("--texture", type=int, default=1024)
    args = parser.parse_args()
    vertices, faces = bumpy_sphere(8)  # 1.31M faces
    results = []
    for count in args.faces:
        low_vertices, low_faces = surface.decimate(vertices, faces, count)
        start = time.perf_counter()
        vmapping, _, _ = texture.unwrap(low_vertices, low_faces, args.texture)
        seconds = time.perf_counter() - start
        results.append(f"unwrap_s_{count}={seconds:.2f}")
        print(f"{len(low_faces):>8} faces: unwrap {seconds:6.2f} s, {len(vmapping)} UV vertices", flush=True)
    print(" ".join(results))


if __name__ == "__main__":
    main()
