"""Service-layer promises the mutation run (bench/mutation.py) found unguarded: each test names what a user relies on.

Real files and the real services throughout: a tiny real-layout checkpoint, the real generation service and job
objects, the real hash cache on disk.
"""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from webui.context import AppPaths, build_context
from webui.services.controlnet import ControlNetService, ControlUnitRequest
from webui.services.hashing import HashCache
from webui.services.img2img import Img2ImgRequest, Img2ImgRunner
from webui.services.infotext import parse_infotext
from webui.services.requests import GenerationRequest, RequestError
from webui.services.uploads import UploadLimits

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, tiny_sd1):
    root = tmp_path_factory.mktemp("contracts")
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    shutil.copy(tiny_sd1.path, root / "models" / "Stable-diffusion" / "tiny.safetensors")
    return build_context(AppPaths(root / "models", root / "outputs", root / "data", ()), device="cpu")


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_whole_number_fields_accept_the_floats_sliders_send() -> None:
    assert GenerationRequest(steps=20.0).steps == 20 and GenerationRequest(steps="7").steps == 7
    for bad in (20.5, float("nan"), float("inf"), True, "x"):
        with pytest.raises(RequestError, match="^steps: "):
            GenerationRequest(steps=bad)


def test_a_finished_job_reports_done_size_and_previews(app) -> None:
    app.settings.update({"core.show_progress_every_n_steps": 1})  # the Settings tab's "live preview every N steps"
    job = app.jobs.create("alice", "txt2img")
    request = GenerationRequest(prompt="a red circle", steps=4, width=96, height=64, seed=3, sampler_name="Euler")
    result = app.generation.run(job, request)
    assert job.status == "done" and job.finished and job.error is None
    assert parse_infotext(result.infotexts[0])["Size"] == "96x64"
    assert job.preview_version == 3  # steps 1, 2 and 3 of 4 published a preview (the last step is the image)
    assert job.preview_image() is not None


def test_img2img_sizes_follow_the_models_own_multiple(app) -> None:
    """The tiny model's multiple is 16 (VAE factor 8 x one U-Net downsample): 80 px works, 72 px is refused."""
    runner = Img2ImgRunner(app.samplers, app.controlnet.preprocessors)
    image = Image.new("RGB", (80, 64), (120, 40, 200))
    fine = app.generation.run(app.jobs.create("a", "img2img"), Img2ImgRequest(
        init_image=image, prompt="x", steps=2, width=80, height=64, seed=1, sampler_name="Euler"), runner)
    assert fine.images[0].size == (80, 64)
    with pytest.raises(RequestError, match=r"width: 72 is not a multiple of 16 for this model \(use 64 or 80\)"):
        app.generation.run(app.jobs.create("a", "img2img"), Img2ImgRequest(
            init_image=image, prompt="x", steps=2, width=72, height=64, seed=1, sampler_name="Euler"), runner)


def test_a_depth_model_in_txt2img_is_refused_on_the_model_field(app, tmp_path: Path) -> None:
    from webui.engine.synthetic import write_synthetic_checkpoint

    write_synthetic_checkpoint(app.paths.checkpoint_dir / "tiny-depth.safetensors", "sd2", depth=True, seed=8)
    app.models.refresh()
    with pytest.raises(RequestError) as err:
        app.generation.run(app.jobs.create("a", "txt2img"), GenerationRequest(
            prompt="x", steps=2, width=64, height=64, seed=1, sampler_name="Euler", model="tiny-depth"))
    assert err.value.field_name == "model" and "depth model" in str(err.value)


def test_control_units_read_old_field_names_and_name_bad_fields() -> None:
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    old_client = ControlUnitRequest.from_dict({"input_image": png_base64(red)}, 0)
    assert old_client.image.getpixel((0, 0)) == (255, 0, 0)
    both = ControlUnitRequest.from_dict({"image": png_base64(blue), "input_image": png_base64(red)}, 0)
    assert both.image.getpixel((0, 0)) == (0, 0, 255)  # the current field wins
    with pytest.raises(RequestError) as err:
        ControlUnitRequest.from_dict({"image": 12}, 2)
    assert err.value.field_name == "controlnet unit 2 image"


def test_the_controlnet_service_applies_its_upload_limit_and_passes_the_inpaint_mask(tmp_path: Path) -> None:
    from webui.services.controlnet import units_from_controls

    service = ControlNetService(tmp_path / "cn", tmp_path / "pre", None, limits=UploadLimits(max_pixels=100))
    big = png_base64(Image.new("RGB", (20, 20)))
    with pytest.raises(RequestError, match="controlnet unit 0 image"):
        units_from_controls({"args": [{"enabled": True, "model": "x", "image": big}]}, service.limits)

    image = Image.new("RGB", (16, 16), (10, 200, 10))
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (0, 0, 8, 16))
    hint = np.asarray(service.preprocess("inpaint_only", image, mask=mask))
    assert hint.shape == (16, 16, 4)
    assert (hint[:, :8, 3] == 255).all() and (hint[:, 8:, 3] == 0).all()  # the mask travels in the alpha channel


def test_every_kind_of_hash_of_one_file_stays_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sha256 and the LoRA addnet hash of the same file are both kept; a second cache (a restart) reads both."""
    from safetensors.torch import save_file
    import torch

    path = tmp_path / "x.safetensors"
    save_file({"a": torch.ones(4)}, str(path))
    first = HashCache(tmp_path / "hashes.json")
    sha, addnet = first.sha256(path), first.lora_addnet_hash(path)
    second = HashCache(tmp_path / "hashes.json")
    assert second.cached_short_hash(path) == sha[:10]
    calls: list[Path] = []
    import webui.services.hashing as hashing

    original = hashing.addnet_sha256_file
    monkeypatch.setattr(hashing, "addnet_sha256_file", lambda p: calls.append(p) or original(p))  # counts reads only
    assert second.lora_addnet_hash(path) == addnet and calls == []


def test_an_unusable_output_folder_says_what_to_do(tmp_path: Path) -> None:
    from webui.services.outputs import OutputSaveError, OutputStore

    blocker = tmp_path / "outputs"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(OutputSaveError) as err:
        OutputStore(blocker).save_png(Image.new("RGB", (8, 8)), "x", "txt2img", 1)
    assert "--outputs-dir" in str(err.value)
