"""Training commands (the default model's two stages). Filled in by the training package."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    try:
        from webui.training.cli import register as register_training
    except ImportError:  # the training package is optional at this point of development
        return
    register_training(subparsers)
