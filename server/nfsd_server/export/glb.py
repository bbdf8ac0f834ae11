"""Field → textured GLB: sample, marching cubes, clean, decimate, unwrap, bake (albedo, normal, ORM), dilate,
write (atomically)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field as dataclass_field, fields as dataclass_fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import trimesh
from PIL import Image

from nfsd_contract import DEFAULT_POLY_BUDGET, DEFAULT_TEXTURE_SIZE, FIELD_NAMES, check_value
from nfsd_server.export import grid, normal_map, surface, texture
from nfsd_server.export.grid import field_device, query_chunked
from nfsd_server.export import occlusion as occlusion_map
from nfsd_server.files import write_atomic
from nfsd_server.scene.field import FieldConfig

# Surface density used when neither the settings nor the field give one: the engine NeRF's measured value, read
# from its config so the two cannot drift apart.
DEFAULT_THRESHOLD = FieldConfig.surface_density
# The field learns colour only: say so with explicit factors (glTF's defaults, 1.0, make every asset polished metal).
ROUGHNESS = 0.8
METALLIC = 0.0
TANGENT_ATTRIBUTE = "TANGENT"
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963  # glTF bufferView targets


@dataclass(frozen=True)
class ExportSettings:
    """How to turn a field into a GLB.

    threshold: density of the surface; None → ``field.surface_density`` if the field has one, else
        ``DEFAULT_THRESHOLD`` (the engine NeRF's default surface density).
    height: the object's height in Blender units (its Z extent) after export.
    chunk_size: points per field query; lower it if the field's device runs out of memory.
    """

    grid_resolution: int = 256
    threshold: float | None = None
    poly_budget: int = DEFAULT_POLY_BUDGET
    texture_size: int = DEFAULT_TEXTURE_SIZE
    height: float = 1.0
    chunk_size: int = 2**18

    def __post_init__(self) -> None:
        if not 32 <= self.grid_resolution <= 1024:
            raise ValueError(
                f"grid_resolution {self.grid_resolution} is out of range; expected 32..1024 (256 is a good default)"
            )
        for setting in dataclass_fields(self):  # the job's own fields (poly budget, texture size): the job's limits
            if setting.name in FIELD_NAMES:
                check_value(setting.name, getattr(self, setting.name))
        if not self.height > 0:
            raise ValueError(f"height {self.height} must be positive (Blender units), e.g. 1.0")
        if self.threshold is not None and not self.threshold > 0:
            raise ValueError(f"threshold {self.threshold} must be a positive density, or None for the field's own")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size {self.chunk_size} must be at least 1 point per query, e.g. {2**18}")


@dataclass
class ExportReport:
    """What was written: the GLB's path, its size, and seconds per stage in pipeline order."""

    path: Path
    n_vertices: int
    n_faces: int
    timings: dict[str, float] = dataclass_field(default_factory=dict)


def export_glb(
    field,
    out_path: Path,
    settings: ExportSettings = ExportSettings(),
    metadata: dict[str, Any] | None = None,
    to_world: Callable[[np.ndarray], np.ndarray] | None = None,
) -> ExportReport:
    """Extract the field's surface and write it as a textured GLB at ``out_path``.

    ``field``: ``bound`` (scene in [-bound, bound]³, +Z up), ``density(points (N, 3)) -> (N,) >= 0``,
    ``albedo(points (N, 3)) -> (N, 3) in [0, 1]``, optional ``surface_density``, optional ``roughness`` and
    ``metallic`` (points (N, 3)) -> (N,) in [0, 1] (baked into the ORM's G and B, with factors 1.0).
    The object is converted to glTF's +Y up (Blender shows it +Z up again), scaled to ``settings.height`` and
    placed with its base at z = 0 and its x/y centre at the origin, so the add-on's import at the 3D cursor
    stands it on the cursor. ``metadata`` (JSON-serialisable; other values are written as strings) becomes the
    glTF ``extras`` of the object's node, which Blender's importer turns into the object's custom properties.
    ``to_world`` (V, 3) → (V, 3), +Z up: where the field's box goes instead (an init mesh's inverse
    normalisation, so the result lands where that mesh was; ``height`` is then unused).
    Raises EmptyFieldError (no file written) when no density reaches the threshold.
    """
    out_path = Path(out_path)
    threshold = settings.threshold if settings.threshold is not None else getattr(field, "surface_density", None)
    threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = now - clock
        clock = now

    volume, _ = grid.sample_density(field, settings.grid_resolution, threshold, settings.chunk_size)
    lap("grid_sampling")
    vertices, faces = surface.extract_surface(volume, threshold, field.bound)
    lap("marching_cubes")
    dense_vertices, dense_faces = surface.keep_main_components(vertices, faces)
    lap("cleanup")
    vertices, faces = surface.decimate(dense_vertices, dense_faces, settings.poly_budget)
    faces = surface.orient_outward(vertices, faces)
    lap("decimation")
    # Normals from the welded mesh, so shading stays smooth across the UV seams that split vertices.
    welded_normals = trimesh.Trimesh(vertices, faces, process=False).vertex_normals
    vmapping, uv_faces, uvs = texture.unwrap(vertices, faces, settings.texture_size)
    welded_vertices, vertices, normals = vertices, vertices[vmapping], welded_normals[vmapping]
    tangents = normal_map.vertex_tangents(vertices, normals, uv_faces, uvs)
    lap("uv_unwrap")
    texels = texture.surface_texels(vertices, uv_faces, uvs, settings.texture_size)
    albedo, covered = texture.bake_albedo_at(field, texels, settings.chunk_size)
    lap("bake")
    # Normal and ORM maps at half the side: a 256³ grid carries no detail finer than a voxel, which is still
    # larger than a texel of the half-size map (and occlusion is smooth), at a quarter of the cost.
    half_texels = texture.surface_texels(vertices, uv_faces, uvs, settings.texture_size // 2)
    dense_normals = normal_map.dense_surface_normals(
        half_texels.points, dense_vertices, dense_faces, volume, field.bound, grid.exact_mask(volume, threshold)
    )
    normal_image, half_covered = half_texels.image(
        normal_map.bake_normals(half_texels, uv_faces, normals, tangents, dense_normals)
    )
    lap("normal_map")
    occlusion = occlusion_map.vertex_occlusion(welded_vertices, welded_normals, volume > threshold, field.bound)
    occlusion_texels = half_texels.interpolate(occlusion[vmapping, None], uv_faces)
    orm_image, _ = half_texels.image(orm_values(field, half_texels.points, occlusion_texels, settings.chunk_size))
    lap("occlusion")
    (albedo,) = texture.dilate_all([albedo], covered)
    normal_image, orm_image = texture.dilate_all([normal_image, orm_image], half_covered)
    lap("dilation")
    placed = to_world(vertices) if to_world is not None else _stand_on_origin(vertices, settings.height)
    mesh = textured_mesh(
        placed, normals, uv_faces, uvs, albedo, normal_image, orm_image, tangents, factors=material_factors(field)
    )
    write_glb(mesh, out_path, json_safe(metadata or {}))
    lap("glb_write")
    return ExportReport(path=out_path, n_vertices=len(mesh.vertices), n_faces=len(mesh.faces), timings=timings)


def orm_values(field, points: np.ndarray, occlusion: np.ndarray, chunk_size: int) -> np.ndarray:
    """(K, 3) ORM texels at ``points`` (K, 3): R ``occlusion`` (K, 1); G roughness and B metallic from the field's
    ``roughness`` / ``metallic`` ((N, 3) → (N,) in [0, 1]) where it has them, else 1.0, so the material's factors
    are the values (the NeRF learns colour only; a constant factor says so honestly)."""
    channels = [occlusion]
    for name in ("roughness", "metallic"):
        learned = getattr(field, name, None)
        if learned is None:
            channels.append(np.ones((len(points), 1), np.float32))
        else:
            channels.append(np.clip(query_chunked(learned, points, chunk_size, field_device(field)), 0, 1)[:, None])
    return np.concatenate(channels, axis=1)


def material_factors(field) -> tuple[float, float]:
    """(roughness, metallic) factors: 1.0 for what the field's own maps give, else the honest constants."""
    return (1.0 if hasattr(field, "roughness") else ROUGHNESS, 1.0 if hasattr(field, "metallic") else METALLIC)


def _stand_on_origin(vertices: np.ndarray, height: float) -> np.ndarray:
    """Scaled to ``height``, base at z = 0, centred in x/y."""
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    origin = np.array([(low[0] + high[0]) / 2, (low[1] + high[1]) / 2, low[2]])
    return (vertices - origin) * (height / (high[2] - low[2]))


def textured_mesh(
    placed: np.ndarray,
    normals: np.ndarray,
    faces: np.ndarray,
    uvs: np.ndarray,
    image: np.ndarray,
    normal_map: np.ndarray | None = None,
    orm: np.ndarray | None = None,
    tangents: np.ndarray | None = None,
    factors: tuple[float, float] = (ROUGHNESS, METALLIC),
) -> trimesh.Trimesh:
    """+Z up mesh with its baked maps → glTF frame (+Y up) with a PBR material.

    ``image``: albedo (S, S, 3) in [0, 1]. Optional, (S', S', 3), any side: ``normal_map`` (tangent space,
    OpenGL convention, encoded (n + 1) / 2, baked in ``tangents`` (V, 4)) and ``orm`` (R occlusion, G roughness,
    B metallic: glTF's packing). A mesh baked without a dense surface (texture mode) has neither. ``factors``:
    (roughness, metallic), written explicitly (glTF's defaults, 1.0, would make polished metal).
    """
    # Blender's importer maps glTF (x, y, z) → Blender (x, -z, y); this is its inverse.
    z_up_to_y_up = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
    material = trimesh.visual.material.PBRMaterial(
        name="baked",
        baseColorTexture=_to_image(image),
        normalTexture=None if normal_map is None else _to_image(normal_map),
        # The ORM image goes in once, as occlusion; write_glb points metallicRoughnessTexture at the same texture.
        occlusionTexture=None if orm is None else _to_image(orm),
        roughnessFactor=float(factors[0]),
        metallicFactor=float(factors[1]),
    )
    mesh = trimesh.Trimesh(
        vertices=placed @ z_up_to_y_up.T,
        faces=faces,
        vertex_normals=normals @ z_up_to_y_up.T,
        visual=trimesh.visual.TextureVisuals(uv=uvs, material=material),
        process=False,
    )
    if tangents is not None:
        rotated = np.concatenate([tangents[:, :3] @ z_up_to_y_up.T, tangents[:, 3:]], axis=1)
        mesh.vertex_attributes[TANGENT_ATTRIBUTE] = rotated.astype(np.float32)
    return mesh


def _to_image(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8))


def json_safe(metadata: dict[str, Any]) -> dict[str, Any]:
    """A JSON round trip: glTF extras must be JSON, so paths and other objects are written as strings."""
    return json.loads(json.dumps(metadata, default=str))


def write_glb(mesh: trimesh.Trimesh, out_path: Path, metadata: dict[str, Any]) -> None:
    """Write the GLB to a temporary name in the same folder, then rename: readers never see a partial file."""
    name = out_path.stem or "object"
    scene = trimesh.Scene()
    scene.add_geometry(mesh, geom_name=name, node_name=name)

    # On the node only: Blender makes node extras the object's custom properties, while scene extras would
    # overwrite the user's scene properties at every import.
    def finish_tree(tree: dict) -> None:
        for node in tree.get("nodes", []):
            if "mesh" in node:
                node["extras"] = metadata
        _standard_attributes_and_orm(tree)

    data = trimesh.exchange.gltf.export_glb(scene, include_normals=True, tree_postprocessor=finish_tree)
    write_atomic(out_path, data)


def _standard_attributes_and_orm(tree: dict) -> None:
    """trimesh writes extra vertex attributes as application-specific ``_NAME``; tangents are glTF's own
    ``TANGENT``. An occlusion texture is our packed ORM, so it is also the metallic-roughness texture."""
    for mesh in tree.get("meshes", []):
        for primitive in mesh["primitives"]:
            attributes = primitive["attributes"]
            if "_" + TANGENT_ATTRIBUTE in attributes:
                attributes[TANGENT_ATTRIBUTE] = attributes.pop("_" + TANGENT_ATTRIBUTE)
    # Hints a validator gives otherwise: vertex and index data say which GPU buffer they go to.
    views = tree.get("bufferViews", [])
    for mesh in tree.get("meshes", []):
        for primitive in mesh["primitives"]:
            for accessor in primitive["attributes"].values():
                views[tree["accessors"][accessor]["bufferView"]]["target"] = ARRAY_BUFFER
            if "indices" in primitive:
                views[tree["accessors"][primitive["indices"]]["bufferView"]]["target"] = ELEMENT_ARRAY_BUFFER
    for material in tree.get("materials", []):
        pbr = material.setdefault("pbrMetallicRoughness", {})
        if "occlusionTexture" in material:
            pbr["metallicRoughnessTexture"] = {"index": material["occlusionTexture"]["index"]}
        # Image names say the role, so an importer (Blender's included) names its images usefully.
        for role, reference in (("base_color", pbr.get("baseColorTexture")), ("normal", material.get("normalTexture")),
                                ("orm", material.get("occlusionTexture"))):  # fmt: skip
            if reference is not None:
                tree["images"][tree["textures"][reference["index"]]["source"]]["name"] = role
