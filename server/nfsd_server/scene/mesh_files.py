"""An artist's mesh file, read and checked: its format, size and face count before it is parsed (an upload must
not freeze the server), then its vertices (+Z up: OBJ and PLY as they are, Blender's world; GLB is glTF's +Y
up, turned on load), their magnitude and the faces' area. The API's uploads and the CLI's --init-mesh both come
here; ``mesh_volume`` turns a mesh into occupancy and distance, ``init_mesh`` into what training does with it.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path

import numpy as np
import trimesh

import nfsd_contract as contract

# Beyond this a coordinate is a unit or export mistake (1e9 m is past the Moon), and squares of it overflow.
MAX_COORDINATE = 1e9
# glTF's +Y up → +Z up (Blender's importer: (x, y, z) → (x, −z, y)).
Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


class MeshError(ValueError):
    """The init mesh cannot be used; the message names the problem and the fix."""


def check_mesh_bytes(size: int, name: str) -> None:
    if size == 0:
        raise MeshError(f"init mesh {name!r} is an empty file; export the mesh again as GLB, OBJ or PLY")
    if size > contract.MAX_INIT_MESH_BYTES:
        raise MeshError(
            f"init mesh {name!r} is {size / 2**20:.1f} MiB; the limit is {contract.MAX_INIT_MESH_BYTES // 2**20} MiB "
            "(decimate it first)"
        )


def mesh_format(name: str) -> str:
    """'glb' | 'obj' | 'ply' from the file name, or MeshError."""
    suffix = Path(name).suffix.lower().lstrip(".")
    if suffix not in contract.INIT_MESH_FORMATS:
        raise MeshError(f"init mesh {name!r} must be one of {contract.INIT_MESH_FORMATS} (by its extension)")
    return suffix


def load_mesh(path: Path | str) -> trimesh.Trimesh:
    """Read and check an init mesh file: a single triangle mesh, +Z up, vertices and faces as in the file.

    Raises MeshError naming the problem: unknown format, empty or too large a file, unreadable, no faces,
    non-finite vertices, more than ``MAX_INIT_MESH_FACES`` faces, or every face of zero area.
    """
    path = Path(path)
    file_type = mesh_format(path.name)
    if not path.exists():
        raise MeshError(f"init mesh {str(path)!r} does not exist; pass a GLB, OBJ or PLY file")
    if not path.is_file():  # never opened: a FIFO would block the read forever
        raise MeshError(f"init mesh {str(path)!r} is not a regular file (a folder, pipe or device); pass a GLB, OBJ or PLY file")
    check_mesh_bytes(path.stat().st_size, path.name)
    return parse_mesh(path.read_bytes(), file_type, path.name)


def mesh_sha256(path: Path | str) -> str:
    """The file's content hash: what a checkpoint records of its init mesh, since one file can have many paths."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def parse_mesh(data: bytes, file_type: str, name: str) -> trimesh.Trimesh:
    """``load_mesh`` for bytes already in memory (an upload)."""
    import io

    check_mesh_bytes(len(data), name)
    # Before the parse, which holds the whole mesh several times over: a file declaring too many faces costs
    # nothing, and a GLB's structure gets a message that names its flaw.
    check_face_count(declared_triangles(data, file_type, name), name)
    try:
        loaded = trimesh.load(io.BytesIO(data), file_type=file_type, force="mesh", process=False)
    # trimesh's parsers raise whatever their format's reader hits on malformed bytes (ValueError, KeyError,
    # IndexError, struct.error, …); all of them mean the same thing to the artist.
    except Exception as error:  # noqa: BLE001
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise MeshError(f"init mesh {name!r} is not a readable {file_type.upper()} file: {reason}") from error
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise MeshError(f"init mesh {name!r} has no faces; select an object with polygons (not points or curves)")
    vertices = np.asarray(loaded.vertices, dtype=np.float64)
    faces = np.asarray(loaded.faces, dtype=np.int64)
    check_face_count(len(faces), name)
    if not np.isfinite(vertices).all():
        raise MeshError(f"init mesh {name!r} has non-finite (NaN or infinite) vertex positions; fix or re-export it")
    largest = float(np.abs(vertices).max()) if len(vertices) else 0.0
    if largest > MAX_COORDINATE:
        raise MeshError(
            f"init mesh {name!r} has vertex coordinates as large as {largest:.3g}; the limit is {MAX_COORDINATE:.0e} "
            "(apply the object's scale or fix the export's units)"
        )
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise MeshError(f"init mesh {name!r} has faces that index missing vertices; re-export it")
    if file_type == "glb":
        vertices = vertices @ Y_UP_TO_Z_UP.T
    areas = triangle_areas(vertices, faces)
    if not (areas > 1e-12 * max(float(np.ptp(vertices, axis=0).max()), 1e-30) ** 2).any():
        raise MeshError(f"init mesh {name!r} is degenerate: all {len(faces)} faces have zero area")
    uv = getattr(loaded.visual, "uv", None)
    visual = trimesh.visual.TextureVisuals(uv=np.asarray(uv)) if uv is not None and len(uv) == len(vertices) else None
    return trimesh.Trimesh(vertices, faces, visual=visual, process=False)


