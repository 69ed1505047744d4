"""ControlNet preprocessors through the real controlnet-aux, checked against oracles computed here.

The weight-free maps are compared with cv2/numpy rules written in this file (sd-webui-controlnet's resize-and-pad, then
the operation). Weight-needing preprocessors are checked for their missing-file messages (no network touched), and a
few run from local files with seeded random weights in the real key layout, compared with controlnet-aux's own
`from_pretrained` pipeline. A weight file carrying pickled code must be refused without running it.
"""

from __future__ import annotations

import pickle
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from webui.engine.preprocessors import (
    ControlResizeMode,
    NetworkSource,
    PreprocessorError,
    PreprocessorInput,
    PreprocessorRegistry,
    PreprocessorRunner,
    PreprocessorSpec,
    PreprocessorUnsupported,
    PreprocessorWeightsInvalid,
    PreprocessorWeightsMissing,
    ThresholdParam,
    WeightFile,
    controlnet_numpy_seed,
    default_preprocessors,
    inpaint_control_hint,
    parse_resize_mode,
    pixel_perfect_resolution,
)

WIDTH, HEIGHT = 96, 64  # non-square on purpose


def picture(width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> Image.Image:
    """A gradient with a few filled shapes: it has real edges for Canny and varied colours for the rest."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 255 // max(width - 1, 1), ys * 255 // max(height - 1, 1),
                     np.full_like(xs, 90)], axis=2).astype(np.uint8)
    for _ in range(4 if min(width, height) > 16 else 0):
        x0, y0 = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
        x1, y1 = x0 + int(rng.integers(6, width // 2)), y0 + int(rng.integers(6, height // 2))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.rectangle(base, (x0, y0), (x1, y1), color, thickness=-1)
    cv2.circle(base, (width // 2, height // 2), min(width, height) // 4, (250, 250, 250), thickness=-1)
    return Image.fromarray(base)


def sdwebui_resize(array: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """sd-webui-controlnet's resize_image_with_pad, written out here: short side to `resolution` (cubic up, area
    down), then edge padding up to multiples of 64. Returns (resized, padded)."""
    h, w = array.shape[:2]
    k = resolution / min(h, w)
    nh, nw = int(np.round(h * k)), int(np.round(w * k))
    resized = cv2.resize(array, (nw, nh), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    padded = np.pad(resized, ((0, -nh % 64), (0, -nw % 64), (0, 0)), mode="edge")
    return resized, padded


@pytest.fixture(scope="module")
def registry() -> PreprocessorRegistry:
    return default_preprocessors()


@pytest.fixture
def runner(registry: PreprocessorRegistry, tmp_path: Path) -> PreprocessorRunner:
    return PreprocessorRunner(registry, tmp_path / "ControlNetPreprocessor", device="cpu")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Hub offline, and any socket connect or DNS lookup is recorded and refused; the test fails if one happened."""
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network access attempted during a preprocessor test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield attempts
    assert attempts == [], f"something tried to reach the network: {attempts}"


# ------------------------------------------------------------------------------------------- weight-free preprocessors


@pytest.mark.parametrize(("resolution", "low", "high"), [(64, 100, 200), (100, 50, 150), (128, 100, 200)])
def test_canny_equals_cv2_canny_on_the_resized_image(runner: PreprocessorRunner, resolution: int, low: int,
                                                     high: int) -> None:
    image = picture()
    resized, padded = sdwebui_resize(np.asarray(image), resolution)
    expected = cv2.Canny(padded, low, high)[:resized.shape[0], :resized.shape[1]]
    out = np.asarray(runner.run("canny", image, resolution, threshold_a=low, threshold_b=high))
    assert out.shape == resized.shape
    assert expected.any(), "the test picture should have edges"
    np.testing.assert_array_equal(out, np.repeat(expected[:, :, None], 3, axis=2))


def test_canny_defaults_are_100_and_200(runner: PreprocessorRunner) -> None:
    image = picture(seed=3)
    default = np.asarray(runner.run("canny", image, 64))
    sentinel = np.asarray(runner.run("canny", image, 64, threshold_a=-1, threshold_b=-1))
    explicit = np.asarray(runner.run("canny", image, 64, threshold_a=100, threshold_b=200))
    np.testing.assert_array_equal(default, explicit)
    np.testing.assert_array_equal(sentinel, explicit)


