"""`python -m webui generate` runs the real engine and prints the written files."""

from __future__ import annotations

import os
from pathlib import Path

from tests.cli import ROOT, run_cli
from tests.ui_artifacts import artifacts_dir
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


# Written by people and their tools while tests run (a concurrent edit is not the CLI writing); any new file counts.
_EDITED_BY_PEOPLE = {".py", ".md", ".toml", ".txt"}
_NOT_THE_PROJECT = {".git", ".venv", "scratch", "__pycache__", ".pytest_cache", "mutants"}
_SCREENSHOTS = artifacts_dir().resolve()  # git-ignored browser screenshots, written by the other test worker


def _project_files() -> dict[Path, tuple[int, int]]:
    """Every file of the project with (mtime, size), outside version control, the venv, scratch and bytecode."""
    root = ROOT.resolve()
    found = {}
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in _NOT_THE_PROJECT
                         and Path(folder, name) != _SCREENSHOTS]
        for name in files:
            path = Path(folder) / name
            stat = path.lstat()
            found[path.relative_to(root)] = (stat.st_mtime_ns, stat.st_size)
    return found


def test_generating_commands_load_extensions_and_write_nothing_into_the_project(
    tiny_sd1, tmp_path: Path, capsys, monkeypatch
) -> None:
    """`--extensions-dir` extensions change the job as in the app, and the default data folder is the per-user
    cache: the project folder is left as it was (only the outputs and the data folder are written)."""
    from tests.extension_folders import TAGGER, write_extension
    from webui.cli import main

    write_extension(tmp_path / "ext", "tagger", TAGGER)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    before = _project_files()
    common = ["--model", str(tiny_sd1.path), "--negative-prompt", "blue", "--steps", "2", "--width", "64",
              "--height", "64", "--seed", "3", "--device", "cpu", "--extensions-dir", str(tmp_path / "ext")]
    assert main(["generate", "--prompt", "a red circle", *common, "--out", str(tmp_path / "out")]) == 0
    first = Path(capsys.readouterr().out.split()[0])
    data = tmp_path / "data"
    assert main(["img2img", "--init", str(first), "--prompt", "a square", *common, "--data-dir", str(data),
                 "--out", str(tmp_path / "out2")]) == 0
    second = Path(capsys.readouterr().out.split()[0])
    for path in (first, second):
        info = parse_infotext(read_infotext(path))
        assert info["Tagged"] == "yes" and info["Negative prompt"] == "blue, tagged"  # on_save, on_before_generate
    assert (tmp_path / "user-cache" / "latent-studio" / "hashes.json").is_file()  # the default --data-dir
    assert (data / "hashes.json").is_file()  # the given one
    after = _project_files()
    changed = sorted(str(path) for path in set(before) | set(after) if before.get(path) != after.get(path)
                     and not (path in before and path in after and path.suffix in _EDITED_BY_PEOPLE))
    assert changed == []
