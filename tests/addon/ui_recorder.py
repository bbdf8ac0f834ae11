"""A stand-in for ``bpy.types.UILayout`` that records what a draw() shows and checks every name it uses.

Headless bpy has no window to draw into; calling draw() with this layout runs the real code and fails on a
property, operator, operator argument, menu, UI list or icon that does not exist.
"""

from __future__ import annotations

import bpy

_ICONS = set(bpy.types.UILayout.bl_rna.functions["label"].parameters["icon"].enum_items.keys())


class OperatorArgs:
    def __init__(self, idname: str, rna):
        object.__setattr__(self, "_idname", idname)
        object.__setattr__(self, "_props", set(rna.properties.keys()))
        object.__setattr__(self, "values", {})

    def __setattr__(self, name, value):
        assert name in self._props, f"{self._idname} has no property {name!r}"
        self.values[name] = value


class Layout:
    def __init__(self, log: list, path: str = ""):
        self.log, self.path = log, path
        self.enabled = True
        self.active = True
        self.alert = False

    def _child(self, kind):
        child = Layout(self.log, f"{self.path}/{kind}")
        child.enabled = self.enabled
        return child

    def row(self, **_kw):
        return self._child("row")

    def column(self, **_kw):
        return self._child("column")

    def box(self):
        return self._child("box")

    def split(self, **_kw):
        return self._child("split")

    def _icon(self, icon):
        assert icon in _ICONS, f"no icon {icon!r}"

    def label(self, text="", icon="NONE", icon_value=0):
        assert isinstance(text, str)
        self._icon(icon)
        self.log.append(("label", text, icon, self.enabled))

    def prop(self, data, name, **kw):
        assert name in data.bl_rna.properties, f"{data} has no property {name!r}"
        self._icon(kw.get("icon", "NONE"))
        self.log.append(("prop", name, self.enabled))

    def operator(self, idname, text=None, icon="NONE", **_kw):
        module, name = idname.split(".")
        op = getattr(getattr(bpy.ops, module), name)
        rna = op.get_rna_type()  # raises for an operator that is not registered
        self._icon(icon)
        self.log.append(("operator", idname, text, self.enabled))
        return OperatorArgs(idname, rna)

    def menu(self, menu, text="", icon="NONE"):
        assert hasattr(bpy.types, menu), f"no menu {menu}"
        self.log.append(("menu", menu, text, self.enabled))

    def template_list(self, listtype, list_id, data, prop, active_data, active_prop, **_kw):
        assert hasattr(bpy.types, listtype)
        assert prop in data.bl_rna.properties and active_prop in active_data.bl_rna.properties
        self.log.append(("list", listtype))

    def template_icon(self, icon_value=0, scale=1.0):
        self.log.append(("icon", icon_value))

    def progress(self, factor=0.0, text="", **_kw):
        assert 0.0 <= factor <= 1.0, factor
        self.log.append(("progress", text, factor))

    def separator(self, **_kw):
        pass


class _Holder:
    """``self`` for a draw(): our layout, and every other attribute from ``target`` (e.g. the preferences)."""

    def __init__(self, layout, target):
        self.layout, self._target = layout, target

    def __getattr__(self, name):
        return getattr(self._target, name)


def draw(cls, context=None, target=None) -> list:
    """Run ``cls.draw`` (a Panel, Menu or AddonPreferences class) and return what it showed."""
    log: list = []
    cls.draw(_Holder(Layout(log), target), context or bpy.context)
    return log


def draw_list_item(cls, item, data) -> list:
    log: list = []
    cls.draw_item(None, bpy.context, Layout(log), data, item, 0, data, "history_index", 0)
    return log


def texts(log) -> list[str]:
    return [entry[1] if entry[0] in ("label", "progress") else "" for entry in log]