def test_invert_is_255_minus_image_at_input_size(runner: PreprocessorRunner) -> None:
    image = picture(seed=1)
    out = runner.run("invert", image, 512)
    assert out.size == image.size and out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), 255 - np.asarray(image))


@pytest.mark.parametrize("level", [None, 50, 200])
def test_threshold_is_white_where_every_channel_exceeds_it(runner: PreprocessorRunner, level: int | None) -> None:
    image = picture(seed=2)
    resized, _ = sdwebui_resize(np.asarray(image), 100)
    cut = 127 if level is None else level
    white = (resized[:, :, 0] > cut) & (resized[:, :, 1] > cut) & (resized[:, :, 2] > cut)
    expected = np.where(white[:, :, None], 255, 0).astype(np.uint8).repeat(3, axis=2)
    out = np.asarray(runner.run("threshold", image, 100, threshold_a=level))
    assert white.any() and not white.all()
    np.testing.assert_array_equal(out, expected)


def test_none_returns_the_input_unchanged(runner: PreprocessorRunner) -> None:
    image = picture(seed=4)
    out = runner.run("none", image, 256)
    assert out.size == image.size
    np.testing.assert_array_equal(np.asarray(out), np.asarray(image))


@pytest.mark.parametrize("sigma", [None, 2.5])
def test_blur_gaussian_equals_cv2_gaussian_blur(runner: PreprocessorRunner, sigma: float | None) -> None:
    image = picture(seed=5)
    resized, _ = sdwebui_resize(np.asarray(image), 80)
    expected = cv2.GaussianBlur(resized, (0, 0), 9.0 if sigma is None else sigma)
    np.testing.assert_array_equal(np.asarray(runner.run("blur_gaussian", image, 80, threshold_a=sigma)), expected)


