"""NFSD for Blender: text-to-3D via a Noise-Free Score Distillation server. This module only registers.

The bpy modules are imported inside ``register`` so that ``nfsd_blender.contract`` (and the bpy-free client)
import without Blender: the backend shares the contract module with the add-on.
"""

import atexit
import importlib

_MODULE_NAMES = ("preferences", "properties", "session", "reopen", "operators", "panel", "selection", "edit")


def _modules():
    return [importlib.import_module(f".{name}", __name__) for name in _MODULE_NAMES]


def _stop_backend(*_args):
    from .backend import BACKEND

    BACKEND.stop()


def register():
    for mod in _modules():
        mod.register()
    atexit.register(_stop_backend)


def unregister():
    atexit.unregister(_stop_backend)
    for mod in reversed(_modules()):
        mod.unregister()
    _stop_backend()
