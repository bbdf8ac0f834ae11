"""NFSD for Blender: text-to-3D via a Noise-Free Score Distillation server. This module only registers."""

import atexit

from . import operators, panel, preferences, properties
from .backend import BACKEND

_modules = (preferences, properties, operators, panel)


def _stop_backend(*_args):
    BACKEND.stop()


def register():
    for mod in _modules:
        mod.register()
    atexit.register(_stop_backend)


def unregister():
    atexit.unregister(_stop_backend)
    for mod in reversed(_modules):
        mod.unregister()
    BACKEND.stop()
