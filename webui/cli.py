"""Command-line interface: `python -m webui generate|train-...`. Each command module registers its own subparser."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from webui import offline

CommandRegistrar = Callable[[argparse._SubParsersAction], None]


def _registrars() -> list[CommandRegistrar]:
    """Imported lazily so `--help` stays fast and a command's heavy imports load only when it runs."""
    from webui.commands import evaluation, generate, img2img, training

    return [generate.register, img2img.register, training.register, evaluation.register]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m webui", description="Latent Studio command line")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for register in _registrars():
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    offline.enforce()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
