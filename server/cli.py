"""`nfsd` command line: generate, export, serve.

Each subcommand lives next to the code it drives and offers ``add_arguments(parser)`` and
``run(args) -> int``; this file only wires them. Bad arguments print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "generate": ("nfsd_server.generate_command", "train a NeRF for a prompt and export a GLB"),
    "export": ("nfsd_server.export.command", "re-export a GLB from a training checkpoint"),
    "serve": ("nfsd_server.api.server", "run the HTTP job server the Blender add-on talks to"),
}


class UsageError(Exception):
    """A bad argument; the message is printed as one line and the process exits with status 2."""


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad argument prints one line (no usage block) before exiting with status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="nfsd", description="Text-to-3D with Noise-Free Score Distillation")
    from nfsd_server import __version__

    parser.add_argument("--version", action="version", version=f"nfsd {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UsageError as error:
        print(f"nfsd {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nfsd {args.command}: interrupted", file=sys.stderr)
        return 130
