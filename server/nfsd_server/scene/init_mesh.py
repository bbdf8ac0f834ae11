"""An artist's mesh as the start of a generation: fitted into the NeRF's box (``mesh_volume``), its signed
distance shapes the field's starting density, and a shape loss holds it (shape mode) or the density is the
mesh's, frozen (texture mode). Reading and checking the file is ``mesh_files``'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import trimesh
from torch import Tensor

from nfsd_server.scene.field import FieldConfig, NeRFField
from nfsd_server.scene.mesh_files import load_mesh
from nfsd_server.scene.mesh_volume import Normalization, occupancy_grid, refine_near_surface, signed_distance_grid

SHAPE_RESOLUTION = 96  # occupancy / signed-distance grid over the box (pitch 2/95 ≈ 0.02 for bound 1)
SHAPE_LOSS_POINTS = 4096  # random points per step for the shape loss
SHAPE_LOSS_SOFTNESS = 0.05  # world units: disagreement this close to the surface costs little (Latent-NeRF's σ_S)
# At strength 1, per latent element: the distillation loss sums over the latent's elements, so the shape loss
# scales with them too. Measured with the analytic prior (3×32×32): 1 per element let the prompt carve a cube
# into a ball (volume IoU with the cube 0.52 → 0.78 at 0.3, 0.96 at 3).
SHAPE_LOSS_WEIGHT = 3.0


@dataclass
class ShapeGuide:
    """The init mesh, fitted into the box, and what training does with it.

    Shape mode (``keep_geometry`` False): density starts from the mesh (weighted by ``strength`` against the
    blob) and ``loss`` pulls it toward the mesh's occupancy. Texture mode: density is the mesh's, frozen.
    """

    mesh: trimesh.Trimesh  # as loaded (+Z up, the artist's coordinates)
    normalization: Normalization
    sdf: np.ndarray  # (R, R, R) float32, world units over the box
    strength: float
    keep_geometry: bool

    @classmethod
    def from_mesh(cls, mesh: trimesh.Trimesh, strength: float, keep_geometry: bool, bound: float = 1.0) -> "ShapeGuide":
        normalization = Normalization.of_mesh(mesh)
        box_vertices = normalization.to_box(np.asarray(mesh.vertices))
        faces = np.asarray(mesh.faces)
        occupancy = occupancy_grid(box_vertices, faces, SHAPE_RESOLUTION, bound)
        sdf = refine_near_surface(signed_distance_grid(occupancy, bound), occupancy, box_vertices, faces, bound)
        return cls(mesh, normalization, sdf, strength, keep_geometry)

    def field_config(self, config: FieldConfig) -> FieldConfig:
        return replace(
            config, shape_resolution=self.sdf.shape[0], shape_weight=self.strength, frozen_shape=self.keep_geometry
        )

    def attach(self, field: NeRFField) -> None:
        """Write the signed-distance grid into the field (built with ``field_config``)."""
        field.shape_sdf.copy_(torch.from_numpy(self.sdf))

    def loss(self, field: NeRFField, generator: torch.Generator, latent_elements: int) -> Tensor | None:
        """Latent-NeRF's sketch-shape loss, times ``strength``; None where there is nothing to train.

        Σ (1 − exp(−d² / 2τ²)) · BCE(α(σ), inside) over random points, d the distance to the surface, with
        α = 1 − exp(−σ ln2 / σ_surface) (one half at the surface density), so disagreement right at the
        surface, where the prompt may refine the shape, costs little. ``latent_elements``: of one latent, the
        scale of the distillation loss it is added to.
        """
        if self.keep_geometry or self.strength == 0.0:
            return None
        device = field.shape_sdf.device
        points = ((torch.rand((SHAPE_LOSS_POINTS, 3), generator=generator) * 2 - 1) * field.bound).to(device)
        distance = field.shape_distance(points)
        optical_depth = field.density(points).clamp_min(1e-12) * (math.log(2.0) / field.surface_density)
        # −log α and −log(1 − α) in closed form: no clamp of α, so an emptied or saturated point keeps its gradient.
        cross_entropy = torch.where(distance < 0, -torch.log(-torch.expm1(-optical_depth)), optical_depth)
        softening = 1.0 - torch.exp(-(distance**2) / (2 * SHAPE_LOSS_SOFTNESS**2))
        return SHAPE_LOSS_WEIGHT * latent_elements * self.strength * (softening * cross_entropy).mean()


def shape_guide_for(spec, mesh_path: Path | str, bound: float = 1.0) -> ShapeGuide:
    """The guide for a job (a ``JobSpec``) whose init mesh is the file ``mesh_path``; MeshError for a bad file."""
    return ShapeGuide.from_mesh(load_mesh(mesh_path), spec.shape_strength, spec.keep_geometry, bound)
