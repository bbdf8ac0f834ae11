"""`nfsd` command line: generate, edit, export, serve, batch.

Each subcommand lives next to the code it drives and offers ``add_arguments(parser)`` and
``run(args) -> int``; this file only wires them. Bad arguments print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from nfsd_server.devices import keep_freed_host_memory
from nfsd_server.errors import UsageError

SUBCOMMANDS = {
    "generate": ("nfsd_server.generate_command", "train a NeRF for a prompt and export a GLB"),
    "edit": ("nfsd_server.edit_command", "change a finished asset toward a new prompt, from its checkpoint"),
    "export": ("nfsd_server.export.command", "re-export a GLB from a training checkpoint"),
    "serve": ("nfsd_server.api.server", "run the HTTP job server the Blender add-on talks to"),
    "batch": ("nfsd_server.farm.batch_command", "generate every prompt of a file × N seeds, on a Ray cluster or here"),
}


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad argument prints one line (no usage block) before exiting with status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only ``command``'s module is imported (so `nfsd generate` never loads the server)."""
    from nfsd_server import __version__

    parser = OneLineErrorParser(prog="nfsd", description="Text-to-3D with Noise-Free Score Distillation")
    parser.add_argument("--version", action="version", version=f"nfsd {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    keep_freed_host_memory()  # every command trains, exports or serves on this process's heap
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command if command in SUBCOMMANDS else None).parse_args(argv)
    try:
        return args.run(args)
    except UsageError as error:
        print(f"nfsd {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nfsd {args.command}: interrupted", file=sys.stderr)
        return 130
