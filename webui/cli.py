"""Command-line interface: `python -m webui generate|train-...`. Each command module registers its own subparser."""

from __future__ import annotations

import argparse
import sys
from types import ModuleType
from typing import Sequence

from webui import offline


def _command_modules() -> list[ModuleType]:
    """The command modules: light at import (argparse only); each names its commands in `COMMANDS` and adds their
    options in `register`, where the heavy imports (torch, diffusers, the training code) happen."""
    from webui.commands import evaluation, generate, img2img, training

    return [generate, img2img, training, evaluation]


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`: only the module of the command that `argv` names registers its options; every other
    command is listed by name and help alone. So `--help` (about 18 s of imports when every command registered in
    full) lists the commands without importing torch, and a command loads only what it needs."""
    parser = argparse.ArgumentParser(prog="python -m webui", description="Latent Studio command line")
    subparsers = parser.add_subparsers(dest="command", required=True)
    words = list(sys.argv[1:] if argv is None else argv)
    chosen = words[0] if words else None  # the top level has no options but -h, so the command comes first
    for module in _command_modules():
        commands: dict[str, str] = module.COMMANDS
        if chosen in commands:
            module.register(subparsers)
        else:
            for name, help_line in commands.items():
                subparsers.add_parser(name, help=help_line)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    offline.enforce()
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
