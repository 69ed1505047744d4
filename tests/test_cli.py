"""`python -m webui generate` runs the real engine and prints the written files."""

from __future__ import annotations

from pathlib import Path

from tests.cli import run_cli
from webui.services.infotext import parse_infotext
from webui.services.outputs import read_infotext


def test_generate_writes_pngs_with_infotext(tiny_sd1, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("generate", "--model", str(tiny_sd1.path), "--prompt", "a red circle", "--negative-prompt", "blue",
                  "--sampler", "DPM++ 2M Karras", "--steps", "3", "--cfg", "5", "--seed", "42", "--width", "64",
                  "--height", "64", "--batch-size", "2", "--batch-count", "2", "--device", "cpu", "--out", str(out))
    assert result.returncode == 0, result.stderr
    paths = [Path(line) for line in result.stdout.split()]
    assert len(paths) == 4 and all(p.is_file() and p.parent == out for p in paths)
    seeds = [parse_infotext(read_infotext(p))["Seed"] for p in paths]
    assert seeds == [42, 43, 44, 45]
    info = parse_infotext(read_infotext(paths[0]))
    assert info["Sampler"] == "DPM++ 2M" and info["Schedule type"] == "Karras" and info["Negative prompt"] == "blue"


def test_bad_input_is_one_line_error(tiny_sd1, tmp_path: Path, capsys) -> None:
    """In-process through `webui.cli.main`, the function `python -m webui` runs (the subprocess path is covered by
    the test above): exit code 2 and one line on stderr."""
    from webui.cli import main

    assert main(["generate", "--model", str(tiny_sd1.path), "--prompt", "x", "--width", "65", "--height", "64",
                 "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "error: width: 65 is not a multiple of 8 (use 64 or 72)"
