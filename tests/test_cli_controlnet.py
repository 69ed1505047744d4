"""`--controlnet` on `python -m webui generate` and `img2img`: a real subprocess, real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli import run_cli
from webui.cli import main
from webui.engine.synthetic import write_synthetic_controlnet
from webui.services.infotext import parse_infotext
from webui.services.outputs import read_infotext


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, tiny_sd1) -> Path:
    root = tmp_path_factory.mktemp("cli-models")
    (root / "ControlNet").mkdir()
    write_synthetic_controlnet(root / "ControlNet" / "cn_a.safetensors", tiny_sd1.model, "cldm-1.1", seed=51)
    write_synthetic_controlnet(root / "ControlNet" / "cn_b.pth", tiny_sd1.model, "diffusers", seed=52)
    return root


def _picture(path: Path, flip: bool = False) -> Path:
    array = np.zeros((64, 64, 3), dtype=np.uint8)
    array[16:48, 8:30] = 255
    image = Image.fromarray(array)
    (image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else image).save(path)
    return path


def _common(tiny_sd1, models_dir: Path, out: Path) -> list[str]:
    return ["--model", str(tiny_sd1.path), "--models-dir", str(models_dir), "--prompt", "a red circle",
            "--sampler", "Euler", "--steps", "3", "--seed", "9", "--width", "64", "--height", "64", "--device", "cpu",
            "--out", str(out)]


def test_generate_with_two_units_records_both_and_changes_the_image(tiny_sd1, models_dir: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    control = _picture(tmp_path / "control.png")
    other = _picture(tmp_path / "other.png", flip=True)
    result = run_cli("generate", *_common(tiny_sd1, models_dir, tmp_path / "with"),
                     "--controlnet", f"model=cn_a,image={control},module=canny,weight=0.8,start=0,end=0.9,mode=prompt",
                     "--controlnet", f"model=cn_b,image={other},mode=controlnet,resize=just-resize")
    assert result.returncode == 0, result.stderr
    assert main(["generate", *_common(tiny_sd1, models_dir, tmp_path / "plain")]) == 0  # in-process: no import cost
    with_path, plain_path = Path(result.stdout.split()[0]), Path(capsys.readouterr().out.split()[0])
    info = parse_infotext(read_infotext(with_path))
    assert info["ControlNet 0"].startswith("Module: canny, Model: cn_a [")
    assert "Weight: 0.8" in info["ControlNet 0"] and "Control Mode: My prompt is more important" in info["ControlNet 0"]
    assert "Model: cn_b [" in info["ControlNet 1"] and "Resize Mode: Just Resize" in info["ControlNet 1"]
    assert "ControlNet 0" not in parse_infotext(read_infotext(plain_path))
    diff = np.abs(np.asarray(Image.open(with_path), dtype=int) - np.asarray(Image.open(plain_path), dtype=int))
    assert diff.max() > 10


def test_img2img_unit_without_image_uses_the_input(tiny_sd1, models_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    """The CLI's entry point in this process (a subprocess costs ~20 s of imports; the one above covers that path)."""
    init = _picture(tmp_path / "init.png")
    code = main(["img2img", *_common(tiny_sd1, models_dir, tmp_path / "out"), "--init", str(init),
                 "--controlnet", "model=cn_a"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    info = parse_infotext(read_infotext(Path(captured.out.split()[0])))
    assert info["ControlNet 0"].startswith("Module: none, Model: cn_a [")


@pytest.mark.parametrize("spec,message", [
    ("model=missing,image={control}", "controlnet unit 0 model: no ControlNet named 'missing'"),
    ("image={control}", "--controlnet #1: give model=NAME"),
    ("model=cn_a,image={control},colour=red", "--controlnet #1: 'colour=red' is not KEY=VALUE"),
    ("model=cn_a", "controlnet unit 0 image: the unit is enabled but has no control image"),
    ("model=cn_a,image={control},end=2", "controlnet unit 0 guidance"),
])
def test_bad_units_are_one_line_errors(tiny_sd1, models_dir: Path, tmp_path: Path, spec: str, message: str,
                                       capsys: pytest.CaptureFixture) -> None:
    """The CLI's own entry point in this process (the subprocess path is covered above; imports cost ~20 s each)."""
    control = _picture(tmp_path / "control.png")
    code = main(["generate", *_common(tiny_sd1, models_dir, tmp_path / "out"),
                 "--controlnet", spec.format(control=control)])
    captured = capsys.readouterr()
    assert code == 2, captured.out
    assert captured.err.startswith(f"error: {message}"), captured.err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
