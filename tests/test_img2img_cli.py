"""`python -m webui img2img` and `python -m webui outpaint` on a tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli import run_cli
from webui.services.infotext import parse_infotext
from webui.services.outputs import read_infotext


def _inputs(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (60, 70, 3), dtype=np.uint8)  # not a multiple of 8
    Image.fromarray(pixels).save(tmp_path / "init.png")
    mask = Image.new("L", (70, 60), 0)
    mask.paste(255, (40, 20, 70, 60))
    mask.save(tmp_path / "mask.png")
    return tmp_path / "init.png", tmp_path / "mask.png", pixels


def test_img2img_inpaintrun_cli(tiny_sd1, tmp_path: Path) -> None:
    init, mask, pixels = _inputs(tmp_path)
    out = tmp_path / "out"
    result = run_cli("img2img", "--model", str(tiny_sd1.path), "--init", str(init), "--mask", str(mask),
                  "--denoise", "0.9", "--mask-blur", "0", "--inpaint-fill", "latent-noise", "--inpaint-area", "masked",
                  "--padding", "8", "--prompt", "a red circle", "--sampler", "Euler a", "--steps", "3", "--seed", "5",
                  "--batch-size", "2", "--device", "cpu", "--out", str(out))
    assert result.returncode == 0, result.stderr
    paths = [Path(line) for line in result.stdout.split()]
    assert len(paths) == 2 and all(p.parent == out for p in paths)
    image = np.asarray(Image.open(paths[0]).convert("RGB"))
    assert image.shape == pixels.shape
    keep = np.asarray(Image.open(mask)) == 0
    assert np.array_equal(image[keep], pixels[keep])
    info = parse_infotext(read_infotext(paths[0]))
    assert info["Denoising strength"] == 0.9 and info["Masked content"] == "latent noise"
    assert info["Inpaint area"] == "Only masked" and info["Masked area padding"] == 8 and info["Seed"] == 5


def test_outpaint_cli_and_plain_img2img(tiny_sd1, tmp_path: Path) -> None:
    init, _, pixels = _inputs(tmp_path)
    result = run_cli("outpaint", "--model", str(tiny_sd1.path), "--init", str(init), "--left", "16", "--down", "8",
                  "--prompt", "sky", "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    assert Image.open(result.stdout.split()[0]).size == (86, 68)
    result = run_cli("img2img", "--model", str(tiny_sd1.path), "--init", str(init), "--width", "64", "--height", "96",
                  "--resize-mode", "crop-and-resize", "--prompt", "x", "--steps", "2", "--cfg", "3",
                  "--device", "cpu", "--out", str(tmp_path / "p"))
    assert result.returncode == 0, result.stderr
    assert Image.open(result.stdout.split()[0]).size == (64, 96)


def test_bad_inputs_are_one_line_errors(tiny_sd1, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """In-process through `webui.cli.main` (what `python -m webui` runs): exit code 2 and one line on stderr. One
    interpreter instead of three; the subprocess path is covered by the tests above."""
    from webui.cli import main

    init, _, _ = _inputs(tmp_path)
    Image.new("L", (70, 60), 0).save(tmp_path / "empty.png")
    common = ["--model", str(tiny_sd1.path), "--prompt", "x", "--device", "cpu", "--out", str(tmp_path / "o")]

    def error_of(*args: str) -> str:
        assert main(list(args)) == 2
        return capsys.readouterr().err.strip()

    assert error_of("img2img", "--init", str(init), "--mask", str(tmp_path / "empty.png"), *common) == \
        "error: mask: the mask is empty: nothing to inpaint (paint over the area to change)"
    assert error_of("img2img", "--init", str(init), "--max-image-pixels", "1000", *common).startswith(
        "error: init: the image is 70x60 (0.0 MP); the limit is 0.0 MP")
    assert error_of("outpaint", "--init", str(init), "--left", "12", *common) == \
        "error: outpaint_left: 12 is not a multiple of 8 (use 8 or 16)"