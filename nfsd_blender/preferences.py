"""Add-on preferences: where the backend runs, and what a job takes from them."""

import os

import bpy
from bpy.props import EnumProperty, StringProperty

from . import backend, contract, installer, jobs, progress, state


def _default_data_dir() -> str:
    return os.path.join(os.path.expanduser("~"), "nfsd_data")


PRIOR_LABELS = {"stable-diffusion": "Stable Diffusion", "analytic": "Analytic (test)"}


DTYPE_LABELS = {
    "auto": ("Auto", "fp16 on an NVIDIA GPU, fp32 elsewhere"),
    "fp16": ("Half (fp16)", "Fastest on NVIDIA GPUs"),
    "bf16": ("bfloat16", "Only on GPUs with native bf16 (RTX 30xx / A100 and newer)"),
    "fp32": ("Full (fp32)", "Slowest; use it if a job fails with NaN"),
}

# The RGB phase's encoder (Stable Diffusion only: the analytic prior has one). Auto's tooltip lists the presets'.
ENCODER_LABELS = {
    "auto": ("Auto", "The preset's choice (" + ", ".join(
        f"{preset}: {encoder.upper()}" for preset, encoder in contract.PRESET_ENCODERS.items()) + ")"),
    "vae": ("VAE", "The model's own encoder: exact, no extra download, slower steps"),
    "taesd": ("TAESD", "Fast, approximate latents; downloads "
              f"{progress.format_size(contract.TAESD_DOWNLOAD_BYTES)} once"),
}


# Called when the preferences point at another backend; session (which imports this module) registers its own.
ON_BACKEND_CHANGED: list = []


def _backend_changed(_self, _context):
    for callback in ON_BACKEND_CHANGED:
        callback()


class NFSD_Preferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    mode: EnumProperty(
        name="Backend",
        items=[("LOCAL", "Local", "Start the server on this machine"), ("REMOTE", "Remote", "Use a running server")],
        default="LOCAL", update=_backend_changed,
    )
    python_path: StringProperty(
        name="Backend Python", subtype="FILE_PATH", default=backend.detect_python(),
        description="Python with the nfsd_server package installed; empty = find it (the nfsd command on PATH, "
        "~/nfsd-backend)", update=_backend_changed,
    )
    data_dir: StringProperty(name="Data Folder", subtype="DIR_PATH", default=_default_data_dir())
    install_dir: StringProperty(
        name="Install Into", subtype="DIR_PATH", default=str(backend.DEFAULT_VENV),
        description="The folder Install Backend makes its Python environment in (the backend is found there)",
    )
    url: StringProperty(name="URL", default=f"http://{contract.DEFAULT_HOST}:{contract.DEFAULT_PORT}",
                        update=_backend_changed)
    token: StringProperty(name="Token", subtype="PASSWORD", update=_backend_changed)
    default_prior: EnumProperty(
        name="Prior",
        items=[(name, PRIOR_LABELS[name], "") for name in contract.PRIORS],
        default=contract.DEFAULT_PRIOR,
    )
    model: StringProperty(name="Model", description="Model id; empty = the server's default")
    dtype: EnumProperty(
        name="Precision",
        items=[(name, DTYPE_LABELS[name][0], DTYPE_LABELS[name][1]) for name in contract.DTYPES],
        default=contract.DEFAULT_DTYPE,
        description="The diffusion model's precision on the backend's GPU",
    )
    encoder: EnumProperty(
        name="RGB Encoder",
        items=[(name, ENCODER_LABELS[name][0], ENCODER_LABELS[name][1]) for name in contract.ENCODERS],
        default=contract.DEFAULT_ENCODER,
        description="What encodes Stable Diffusion renders after the latent phase: exact VAE or fast TAESD",
    )
    status: StringProperty(name="Status")
    install_status: StringProperty(name="Install Status")

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "mode", expand=True)
        if self.mode == "LOCAL":
            layout.prop(self, "python_path")
            if not self.python_path:
                found = backend.detect_python()
                layout.label(text=f"Found: {found}" if found else "No backend found; see the NFSD panel", icon="INFO")
            layout.prop(self, "data_dir")
            draw_install(layout.box(), self)
            row = layout.row()
            row.operator("nfsd.start_backend", icon="PLAY")
            row.operator("nfsd.stop_backend", icon="PAUSE")
        else:
            layout.prop(self, "url")
            layout.prop(self, "token")
        layout.prop(self, "default_prior")
        layout.prop(self, "model")
        layout.prop(self, "dtype")
        layout.prop(self, "encoder")
        row = layout.row()
        row.operator("nfsd.check_health", icon="FILE_REFRESH")
        if self.status:
            layout.label(text=self.status)


def draw_install(layout, prefs):
    """Install Backend: the button, which torch build and why, then phase · MB with Cancel, and the log."""
    running = state.install_running()
    if running is not None:
        if hasattr(layout, "progress"):
            layout.progress(factor=running.fraction, text=running.progress_text)
        else:
            layout.label(text=running.progress_text)
        layout.operator("nfsd.cancel_install", icon="CANCEL")
        return
    choice = installer.torch_choice(*installer.detect_machine())
    layout.prop(prefs, "install_dir")
    layout.operator("nfsd.install_backend", icon="IMPORT")
    layout.label(text=f"torch: {choice.label} build — {choice.reason}", icon="INFO")
    if prefs.install_status:
        layout.label(text=prefs.install_status)
    if os.path.isfile(install_log()):
        layout.operator("nfsd.open_install_log", icon="TEXT")


def install_log(context=None) -> str:
    return os.path.join(output_dir(context), "install.log")


def get_prefs(context=None):
    context = context or bpy.context
    return context.preferences.addons[__package__].preferences


def python_path(prefs) -> str:
    """The backend Python: the preference, else whatever is installed where the README says (found each time)."""
    return bpy.path.abspath(prefs.python_path) if prefs.python_path else backend.detect_python()


def output_dir(context=None) -> str:
    prefs = get_prefs(context)
    return bpy.path.abspath(prefs.data_dir) if prefs.data_dir else _default_data_dir()


def settings_from_prefs(context=None) -> jobs.Settings:
    """The preferences a worker thread needs, read here on the main thread (threads never touch bpy)."""
    p = get_prefs(context)
    return jobs.Settings(p.mode, python_path(p), output_dir(context), p.url, p.token, p.default_prior, p.model)


def register():
    bpy.utils.register_class(NFSD_Preferences)


def unregister():
    bpy.utils.unregister_class(NFSD_Preferences)
