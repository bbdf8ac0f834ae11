"""Field → textured GLB for Blender (issue 4): ``export_glb(field, path, ExportSettings(...), metadata)``."""

from nfsd_server.export.glb import ExportReport, ExportSettings, export_glb
from nfsd_server.export.naming import slugify
from nfsd_server.export.surface import EmptyFieldError

__all__ = ["EmptyFieldError", "ExportReport", "ExportSettings", "export_glb", "slugify"]
