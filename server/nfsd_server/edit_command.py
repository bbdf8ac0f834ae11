"""`nfsd edit CHECKPOINT "PROMPT"`: a finished asset changed toward a new prompt ("a blue ball"), starting from
its trained field instead of from nothing; the source is only read. `nfsd generate --edit-of CHECKPOINT` is the
same job."""

from __future__ import annotations

import argparse
from pathlib import Path

from nfsd_server import generate_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("edit_of", type=Path, metavar="CHECKPOINT",
                        help="the finished run's checkpoint.safetensors (in the --out folder it was made in)")
    generate_command.add_arguments(parser, edit=True)


def run(args: argparse.Namespace) -> int:
    return generate_command.run(args)