def test_tile_resample_downsamples_by_the_rate(runner: PreprocessorRunner) -> None:
    image = picture(seed=6)
    np.testing.assert_array_equal(np.asarray(runner.run("tile_resample", image, 512)), np.asarray(image))
    np.testing.assert_array_equal(np.asarray(runner.run("tile_resample", image, 512, threshold_a=1.05)),
                                  np.asarray(image))
    out = runner.run("tile_resample", image, 512, threshold_a=2.0)
    assert out.size == (WIDTH // 2, HEIGHT // 2)
    expected = cv2.resize(np.asarray(image), (WIDTH // 2, HEIGHT // 2), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(np.asarray(out), expected)
    assert runner.run("tile_resample", image, 512, threshold_a=3.0).size == (32, 21)  # int(96/3), int(64/3)


def quadrants(width: int, height: int) -> tuple[Image.Image, list[tuple[int, int, int]]]:
    palette = [(230, 20, 20), (20, 200, 40), (30, 40, 220), (240, 230, 30)]
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[: height // 2, : width // 2] = palette[0]
    array[: height // 2, width // 2:] = palette[1]
    array[height // 2:, : width // 2] = palette[2]
    array[height // 2:, width // 2:] = palette[3]
    return Image.fromarray(array), palette


def test_shuffle_is_deterministic_per_seed_and_permutation_like(runner: PreprocessorRunner) -> None:
    image, palette = quadrants(128, 64)
    first = np.asarray(runner.run("shuffle", image, 64, seed=1234))
    again = np.asarray(runner.run("shuffle", image, 64, seed=1234))
    other = np.asarray(runner.run("shuffle", image, 64, seed=99))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not np.array_equal(first, np.asarray(image))
    # The content is moved around, not invented: nearly every pixel is one of the input colours.
    for out in (first, other):
        flat = out.reshape(-1, 3)
        exact = np.zeros(len(flat), dtype=bool)
        for colour in palette:
            hit = np.all(flat == colour, axis=1)
            exact |= hit
        assert exact.mean() > 0.85
        assert abs(out.reshape(-1, 3).mean() - np.asarray(image).reshape(-1, 3).mean()) < 40


def test_shuffle_matches_controlnet_aux_after_np_random_seed(runner: PreprocessorRunner) -> None:
    """sd-webui-controlnet seeds numpy's global RNG and calls ContentShuffleDetector; ours uses a private RandomState
    and must give the same map. 128x64 at processor_res 64 keeps controlnet-aux's own resizes exact no-ops."""
    from controlnet_aux import ContentShuffleDetector

    image = picture(128, 64, seed=7)
    saved = np.random.get_state()
    try:
        np.random.seed(2024)
        expected = ContentShuffleDetector()(np.asarray(image), detect_resolution=64, image_resolution=64,
                                            output_type="np")
    finally:
        np.random.set_state(saved)
    np.testing.assert_array_equal(np.asarray(runner.run("shuffle", image, 64, seed=2024)), expected)


@pytest.mark.parametrize("name", ["inpaint", "inpaint_only", "inpaint_global_harmonious"])
def test_inpaint_marks_masked_pixels(runner: PreprocessorRunner, name: str) -> None:
    image = picture(seed=8)
    mask_array = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask_array[10:30, 40:80] = 255
    mask_array[50, 5] = 100  # below 128: not masked (sd-webui-controlnet binarises at 127)
    out = runner.run(name, image, 512, mask=Image.fromarray(mask_array))
    assert out.mode == "RGBA" and out.size == image.size
    rgba = np.asarray(out)
    np.testing.assert_array_equal(rgba[:, :, :3], np.asarray(image))
    np.testing.assert_array_equal(rgba[:, :, 3], np.where(mask_array > 127, 255, 0))
    hint = inpaint_control_hint(out)
    masked = mask_array > 127
    assert np.all(hint[masked] == -1.0)
    np.testing.assert_allclose(hint[~masked], np.asarray(image)[~masked] / 255.0, atol=1e-6)

    unmasked = runner.run(name, image, 512)
    assert np.all(np.asarray(unmasked)[:, :, 3] == 0)
    with pytest.raises(PreprocessorError, match="same size"):
        runner.run(name, image, 512, mask=Image.new("L", (WIDTH + 1, HEIGHT)))


# ------------------------------------------------------------------------------------------------ sizes and resizing


@pytest.mark.parametrize("name", ["canny", "threshold", "blur_gaussian", "shuffle", "lineart_standard"])
def test_map_short_side_is_processor_res_and_aspect_is_kept(runner: PreprocessorRunner, name: str) -> None:
    image = picture()
    for resolution in (64, 100, 150, 256):
        out = runner.run(name, image, resolution)
        # 96x64 -> short side 64 scales by k = resolution / 64; the long side rounds to nearest.
        assert out.size == (round(WIDTH * resolution / HEIGHT), resolution), (name, resolution, out.size)
        assert out.mode == "RGB"
    tall = picture(50, 120, seed=9)
    assert runner.run(name, tall, 100).size == (100, 240)


@pytest.mark.parametrize("name", ["none", "invert", "tile_resample", "inpaint", "inpaint_only"])
def test_resolution_free_preprocessors_keep_the_input_size(runner: PreprocessorRunner, name: str) -> None:
    for resolution in (64, 700):
        assert runner.run(name, picture(), resolution).size == (WIDTH, HEIGHT)


@pytest.mark.parametrize(("image_size", "target_size", "expected"), [
    # 512x768 (w x h) image to a 512x512 target: k_h = 512/768, k_w = 1, short side 512.
    ((512, 768), (512, 512), {0: 512, 1: 512, 2: 341}),  # max: 1*512; min: (2/3)*512 = 341.33
    # 1024x512 to 768x512: k_h = 1, k_w = 0.75, short side 512.
    ((1024, 512), (768, 512), {0: 512, 1: 512, 2: 384}),
    # 300x200 to 512x768: k_h = 3.84, k_w = 1.70667, short side 200.
    ((300, 200), (512, 768), {0: 768, 1: 768, 2: 341}),  # 3.84*200 = 768; 1.70667*200 = 341.33
    # Same aspect: every mode gives the target's short side.
    ((256, 384), (512, 768), {0: 512, 1: 512, 2: 512}),
])
def test_pixel_perfect_resolution(image_size: tuple[int, int], target_size: tuple[int, int],
                                  expected: dict[int, int]) -> None:
    names = {0: "Just Resize", 1: "Crop and Resize", 2: "Resize and Fill"}
    for code, value in expected.items():
        assert pixel_perfect_resolution(image_size, target_size, code) == value
        assert pixel_perfect_resolution(image_size, target_size, names[code]) == value
        assert pixel_perfect_resolution(image_size, target_size, ControlResizeMode(names[code])) == value


def test_parse_resize_mode() -> None:
    assert parse_resize_mode("Just Resize") is ControlResizeMode.JUST_RESIZE
    assert parse_resize_mode("crop and resize") is ControlResizeMode.CROP_AND_RESIZE
    assert parse_resize_mode(2) is ControlResizeMode.RESIZE_AND_FILL
    assert parse_resize_mode("1") is ControlResizeMode.CROP_AND_RESIZE
    assert parse_resize_mode("Inner Fit (Scale to Fit)") is ControlResizeMode.CROP_AND_RESIZE
    assert parse_resize_mode("Envelope (Outer Fit)") is ControlResizeMode.RESIZE_AND_FILL
    assert [m.int_value for m in ControlResizeMode] == [0, 1, 2]
    for bad in (3, -1, True, "Stretch", None, 1.0):
        with pytest.raises(PreprocessorError, match="resize_mode"):
            parse_resize_mode(bad)  # type: ignore[arg-type]
    with pytest.raises(PreprocessorError):
        pixel_perfect_resolution((0, 10), (512, 512), 0)


def test_controlnet_numpy_seed() -> None:
    assert controlnet_numpy_seed(5, 7) == 12
    assert controlnet_numpy_seed(-3, 7) == 7
    assert controlnet_numpy_seed(2**32 - 1, 2) == 1


# --------------------------------------------------------------------------------------------------------- bad input


def test_unknown_and_unsupported_names(runner: PreprocessorRunner, registry: PreprocessorRegistry) -> None:
    with pytest.raises(PreprocessorError, match="unknown preprocessor 'cany'") as err:
        runner.run("cany", picture(), 512)
    for name in ("none", "canny", "depth_midas", "softedge_hed", "lineart_realistic", "openpose_full"):
        assert name in str(err.value)
    assert registry.unsupported() == {}  # every name sd-webui-controlnet's seg units send can run (test_segmentation)
    with pytest.raises(PreprocessorUnsupported, match="no offline build"):
        reg = PreprocessorRegistry()
        reg.mark_unsupported("seg_anime_face", "no offline build")
        PreprocessorRunner(reg, runner.weights_dir).run("seg_anime_face", picture(), 512)
    # sd-webui-controlnet's internal names and display labels resolve to the same preprocessor.
    assert registry.get("depth").name == "depth_midas"
    assert registry.get("hed").name == "softedge_hed"
    assert registry.get("lineart").name == "lineart_realistic"
    assert registry.get("inpaint_global_harmonious").name == "inpaint"
    assert registry.get("invert (from white bg & black line)").name == "invert"


@pytest.mark.parametrize("resolution", [63, 2049, 0, -2, 512.5, "512", True, float("nan")])
def test_resolution_out_of_range(runner: PreprocessorRunner, resolution: object) -> None:
    with pytest.raises(PreprocessorError, match="processor_res"):
        runner.run("canny", picture(), resolution)  # type: ignore[arg-type]


def test_resolution_bounds_and_default(runner: PreprocessorRunner) -> None:
    assert runner.run("threshold", picture(), 64).size[1] == 64
    assert runner.run("threshold", picture(), -1).size[1] == 512  # -1 = the default, as in a unit
    assert runner.run("threshold", picture(8, 8), 2048).size == (2048, 2048)


@pytest.mark.parametrize(("name", "field", "value"), [
    ("canny", "threshold_a", 0), ("canny", "threshold_b", 256), ("canny", "threshold_a", float("inf")),
    ("threshold", "threshold_a", 255.5), ("threshold", "threshold_a", -5), ("blur_gaussian", "threshold_a", 0.0),
    ("tile_resample", "threshold_a", 8.5), ("mlsd", "threshold_b", 21.0), ("canny", "threshold_a", "100"),
])
def test_threshold_out_of_range(runner: PreprocessorRunner, name: str, field: str, value: object) -> None:
    with pytest.raises(PreprocessorError, match=field):
        runner.run(name, picture(), 64, **{field: value})  # type: ignore[arg-type]


def test_other_bad_arguments(runner: PreprocessorRunner) -> None:
    with pytest.raises(PreprocessorError, match="seed"):
        runner.run("shuffle", picture(), 64, seed=-1)
    with pytest.raises(PreprocessorError, match="seed"):
        runner.run("shuffle", picture(), 64, seed=2**32)
    with pytest.raises(PreprocessorError, match="PIL image"):
        runner.run("canny", np.zeros((8, 8, 3), dtype=np.uint8), 64)  # type: ignore[arg-type]
    with pytest.raises(PreprocessorError, match="lower processor_res"):
        runner.run("canny", picture(4000, 2), 2048)
    # Sliders a preprocessor does not have are ignored (clients send threshold_a/b for every unit).
    assert runner.run("invert", picture(), 64, threshold_a=1e9, threshold_b=-7).size == (WIDTH, HEIGHT)


def test_registry_rejects_duplicate_names() -> None:
    reg = PreprocessorRegistry()
    reg.register(PreprocessorSpec("a", "a", aliases=("x",)), lambda inp, nets: inp.image)
    with pytest.raises(ValueError):
        reg.register(PreprocessorSpec("b", "x"), lambda inp, nets: inp.image)
    with pytest.raises(ValueError):
        reg.mark_unsupported("a", "no")
    assert reg.names() == ("a",)


# ----------------------------------------------------------------------------------------------------- weight files


def test_missing_weights_name_the_exact_file_and_folder(registry: PreprocessorRegistry, tmp_path: Path,
                                                        no_network: list[object]) -> None:
    folder = tmp_path / "models" / "ControlNetPreprocessor"
    folder.mkdir(parents=True)
    runner = PreprocessorRunner(registry, folder)
    needing = [spec for spec in registry.specs() if spec.needs_weights]
    assert {s.name for s in needing} >= {
        "openpose", "openpose_hand", "openpose_face", "openpose_full", "depth_midas", "depth_zoe", "softedge_hed",
        "softedge_pidinet", "lineart_realistic", "lineart_coarse", "lineart_anime", "normal_bae", "mlsd",
        "seg_ofade20k", "seg_ofcoco", "seg_ufade20k"}
    expected_files = {
        "openpose": ["body_pose_model.pth"], "openpose_full": ["body_pose_model.pth", "hand_pose_model.pth",
                                                               "facenet.pth"],
        "depth_midas": ["dpt_hybrid-midas-501f0c75.pt"], "depth_zoe": ["ZoeD_M12_N.pt"],
        "softedge_hed": ["ControlNetHED.pth"], "softedge_pidinet": ["table5_pidinet.pth"],
        "lineart_realistic": ["sk_model.pth"], "lineart_coarse": ["sk_model2.pth"], "lineart_anime": ["netG.pth"],
        "normal_bae": ["scannet.pt"], "mlsd": ["mlsd_large_512_fp32.pth"],
        "seg_ofade20k": ["oneformer_ade20k_swin_large/config.json", "oneformer_ade20k_swin_large/model.safetensors "
                         "(or oneformer_ade20k_swin_large/pytorch_model.bin)", "shi-labs/oneformer_ade20k_swin_large"],
        "seg_ofcoco": ["oneformer_coco_swin_large/config.json", "shi-labs/oneformer_coco_swin_large"],
        "seg_ufade20k": ["upernet-convnext-small/config.json", "openmmlab/upernet-convnext-small"],
    }
    for spec in needing:
        with pytest.raises(PreprocessorWeightsMissing) as err:
            runner.run(spec.name, picture(), 64)
        message = str(err.value)
        assert message.startswith(f"{spec.name} needs ")
        assert f"in {folder}/ " in message
        assert ("on Hugging Face" if spec.name.startswith("seg_") else "lllyasviel/Annotators") in message
        assert message.endswith("nothing was run")
        for weight in spec.needs_weights:
            assert weight.file_name in message
        for file_name in expected_files.get(spec.name, []):
            assert file_name in message
        assert err.value.folder == folder
    assert runner.loaded_files() == ()
    copy = pickle.loads(pickle.dumps(err.value))
    assert str(copy) == str(err.value) and copy.missing == err.value.missing
    assert set(registry.available(folder)) == {s.name for s in registry.specs() if not s.needs_weights}

    # With the body file present, openpose_full names only the two files still missing.
    (folder / "body_pose_model.pth").write_bytes(b"placeholder")
    with pytest.raises(PreprocessorWeightsMissing) as err:
        runner.run("openpose_full", picture(), 64)
    assert "body_pose_model.pth" not in str(err.value)
    assert "hand_pose_model.pth and facenet.pth" in str(err.value)
    assert "openpose" in registry.available(folder)


def _seeded(cls: type[torch.nn.Module], *args: object, seed: int = 0, **kwargs: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    return cls(*args, **kwargs).eval()


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded random weights saved exactly as the real Annotators files are laid out."""
    from controlnet_aux.hed import ControlNetHED_Apache2
    from controlnet_aux.lineart import Generator
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large
    from controlnet_aux.pidi.model import pidinet
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("ControlNetPreprocessor")
    torch.save(_seeded(ControlNetHED_Apache2).state_dict(), folder / "ControlNetHED.pth")
    torch.save(_seeded(Generator, 3, 1, 3, seed=1).state_dict(), folder / "sk_model.pth")
    torch.save(_seeded(MobileV2_MLSD_Large, seed=2).state_dict(), folder / "mlsd_large_512_fp32.pth")
    # table5_pidinet.pth wraps a DataParallel state dict: {"state_dict": {"module.<key>": tensor}}.
    pidi_state = {f"module.{k}": v for k, v in _seeded(pidinet, seed=3).state_dict().items()}
    torch.save({"state_dict": pidi_state, "epoch": 14}, folder / "table5_pidinet.pth")
    # A .safetensors conversion under the same stem is preferred over the pickle name.
    coarse = {k: v.contiguous() for k, v in _seeded(Generator, 3, 1, 3, seed=4).state_dict().items()}
    save_file(coarse, str(folder / "sk_model2.safetensors"))
    return folder


def _padded_reference(detector: Callable[..., Any], image: Image.Image, resolution: int) -> np.ndarray:
    """controlnet-aux's own pipeline on sd-webui-controlnet's padded image, padding cropped off afterwards."""
    resized, padded = sdwebui_resize(np.asarray(image), resolution)
    side = min(padded.shape[:2])
    out = detector(padded, detect_resolution=side, image_resolution=side, output_type="np")
    return np.asarray(out)[: resized.shape[0], : resized.shape[1]]


@pytest.mark.parametrize(("name", "file_name", "reference"), [
    ("softedge_hed", "ControlNetHED.pth", "hed"),
    ("lineart_realistic", "sk_model.pth", "lineart"),
    ("softedge_pidinet", "table5_pidinet.pth", "pidi"),
])
def test_weight_needing_preprocessors_run_from_local_files(registry: PreprocessorRegistry, weights_dir: Path,
                                                           no_network: list[object], name: str, file_name: str,
                                                           reference: str) -> None:
    from controlnet_aux import HEDdetector, LineartDetector, PidiNetDetector

    runner = PreprocessorRunner(registry, weights_dir)
    first, second = picture(seed=10), picture(seed=11)
    out = runner.run(name, first, 64)
    assert out.size == (WIDTH, HEIGHT) and out.mode == "RGB"
    assert not np.array_equal(np.asarray(out), np.asarray(runner.run(name, second, 64)))
    assert runner.load_count(file_name) == 1  # cached: the second run did not read the file again

    # Same map as controlnet-aux's own loader on this (benign, test-made) file.
    loaders = {"hed": HEDdetector, "lineart": LineartDetector, "pidi": PidiNetDetector}
    extra = {"coarse_filename": "sk_model.pth"} if reference == "lineart" else {}  # it always loads both files
    detector = loaders[reference].from_pretrained(str(weights_dir), **extra)
    np.testing.assert_array_equal(np.asarray(out), _padded_reference(detector, first, 64))

    if name == "softedge_hed":  # one model map at another processor_res (each run costs a second on a busy CPU)
        assert runner.run(name, first, 100).size == (150, 100)
        assert runner.load_count(file_name) == 1


def test_loaded_network_holds_the_file_weights_and_cache_unloads(registry: PreprocessorRegistry,
                                                                  weights_dir: Path) -> None:
    runner = PreprocessorRunner(registry, weights_dir)
    runner.run("lineart_coarse", picture(), 64)  # from sk_model2.safetensors
    runner.run("mlsd", picture(), 64, threshold_a=0.1, threshold_b=0.1)
    assert set(runner.loaded_files()) == {"sk_model2.pth", "mlsd_large_512_fp32.pth"}
    from safetensors.torch import load_file

    saved = load_file(str(weights_dir / "sk_model2.safetensors"))
    network = runner.network("sk_model2.pth", lambda state, name: pytest.fail("should be cached"))
    for key, value in network.state_dict().items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)
    assert runner.run("mlsd", picture(), 100).size == (150, 100)
    runner.unload()
    assert runner.loaded_files() == ()
    runner.run("lineart_coarse", picture(), 64)
    assert runner.load_count("sk_model2.pth") == 2


def test_wrong_network_in_the_file_is_refused(registry: PreprocessorRegistry, weights_dir: Path,
                                              tmp_path: Path) -> None:
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "ControlNetHED.pth").write_bytes((weights_dir / "sk_model.pth").read_bytes())
    with pytest.raises(PreprocessorWeightsInvalid, match="ControlNetHED.pth: not the expected"):
        PreprocessorRunner(registry, folder).run("softedge_hed", picture(), 64)
    (folder / "sk_model.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PreprocessorWeightsInvalid, match="sk_model.pth: refused"):
        PreprocessorRunner(registry, folder).run("lineart_realistic", picture(), 64)


class _Payload:
    """Unpickling this runs code that creates the canary file."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (f"open({str(self.canary)!r}, 'w').close()",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickled_code_in_a_weight_file_is_refused_and_not_run(registry: PreprocessorRegistry, tmp_path: Path,
                                                              writer: str) -> None:
    folder = tmp_path / "w"
    folder.mkdir()
    canary = tmp_path / "canary"
    payload = {"block1.convs.0.weight": torch.zeros(1), "evil": _Payload(canary)}
    path = folder / "ControlNetHED.pth"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with path.open("wb") as handle:
            pickle.dump(payload, handle)
    with pytest.raises(PreprocessorWeightsInvalid, match="ControlNetHED.pth: refused") as err:
        PreprocessorRunner(registry, folder).run("softedge_hed", picture(), 64)
    assert "weights_only" in str(err.value)
    assert not canary.exists()

    # Control: the payload is live, plain unpickling would have run it.
    control = tmp_path / "control-canary"
    pickle.loads(pickle.dumps(_Payload(control)))
    assert control.exists()


def test_custom_registry_with_its_own_weight_file(tmp_path: Path) -> None:
    """Registries are plain objects: a spec with its own file and slider goes through the same checks."""
    reg = PreprocessorRegistry()
    spec = PreprocessorSpec("double", "double", needs_weights=(WeightFile("double.pth", "a test"),),
                            threshold_a=ThresholdParam("Gain", 2.0, 1.0, 4.0))

    def double(inp: PreprocessorInput, nets: NetworkSource) -> np.ndarray:
        nets.network("double.pth", lambda state, name: torch.nn.Identity())
        return np.clip(inp.image.astype(np.float32) * inp.threshold_a, 0, 255).astype(np.uint8)

    reg.register(spec, double)
    runner = PreprocessorRunner(reg, tmp_path)
    with pytest.raises(PreprocessorWeightsMissing, match=r"double needs double.pth in .* \(from a test\)"):
        runner.run("double", picture(), 64)
    torch.save({"w": torch.ones(1)}, tmp_path / "double.pth")
    out = runner.run("double", picture(), 64)
    np.testing.assert_array_equal(np.asarray(out), np.clip(np.asarray(picture()).astype(np.float32) * 2, 0, 255)
                                  .astype(np.uint8))
    assert reg.available(tmp_path) == ("double",)
