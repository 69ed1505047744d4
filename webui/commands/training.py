"""Training commands (the default model's two stages) live in the training package; this registers them."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from webui.training.cli import register as register_training

    register_training(subparsers)
