"""Field → textured GLB for Blender: ``export_glb(field, path, ExportSettings(...), metadata)``."""

from nfsd_server.export.glb import ExportReport, ExportSettings, export_glb
from nfsd_server.export.grid import EmptyFieldError
from nfsd_server.export.naming import slugify

__all__ = ["EmptyFieldError", "ExportReport", "ExportSettings", "export_glb", "slugify"]
