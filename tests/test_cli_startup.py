"""The CLI's start-up: `python -m webui --help` lists every command without importing torch, diffusers or Gradio, a
command's options are the ones its module registers, and a generating command never imports the UI (Gradio).

What is checked is which modules load, not how long it takes (that is measured in bench/startup.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from tests.cli import ROOT, run_cli

HEAVY = ("torch", "diffusers", "gradio", "transformers")


def _loaded_after(code: str) -> list[str]:
    """The heavy modules that `code`, run in a fresh interpreter from the project root, leaves imported."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_help_lists_every_command_without_heavy_imports() -> None:
    assert _loaded_after("from webui.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass") == []
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    from webui.cli import _command_modules

    for module in _command_modules():
        for name, help_line in module.COMMANDS.items():
            assert name in result.stdout
            assert help_line.split()[0] in result.stdout  # argparse may wrap the rest of the line


def test_each_command_table_names_what_its_module_registers() -> None:
    """`COMMANDS` (what --help lists) and `register` (what a command parses) must not drift apart."""
    from webui.cli import _command_modules

    for module in _command_modules():
        parser = argparse.ArgumentParser()
        subparsers = parser.add_subparsers()
        module.register(subparsers)
        registered = {action.dest: action.help for action in subparsers._choices_actions}
        assert registered == module.COMMANDS, module.__name__
        for name in module.COMMANDS:  # and each command parses its own options, e.g. --help, once chosen
            assert any(option.startswith("--") for option in subparsers.choices[name]._option_string_actions)


def test_a_command_registers_only_its_own_options_and_unknown_ones_are_refused(tmp_path: Path) -> None:
    result = run_cli("generate", "--help")
    assert result.returncode == 0 and "--prompt" in result.stdout and "--rank" not in result.stdout, result.stderr
    result = run_cli("generate", "--rank", "4", "--prompt", "x", "--out", str(tmp_path))
    assert result.returncode == 2 and "unrecognized arguments: --rank 4" in result.stderr


def test_generating_from_the_cli_never_imports_the_ui(tiny_sd1, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = (f"from webui.cli import main\nassert main(['generate', '--model', {str(tiny_sd1.path)!r}, '--prompt', "
            f"'a red circle', '--steps', '2', '--width', '64', '--height', '64', '--device', 'cpu', '--out', "
            f"{str(out)!r}, '--data-dir', {str(tmp_path / 'data')!r}]) == 0")
    assert _loaded_after(code) == ["diffusers", "torch", "transformers"]  # the engine, and no Gradio
    assert len(list(out.glob("*.png"))) == 1


def test_the_app_without_worker_flags_never_imports_ray(tmp_path: Path) -> None:
    """Ray is optional (requirements-ray.txt): the app's services and UI are built without it."""
    code = (f"from webui.context import AppPaths, build_context\n"
            f"import webui.launcher, webui.ui.app, webui.api.routes\n"
            f"from pathlib import Path\nroot = Path({str(tmp_path)!r})\n"
            f"context = build_context(AppPaths(root / 'models', root / 'outputs', root / 'data'), device='cpu')\n"
            f"import sys\nassert 'ray' not in sys.modules, 'ray was imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
