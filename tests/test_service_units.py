"""Small service and masking rules that the sampling tests pass through without pinning down (found by mutmut)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from webui.engine.masking import expand_to_ratio, outpaint_canvas
from webui.services.img2img import Img2ImgRequest, Img2ImgRunner
from webui.services.model_manager import ModelError, choose_device, choose_dtype
from webui.services.requests import RequestError


@pytest.mark.parametrize("left,right,up,down", [(16, 0, 0, 0), (0, 16, 0, 0), (0, 0, 16, 0), (0, 0, 0, 16)])
def test_outpaint_mask_reaches_overlap_pixels_into_the_original_on_the_grown_side_only(left, right, up, down) -> None:
    image = Image.new("RGB", (32, 24), (10, 20, 30))
    canvas, mask = outpaint_canvas(image, left, right, up, down, overlap=4)
    keep = np.asarray(mask) == 0
    assert canvas.size == mask.size == (32 + left + right, 24 + up + down)
    rows, cols = np.nonzero(keep)
    # The kept block is the original shrunk by 4 px on the grown side and untouched on the others.
    expected = (up + (4 if up else 0), up + 24 - (4 if down else 0) - 1,
                left + (4 if left else 0), left + 32 - (4 if right else 0) - 1)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == expected
    assert np.asarray(canvas)[rows.min(), cols.min()].tolist() == [10, 20, 30]


def test_crop_box_grown_to_the_ratio_shifts_back_inside_at_either_edge() -> None:
    # A wide box at the top edge grown to a square: it must move down, not poke out above the image.
    assert expand_to_ratio((10, 0, 30, 10), 64, 64, 100, 100) == (10, 0, 30, 20)
    assert expand_to_ratio((10, 90, 30, 100), 64, 64, 100, 100) == (10, 80, 30, 100)
    assert expand_to_ratio((0, 10, 10, 30), 64, 64, 100, 100) == (0, 10, 20, 30)
    assert expand_to_ratio((90, 10, 100, 30), 64, 64, 100, 100) == (80, 10, 100, 30)


def test_fp16_on_the_cpu_and_cuda_without_a_gpu_are_refused_with_advice() -> None:
    cpu = torch.device("cpu")
    with pytest.raises(ModelError, match="--precision fp16 is not supported on the CPU; use fp32 or bf16"):
        choose_dtype(cpu, "fp16")
    with pytest.raises(ModelError, match="--precision fp64: choose one of fp32, fp16, bf16"):
        choose_dtype(cpu, "fp64")
    assert choose_dtype(cpu, "bf16") == torch.bfloat16 and choose_dtype(cpu, None) == torch.float32
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available on this machine; use --device cpu"):
            choose_device("cuda")
    assert choose_device("cpu") == cpu


def _request(**fields) -> Img2ImgRequest:
    return Img2ImgRequest(prompt="x", init_image=Image.new("RGB", (100, 50)), **fields)


def test_runner_options_carry_every_inpaint_field() -> None:
    mask = Image.new("L", (100, 50), 255)
    options = Img2ImgRunner(None).options(_request(
        mask=mask, denoising_strength=0.4, resize_mode=2, mask_blur=7, inpainting_mask_invert=1, inpainting_fill=2,
        inpaint_full_res=True, inpaint_full_res_padding=12,
    ))
    assert (options.denoising_strength, options.resize_mode, options.mask_blur,
            options.invert_mask) == (0.4, 2, 7, True)
    assert (options.inpainting_fill, options.inpaint_full_res, options.inpaint_full_res_padding) == (2, True, 12)
    assert options.mask is mask and options.restore_size == (100, 50)


def test_mask_shape_tolerance_is_relative_to_the_image_ratio() -> None:
    runner = Img2ImgRunner(None)
    runner._validate_mask(_request(mask=Image.new("L", (200, 100), 255)))  # same shape, other size: scaled later
    runner._validate_mask(_request(mask=Image.new("L", (201, 100), 255)))  # within 1% of the ratio
    with pytest.raises(RequestError, match=r"mask: the mask is 210x100 but the image is 100x50"):
        runner._validate_mask(_request(mask=Image.new("L", (210, 100), 255)))


def test_one_given_side_keeps_the_image_aspect() -> None:
    assert (_request(width=160).width, _request(width=160).height) == (160, 80)
    odd = Img2ImgRequest(prompt="x", init_image=Image.new("RGB", (100, 47)), width=304)
    assert odd.height == 144  # 142.9 rounded to the nearest multiple of 8
    assert _request(width=64).height == 64  # never below the smallest side
    assert _request(height=64).width == 128
    with pytest.raises(RequestError, match="^width: 'wide' is not a whole number"):
        _request(width="wide")


def test_a_one_pixel_mask_blur_is_recorded() -> None:
    mask = Image.new("L", (100, 50), 255)
    params = Img2ImgRunner(None).infotext_params(_request(mask=mask, mask_blur=1))
    assert params["Mask blur"] == 1
    assert "Mask blur" not in Img2ImgRunner(None).infotext_params(_request(mask=mask, mask_blur=0))


def test_manifest_defaults_for_missing_fields(tmp_path) -> None:
    from webui.services.extensions import ExtensionError, read_manifest

    (tmp_path / "ext").mkdir()
    (tmp_path / "ext" / "extension.toml").write_text('name = "plain"\n', encoding="utf-8")
    manifest = read_manifest(tmp_path / "ext")
    assert (manifest.version, manifest.description, manifest.entry) == ("0", "", "main.py")
    (tmp_path / "ext" / "extension.toml").write_text('version = "1"\n', encoding="utf-8")
    with pytest.raises(ExtensionError, match=r"^ext: name '' must be lowercase"):
        read_manifest(tmp_path / "ext")
