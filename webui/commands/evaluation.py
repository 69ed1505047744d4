"""`python -m webui eval-adherence | eval-controlnet`: the benchmarks that judge trained models."""

from __future__ import annotations

import argparse

from webui.commands.training import _lazy


def register(subparsers: argparse._SubParsersAction) -> None:
    from webui.evaluation import adherence, controlnet_eval

    parser = subparsers.add_parser("eval-adherence", help="prompt-adherence benchmark (no learned model)")
    adherence.add_arguments(parser)
    parser.set_defaults(run=_lazy("webui.evaluation.adherence"))
    parser = subparsers.add_parser("eval-controlnet", help="ControlNet benchmark: IoU with the control map, on/off")
    controlnet_eval.add_arguments(parser)
    parser.set_defaults(run=_lazy("webui.evaluation.controlnet_eval"))
