"""`python -m webui eval-adherence | eval-controlnet`: the benchmarks that judge trained models."""

from __future__ import annotations

import argparse

from webui.commands.training import _lazy


COMMANDS = {
    "eval-adherence": "prompt-adherence benchmark (no learned model)",
    "eval-controlnet": "ControlNet benchmark: IoU with the control map, on/off",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    from webui.evaluation import adherence, controlnet_eval

    parser = subparsers.add_parser("eval-adherence", help=COMMANDS["eval-adherence"])
    adherence.add_arguments(parser)
    parser.set_defaults(run=_lazy("webui.evaluation.adherence"))
    parser = subparsers.add_parser("eval-controlnet", help=COMMANDS["eval-controlnet"])
    controlnet_eval.add_arguments(parser)
    parser.set_defaults(run=_lazy("webui.evaluation.controlnet_eval"))