def check_face_count(faces: int, name: str) -> None:
    if faces > contract.MAX_INIT_MESH_FACES:
        raise MeshError(
            f"init mesh {name!r} has {faces} faces; the limit is {contract.MAX_INIT_MESH_FACES} (decimate it first)"
        )


_OBJ_FACE_LINE = re.compile(rb"(?m)^f[ \t]+([^\n]*)")
_PLY_FACE_ELEMENT = re.compile(rb"(?m)^element[ \t]+face[ \t]+(\d+)")
_GLB_JSON, _GLB_BIN = 0x4E4F534A, 0x004E4942


def declared_triangles(data: bytes, file_type: str, name: str) -> int:
    """How many triangles the file says it holds, read without parsing the mesh (a lower bound for PLY
    polygons). MeshError for a GLB whose structure cannot be loaded (named: an external buffer, a view past
    the end of the file)."""
    if file_type == "obj":
        # A polygon of n corners is n - 2 triangles, as trimesh fans it.
        return sum(max(len(line.split()) - 2, 0) for line in _OBJ_FACE_LINE.findall(data))
    if file_type == "ply":
        header = data[: data.find(b"end_header")] if b"end_header" in data else b""
        return sum(int(count) for count in _PLY_FACE_ELEMENT.findall(header))
    return glb_triangles(data, name)


def glb_triangles(data: bytes, name: str) -> int:
    """Triangles a GLB's primitives declare (indices or vertices / 3), after checking that every buffer is inside
    the file. MeshError naming the flaw."""

    def damaged(why: str) -> MeshError:
        return MeshError(f"init mesh {name!r} is not a readable GLB file: {why}; export it again as glTF Binary (.glb)")

    if len(data) < 20 or data[:4] != b"glTF":
        raise damaged("it does not start with the GLB header ('glTF')")
    json_length, json_type = struct.unpack_from("<II", data, 12)
    if json_type != _GLB_JSON or 20 + json_length > len(data):
        raise damaged("its first chunk is not a complete JSON chunk")
    try:
        document = json.loads(data[20 : 20 + json_length])
    except (UnicodeDecodeError, ValueError) as error:
        raise damaged(f"its JSON chunk is not valid JSON ({error})") from None
    binary_at = 20 + json_length + (-json_length % 4)
    binary_length = 0
    if binary_at + 8 <= len(data):
        length, chunk_type = struct.unpack_from("<II", data, binary_at)
        if chunk_type == _GLB_BIN:
            binary_length = min(length, len(data) - binary_at - 8)
    try:
        for index, buffer in enumerate(document.get("buffers", [])):
            if "uri" in buffer:
                raise MeshError(
                    f"init mesh {name!r} keeps buffer {index} in another file ({str(buffer['uri'])[:80]!r}); "
                    "export it as one self-contained glTF Binary (.glb)"
                )
        for index, view in enumerate(document.get("bufferViews", [])):
            end = int(view.get("byteOffset", 0)) + int(view["byteLength"])
            if end > binary_length:
                raise damaged(
                    f"bufferView {index} ends at byte {end}, past the end of its {binary_length}-byte binary chunk"
                )
        accessors = document.get("accessors", [])
        triangles = 0
        for mesh in document.get("meshes", []):
            for primitive in mesh.get("primitives", []):
                if primitive.get("mode", 4) != 4:  # points and lines: no faces
                    continue
                counted = primitive.get("indices", primitive.get("attributes", {}).get("POSITION"))
                if counted is not None:
                    triangles += int(accessors[counted]["count"]) // 3
    except MeshError:
        raise
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as error:
        raise damaged(f"its JSON does not follow glTF ({type(error).__name__}: {error})") from None
    return triangles


def triangle_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
