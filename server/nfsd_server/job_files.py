"""The files a job's names stand for on the machine that runs it, resolved once at the boundary.

A server names an artist's uploaded mesh (``spec.init_mesh``) and an edit's source job (``spec.edit_of``) by id,
the command line by path; the spec keeps the names (its record, its GLB metadata), and ``JobFiles`` carries the
files from the boundary to the trainer and the export as one value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nfsd_contract import JobSpec


@dataclass(frozen=True)
class JobFiles:
    """None where the spec's own value is the path (the CLI's), or where the job has no such file."""

    init_mesh: Path | None = None
    edit_source: Path | None = None  # the source job's checkpoint

    def mesh_file(self, spec: JobSpec) -> Path | None:
        """The init mesh's file, or None for a job without one."""
        return (self.init_mesh or Path(spec.init_mesh)) if spec.init_mesh else None

    def source_file(self, spec: JobSpec) -> Path | None:
        """The edit source's checkpoint, or None for a job that is not an edit."""
        return (self.edit_source or Path(spec.edit_of)) if spec.edit_of else None
