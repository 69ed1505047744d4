"""ControlNet preprocessors ("annotators"): turn a picture into the control map a ControlNet model expects.

Names, parameters and resizing follow sd-webui-controlnet (the A1111 extension), so API clients that send a ControlNet
unit's `module` / `processor_res` / `threshold_a` / `threshold_b` / `pixel_perfect` / `resize_mode` get the maps they
expect. The detectors themselves come from `controlnet_aux` where it has them.

Weights are never downloaded. They are read from one local folder (the app passes `models/ControlNetPreprocessor/`)
under the exact file names controlnet_aux's `from_pretrained` expects (the names in `lllyasviel/Annotators`). We do
not call `from_pretrained` or the detectors' loading constructors: they `torch.load` without `weights_only=` (and some
without `map_location`), which an environment variable (`TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`) can turn into full
unpickling. We build controlnet_aux's own network classes and load their state dicts through
`torch.load(weights_only=True)` or safetensors. Importing controlnet_aux takes seconds (it imports torch, torchvision,
timm, scipy, skimage), so it is imported inside the functions that need it.
"""

from __future__ import annotations

import functools
import json
import math
import threading
import types
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch is only needed once a network runs; listing preprocessors must not import it
    import torch

MIN_RESOLUTION = 64
MAX_RESOLUTION = 2048
DEFAULT_RESOLUTION = 512
# A very elongated image at a high processor_res would give a gigantic map; refuse instead of allocating it.
MAX_MAP_SIDE = 4 * MAX_RESOLUTION
ANNOTATORS = "lllyasviel/Annotators on Hugging Face"
NOTHING_RUN = "nothing was run"


# --------------------------------------------------------------------------------------------------------- errors


class PreprocessorError(ValueError):
    """A preprocessor request that cannot be served; the message says what to change."""


class PreprocessorUnsupported(PreprocessorError):
    """A module name sd-webui-controlnet knows but this build cannot run (e.g. no offline implementation)."""


class PreprocessorWeightsMissing(PreprocessorError):
    """A weight file is not in the weights folder; the message names each file and the folder to put it in."""

    def __init__(self, preprocessor: str, folder: Path, missing: tuple[WeightFile, ...]) -> None:
        self.preprocessor = preprocessor
        self.folder = folder
        self.missing = missing
        names = [w.display_name for w in missing]
        files = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        sources = sorted({w.source_hint for w in missing})
        super().__init__(f"{preprocessor} needs {files} in {folder}{'' if str(folder).endswith('/') else '/'} "
                         f"(from {', '.join(sources)}); {NOTHING_RUN}")

    def __reduce__(self) -> tuple[type, tuple[str, Path, tuple[WeightFile, ...]]]:
        """Keep the error picklable (job workers may hand it to another process)."""
        return (type(self), (self.preprocessor, self.folder, self.missing))


class PreprocessorWeightsInvalid(PreprocessorError):
    """A weight file exists but was refused (unsafe pickle, corrupt, or not the expected network)."""


# ------------------------------------------------------------------------------------------------ resize handling


class ControlResizeMode(Enum):
    """How the control map is fitted to the generation size (sd-webui-controlnet `ResizeMode`)."""

    JUST_RESIZE = "Just Resize"
    CROP_AND_RESIZE = "Crop and Resize"
    RESIZE_AND_FILL = "Resize and Fill"

    @property
    def int_value(self) -> int:
        """The 0/1/2 spelling the A1111 API also accepts."""
        return list(ControlResizeMode).index(self)


# Older spellings sd-webui-controlnet still accepts (internal_controlnet/args.py `check_resize_mode`).
_RESIZE_MODE_ALIASES: Mapping[str, ControlResizeMode] = types.MappingProxyType({
    "Inner Fit (Scale to Fit)": ControlResizeMode.CROP_AND_RESIZE,
    "Scale to Fit (Inner Fit)": ControlResizeMode.CROP_AND_RESIZE,
    "Outer Fit (Shrink to Fit)": ControlResizeMode.RESIZE_AND_FILL,
    "Envelope (Outer Fit)": ControlResizeMode.RESIZE_AND_FILL,
})


def parse_resize_mode(value: ControlResizeMode | str | int) -> ControlResizeMode:
    """Accept a resize mode as the API sends it: a name ("Crop and Resize"), an old alias, or 0/1/2."""
    if isinstance(value, ControlResizeMode):
        return value
    if isinstance(value, bool):  # bool is an int subclass; True is not a resize mode
        raise PreprocessorError(f"resize_mode must be a name or 0/1/2, not {value!r}")
    if isinstance(value, int):
        modes = list(ControlResizeMode)
        if 0 <= value < len(modes):
            return modes[value]
    elif isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return parse_resize_mode(int(text))
        for mode in ControlResizeMode:
            if text.lower() == mode.value.lower():
                return mode
        if text in _RESIZE_MODE_ALIASES:
            return _RESIZE_MODE_ALIASES[text]
    valid = ", ".join(f"{m.int_value} = {m.value!r}" for m in ControlResizeMode)
    raise PreprocessorError(f"unknown resize_mode {value!r}; use one of {valid}")


def _positive_size(size: tuple[int, int], what: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError) as exc:
        raise PreprocessorError(f"{what} must be (width, height), got {size!r}") from exc
    if width <= 0 or height <= 0:
        raise PreprocessorError(f"{what} must be positive, got {width}x{height}")
    return width, height


def pixel_perfect_resolution(image_size: tuple[int, int], target_size: tuple[int, int],
                             resize_mode: ControlResizeMode | str | int) -> int:
    """The processor_res "Pixel Perfect" picks, so the map needs no further rescale beyond the fit itself.

    Rule (sd-webui-controlnet `external_code.pixel_perfect_resolution`), with sizes given as (width, height):
    k0 = target_H / raw_H, k1 = target_W / raw_W; for "Resize and Fill" (outer fit) the estimate is
    min(k0, k1) * min(raw_H, raw_W), for "Just Resize" and "Crop and Resize" it is max(k0, k1) * min(raw_H, raw_W);
    the result is rounded half-to-even (numpy's round). It is not clamped: `PreprocessorRunner.run` rejects values
    outside 64..2048 with a clear error.
    """
    mode = parse_resize_mode(resize_mode)
    raw_w, raw_h = _positive_size(image_size, "image_size")
    target_w, target_h = _positive_size(target_size, "target_size")
    k0 = float(target_h) / float(raw_h)
    k1 = float(target_w) / float(raw_w)
    k = min(k0, k1) if mode is ControlResizeMode.RESIZE_AND_FILL else max(k0, k1)
    return int(np.round(k * float(min(raw_h, raw_w))))


def controlnet_numpy_seed(seed: int, subseed: int) -> int:
    """The numpy seed sd-webui-controlnet derives from a job's seed and subseed (`set_numpy_seed`), for `shuffle`.

    The caller resolves -1 (random) seeds first; negative values count as 0, as there.
    """
    return (max(int(seed), 0) + max(int(subseed), 0)) & 0xFFFFFFFF


def _pad64(x: int) -> int:
    return int(np.ceil(float(x) / 64.0) * 64 - x)


def _resize_with_pad(image: np.ndarray, resolution: int) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Scale the short side to `resolution`, then edge-pad to multiples of 64 (sd-webui-controlnet
    `resize_image_with_pad`). Networks need /64 sizes; the returned function crops a map back, so the map keeps the
    image's exact aspect instead of controlnet_aux's own rounding of both sides to multiples of 64."""
    h_raw, w_raw = image.shape[:2]
    k = float(resolution) / float(min(h_raw, w_raw))
    h_target = int(np.round(float(h_raw) * k))
    w_target = int(np.round(float(w_raw) * k))
    if max(h_target, w_target) > MAX_MAP_SIDE:
        raise PreprocessorError(f"processor resolution {resolution} on a {w_raw}x{h_raw} image would give a "
                                f"{w_target}x{h_target} map (limit {MAX_MAP_SIDE} px a side); lower processor_res")
    interpolation = cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA
    resized = cv2.resize(image, (w_target, h_target), interpolation=interpolation)
    padded = np.pad(resized, [[0, _pad64(h_target)], [0, _pad64(w_target)], [0, 0]], mode="edge")

    def remove_pad(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x[:h_target, :w_target])

    return np.ascontiguousarray(padded), remove_pad


def _hwc3(x: np.ndarray) -> np.ndarray:
    """Grey or RGBA map -> RGB uint8 (alpha composited on white, like the annotators' HWC3)."""
    if x.dtype != np.uint8:
        raise PreprocessorError(f"a preprocessor returned {x.dtype} instead of uint8")
    if x.ndim == 2:
        x = x[:, :, None]
    channels = x.shape[2]
    if channels == 3:
        return x
    if channels == 1:
        return np.concatenate([x, x, x], axis=2)
    if channels == 4:
        color = x[:, :, :3].astype(np.float32)
        alpha = x[:, :, 3:4].astype(np.float32) / 255.0
        return (color * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)
    raise PreprocessorError(f"a preprocessor returned {channels} channels")


def _image_to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode == "RGB":
        return np.array(image, dtype=np.uint8)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        return _hwc3(np.array(image.convert("RGBA"), dtype=np.uint8))
    return np.array(image.convert("RGB"), dtype=np.uint8)


# --------------------------------------------------------------------------------------------------- specs, registry


_PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


@dataclass(frozen=True)
class WeightFile:
    """One file a preprocessor needs, relative to the weights folder, under the name its source publishes.

    `file_name` may sit in a sub-folder (a Hugging Face model folder such as `oneformer_ade20k_swin_large/`);
    `alternatives` are other names the same weights go by there (`pytorch_model.bin` for `model.safetensors`).
    """

    file_name: str
    source_hint: str = ANNOTATORS
    alternatives: tuple[str, ...] = ()

    def candidates(self) -> tuple[str, ...]:
        """Names to look for, best first: for a pickle file a same-stem `.safetensors` conversion (no unpickling at
        all), then the name itself, then the alternatives."""
        names = []
        for name in (self.file_name, *self.alternatives):
            path = Path(name)
            if path.suffix.lower() in _PICKLE_SUFFIXES:
                names.append(str(path.with_suffix(".safetensors")))
            names.append(name)
        return tuple(dict.fromkeys(names))

    @property
    def display_name(self) -> str:
        """How messages name the file: `a/model.safetensors (or a/pytorch_model.bin)`."""
        if not self.alternatives:
            return self.file_name
        return f"{self.file_name} (or {' or '.join(self.alternatives)})"

    def find(self, weights_dir: Path) -> Path | None:
        """The file to load from `weights_dir`, or None when no spelling of it is there."""
        for name in self.candidates():
            path = Path(weights_dir) / name
            if path.is_file():
                return path
        return None


@dataclass(frozen=True)
class ThresholdParam:
    """One of the two sliders a unit sends as threshold_a / threshold_b (label, default and range as in the UI)."""

    label: str
    default: float
    minimum: float
    maximum: float
    step: float = 1.0


@dataclass(frozen=True)
class PreprocessorSpec:
    """What a preprocessor is called, which files it needs and which unit fields it reads.

    `name` is the spelling sd-webui-controlnet shows (its "alias", e.g. `depth_midas`); `aliases` are its internal names
    (e.g. `depth`), which the API accepts too. `uses_resolution=False` mirrors sd-webui-controlnet's hidden resolution
    slider: those preprocessors keep the input size and ignore processor_res.
    """

    name: str
    label: str
    needs_weights: tuple[WeightFile, ...] = ()
    threshold_a: ThresholdParam | None = None
    threshold_b: ThresholdParam | None = None
    default_resolution: int = DEFAULT_RESOLUTION
    uses_resolution: bool = True
    accepts_mask: bool = False
    uses_seed: bool = False
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class PreprocessorInput:
    """One validated request, as the preprocessor functions receive it."""

    image: np.ndarray  # H x W x 3 uint8 RGB, original size
    resolution: int  # processor_res, short side of the map
    threshold_a: float | None  # resolved (default filled in) or None when the spec has no such slider
    threshold_b: float | None
    seed: int
    mask: np.ndarray | None  # H x W bool, True = to be inpainted; only for specs that accept a mask


# (state dict read from the file, file name for messages) -> the network with those weights loaded
NetworkBuilder = Callable[[dict[str, Any], str], Any]


class NetworkSource(Protocol):
    """Where a preprocessor function gets its networks; the runner caches them per weight file."""

    def network(self, weight: WeightFile | str, build: NetworkBuilder) -> Any: ...

    def read_json(self, weight: WeightFile) -> dict[str, Any] | None: ...


PreprocessorFn = Callable[[PreprocessorInput, NetworkSource], np.ndarray]


class PreprocessorRegistry:
    """The preprocessors this build knows, by name and alias; an object so tests and extensions can hold their own."""

    def __init__(self) -> None:
        self._specs: dict[str, PreprocessorSpec] = {}
        self._functions: dict[str, PreprocessorFn] = {}
        self._lookup: dict[str, str] = {}
        self._unsupported: dict[str, str] = {}

    def _claim(self, names: Iterable[str], owner: str) -> None:
        for key in names:
            if key in self._lookup or key in self._unsupported:
                raise ValueError(f"preprocessor name {key!r} is already registered")
        for key in names:
            self._lookup[key] = owner

    def register(self, spec: PreprocessorSpec, fn: PreprocessorFn) -> None:
        """Add a preprocessor; its name, label and aliases must not collide with any known name."""
        keys = list(dict.fromkeys((spec.name, spec.label, *spec.aliases)))
        self._claim(keys, spec.name)
        self._specs[spec.name] = spec
        self._functions[spec.name] = fn

    def mark_unsupported(self, name: str, reason: str, aliases: tuple[str, ...] = ()) -> None:
        """Remember a name clients may send that this build cannot run, so they get the reason, not 'unknown'."""
        for key in (name, *aliases):
            if key in self._lookup or key in self._unsupported:
                raise ValueError(f"preprocessor name {key!r} is already registered")
        for key in (name, *aliases):
            self._unsupported[key] = f"{name}: {reason}"

    def names(self) -> tuple[str, ...]:
        """Runnable preprocessors, in registration order (`none` first)."""
        return tuple(self._specs)

    def specs(self) -> tuple[PreprocessorSpec, ...]:
        return tuple(self._specs.values())

    def unsupported(self) -> dict[str, str]:
        """Known but unsupported names -> reason."""
        return dict(self._unsupported)

    def get(self, name: str) -> PreprocessorSpec:
        """The spec for a name, label or alias; unknown names get an error listing the valid ones."""
        if not isinstance(name, str):
            raise PreprocessorError(f"preprocessor name must be a string, not {type(name).__name__}")
        key = name.strip()
        if key in self._lookup:
            return self._specs[self._lookup[key]]
        if key in self._unsupported:
            raise PreprocessorUnsupported(self._unsupported[key])
        raise PreprocessorError(f"unknown preprocessor {name!r}; valid names: {', '.join(self.names())}")

    def function(self, name: str) -> PreprocessorFn:
        return self._functions[self.get(name).name]

    def missing_weights(self, name: str, weights_dir: Path | str) -> tuple[WeightFile, ...]:
        """The files `name` still needs in `weights_dir` (empty when it can run)."""
        return tuple(w for w in self.get(name).needs_weights if w.find(Path(weights_dir)) is None)

    def available(self, weights_dir: Path | str) -> tuple[str, ...]:
        """Preprocessors whose weight files are all present (the weight-free ones always are)."""
        folder = Path(weights_dir)
        return tuple(s.name for s in self._specs.values() if all(w.find(folder) for w in s.needs_weights))


# ------------------------------------------------------------------------------------------------- safe weight I/O

_INNER_STATE_KEYS = ("state_dict", "model")


def load_weight_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a preprocessor weight file, without running code from it.

    safetensors is read directly; pickle formats only through `torch.load(weights_only=True)` (no unsafe fallback).
    Checkpoints that wrap the state dict (`{"state_dict": ...}` for PiDiNet, `{"model": ...}` for Zoe and BAE) are
    unwrapped, and DataParallel's leading `module.` is stripped, as controlnet_aux's loaders do.
    """
    import torch

    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from webui.engine.checkpoint_io import CheckpointReadError, read_checkpoint

        try:
            loaded: Any = read_checkpoint(path).state_dict
        except CheckpointReadError as exc:
            raise PreprocessorWeightsInvalid(f"{exc}; {NOTHING_RUN}") from exc
    else:
        is_zip = zipfile.is_zipfile(path)
        if is_zip:
            with zipfile.ZipFile(path) as archive:
                bad = [n for n in archive.namelist() if ".." in n.split("/") or n.startswith("/")]
            if bad:
                raise PreprocessorWeightsInvalid(f"{path.name}: refused, the archive has a suspicious member "
                                                 f"{bad[0]!r}; {NOTHING_RUN}")
        try:
            loaded = torch.load(str(path), map_location="cpu", weights_only=True, mmap=is_zip)
        except Exception as exc:  # UnpicklingError for forbidden globals, RuntimeError/EOFError for corrupt files
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise PreprocessorWeightsInvalid(
                f"{path.name}: refused, it could not be loaded safely ({first}). Only plain tensor files are "
                f"accepted (weights_only=True); get the original file again or convert it to .safetensors; "
                f"{NOTHING_RUN}") from exc
    for key in _INNER_STATE_KEYS:
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict):
        raise PreprocessorWeightsInvalid(f"{path.name}: does not contain a state dict; {NOTHING_RUN}")
    state: dict[str, torch.Tensor] = {}
    for key, value in loaded.items():
        if isinstance(key, str) and isinstance(value, torch.Tensor):
            state[key[len("module."):] if key.startswith("module.") else key] = value
    if not state:
        raise PreprocessorWeightsInvalid(f"{path.name}: holds no tensors; {NOTHING_RUN}")
    return state


def _load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], file_name: str,
               ignore_unexpected: tuple[str, ...] = ()) -> torch.nn.Module:
    """Load strictly, except for named buffers older library versions saved and newer ones recompute."""
    result = module.load_state_dict(state, strict=False)
    unexpected = [k for k in result.unexpected_keys if not any(k.endswith(s) for s in ignore_unexpected)]
    if result.missing_keys or unexpected:
        detail = []
        if result.missing_keys:
            detail.append(f"{len(result.missing_keys)} missing keys, e.g. {result.missing_keys[0]!r}")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]!r}")
        raise PreprocessorWeightsInvalid(f"{file_name}: not the expected {type(module).__name__} weights "
                                         f"({'; '.join(detail)}); {NOTHING_RUN}")
    return module


def _shape_error(file_name: str, exc: Exception) -> PreprocessorWeightsInvalid:
    return PreprocessorWeightsInvalid(f"{file_name}: tensor shapes do not match the network "
                                      f"({str(exc).splitlines()[0]}); {NOTHING_RUN}")


# ------------------------------------------------------------------------------------------------- network builders
# Each builds controlnet_aux's own class (so the key layout is the real file's) and loads the given state dict.


def _build_hed(state: dict[str, torch.Tensor], file_name: str) -> torch.nn.Module:
    from controlnet_aux.hed import ControlNetHED_Apache2

    return _load_into(ControlNetHED_Apache2().float(), state, file_name)


def _build_pidinet(state: dict[str, torch.Tensor], file_name: str) -> torch.nn.Module:
    from controlnet_aux.pidi.model import pidinet

    return _load_into(pidinet(), state, file_name)


def _build_mlsd(state: dict[str, torch.Tensor], file_name: str) -> torch.nn.Module:
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

    return _load_into(MobileV2_MLSD_Large(), state, file_name)  # its MobileNetV2 is built with pretrained=False


def _build_lineart(state: dict[str, torch.Tensor], file_name: str) -> torch.nn.Module:
    from controlnet_aux.lineart import Generator

    return _load_into(Generator(3, 1, 3), state, file_name)


def _build_lineart_anime(state: dict[str, torch.Tensor], file_name: str) -> torch.nn.Module:
    import torch
    from controlnet_aux.lineart_anime import UnetGenerator

    norm_layer = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    return _load_into(UnetGenerator(3, 1, 8, 64, norm_layer=norm_layer, use_dropout=False), state, file_name)


def _build_midas(state: dict[str, torch.Tensor], file_name: str) -> torch.nn.Module:
    from controlnet_aux.midas.midas.dpt_depth import DPTDepthModel

    # path=None: no load inside the constructor; the timm backbone is created with pretrained=False (offline).
    return _load_into(DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True), state, file_name)


def _build_zoe(state: dict[str, torch.Tensor], file_name: str) -> torch.nn.Module:
    from controlnet_aux.zoe.zoedepth.models.zoedepth.zoedepth_v1 import ZoeDepth
    from controlnet_aux.zoe.zoedepth.utils.config import get_config

    # The "infer" config has use_pretrained_midas=False and pretrained_resource=None: the MiDaS BEiT core comes from
    # the package's bundled hubconf (torch.hub source="local") with random weights, then the file's weights replace
    # them, so nothing is downloaded. Files saved with older timm carry relative_position_index buffers that current
    # timm recomputes; only those may be left over (controlnet_aux instead falls back to strict=False for everything).
    model = ZoeDepth.build_from_config(get_config("zoedepth", "infer"))
    return _load_into(model, state, file_name, ignore_unexpected=("relative_position_index",))


def _build_normal_bae(state: dict[str, torch.Tensor], file_name: str) -> torch.nn.Module:
    from controlnet_aux.normalbae.nets.NNET import NNET

    # The EfficientNet-B5 encoder comes from the bundled gen-efficientnet hubconf with pretrained=False (offline).
    args = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet", sampling_ratio=0.4,
                                 importance_ratio=0.7)
    return _load_into(NNET(args), state, file_name)


def _openpose_transfer(model: torch.nn.Module, state: dict[str, torch.Tensor], file_name: str) -> torch.nn.Module:
    from controlnet_aux.open_pose.util import transfer

    # The body/hand files store keys without the first block name (controlnet_aux `util.transfer` maps them).
    try:
        mapped = transfer(model, state)
    except KeyError as exc:
        raise PreprocessorWeightsInvalid(f"{file_name}: not the expected {type(model).__name__} weights "
                                         f"(missing key {exc.args[0]!r}); {NOTHING_RUN}") from exc
    return _load_into(model, mapped, file_name)


def _build_openpose_body(state: dict[str, torch.Tensor], file_name: str) -> torch.nn.Module:
    from controlnet_aux.open_pose.model import bodypose_model

    return _openpose_transfer(bodypose_model(), state, file_name)


def _build_openpose_hand(state: dict[str, torch.Tensor], file_name: str) -> torch.nn.Module:
    from controlnet_aux.open_pose.model import handpose_model

    return _openpose_transfer(handpose_model(), state, file_name)


def _build_openpose_face(state: dict[str, torch.Tensor], file_name: str) -> torch.nn.Module:
    from controlnet_aux.open_pose.face import FaceNet

    return _load_into(FaceNet(), state, file_name)


# ------------------------------------------------------------------------------------------- preprocessor functions


def _run_at_res(inp: PreprocessorInput, detect: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """Run a controlnet_aux detector on the padded image with detect_resolution = its short side, so the detector's
    own `resize_image` (scale, round to /64) is an exact no-op, then crop the padding off."""
    padded, remove_pad = _resize_with_pad(inp.image, inp.resolution)
    detected = _hwc3(np.asarray(detect(padded, min(padded.shape[:2]))))
    if detected.shape[:2] != padded.shape[:2]:
        raise PreprocessorError(f"detector returned a {detected.shape[1]}x{detected.shape[0]} map for a "
                                f"{padded.shape[1]}x{padded.shape[0]} input")
    return remove_pad(detected)


def _scribble(detected: np.ndarray) -> np.ndarray:
    """sd-webui-controlnet's scribble post-step (NMS, blur, binarise), applied after the padding is removed."""
    from controlnet_aux.util import nms

    result = nms(detected, 127, 3.0)
    result = cv2.GaussianBlur(result, (0, 0), 3.0)
    result[result > 4] = 255
    result[result < 255] = 0
    return result


def _none(inp: PreprocessorInput, nets: NetworkSource) -> np.ndarray:
    return inp.image.copy()


def _invert(inp: PreprocessorInput, nets: NetworkSource) -> np.ndarray:
    # Hand-written: controlnet_aux has no invert. White-background line drawings become white-on-black maps.
    return 255 - inp.image


def _canny(inp: PreprocessorInput, nets: NetworkSource) -> np.ndarray:
    from controlnet_aux.canny import CannyDetector

    low, high = int(inp.threshold_a or 0), int(inp.threshold_b or 0)
    return _run_at_res(inp, lambda img, res: CannyDetector()(
        img, low_threshold=low, high_threshold=high, detect_resolution=res, image_resolution=res, output_type="np"))


def _threshold(inp: PreprocessorInput, nets: NetworkSource) -> np.ndarray:
    # Hand-written (controlnet_aux has none): a pixel is white when all three channels exceed the threshold.
    padded, remove_pad = _resize_with_pad(inp.image, inp.resolution)
    result = np.zeros_like(padded)
    result[np.min(padded, axis=2) > float(inp.threshold_a or 0)] = 255
    return remove_pad(result)


def _blur_gaussian(inp: PreprocessorInput, nets: NetworkSource) -> np.ndarray:
    # Hand-written (controlnet_aux has none), for the tile model: blur at processor_res.
    padded, remove_pad = _resize_with_pad(inp.image, inp.resolution)
    return cv2.GaussianBlur(remove_pad(padded), (0, 0), float(inp.threshold_a or 1.0))


def _tile_resample(inp: PreprocessorInput, nets: NetworkSource) -> np.ndarray:
    # Hand-written (controlnet_aux has none): the image itself, downsampled by the rate when it is at least 1.1.
    rate = float(inp.threshold_a or 1.0)
    if rate < 1.1:
        return inp.image.copy()
    height, width = inp.image.shape[:2]
    size = (max(1, int(float(width) / rate)), max(1, int(float(height) / rate)))
    return cv2.resize(inp.image, size, interpolation=cv2.INTER_AREA)


def _make_noise_disk(rng: np.random.RandomState, height: int, width: int, f: int) -> np.ndarray:
    noise = rng.uniform(low=0, high=1, size=((height // f) + 2, (width // f) + 2, 1))
    noise = cv2.resize(noise, (width + 2 * f, height + 2 * f), interpolation=cv2.INTER_CUBIC)
    noise = noise[f:f + height, f:f + width]
    noise -= np.min(noise)
    noise /= np.max(noise)
    return noise[:, :, None]


def _shuffle(inp: PreprocessorInput, nets: NetworkSource) -> np.ndarray:
    # Hand-written on purpose: ContentShuffleDetector draws from numpy's *global* RNG, and seeding that from a server
    # thread would disturb every other user of it. This is the same algorithm (controlnet_aux `make_noise_disk`,
    # f = 256, then `cv2.remap`) drawing from a private RandomState(seed), which yields the numbers the detector gives
    # after `np.random.seed(seed)` (what sd-webui-controlnet does), so maps match theirs for the same numpy seed.
    padded, remove_pad = _resize_with_pad(inp.image, inp.resolution)
    image = remove_pad(padded)
    height, width = image.shape[:2]
    rng = np.random.RandomState(inp.seed)
    x = _make_noise_disk(rng, height, width, 256) * float(width - 1)
    y = _make_noise_disk(rng, height, width, 256) * float(height - 1)
    flow = np.concatenate([x, y], axis=2).astype(np.float32)
    return cv2.remap(image, flow, None, cv2.INTER_LINEAR)


def _inpaint(inp: PreprocessorInput, nets: NetworkSource) -> np.ndarray:
    # sd-webui-controlnet's inpaint preprocessors pass the image through with the mask in the alpha channel; the
    # ControlNet hint is then rgb * (1 - m) - m, i.e. -1 on masked pixels (see `inpaint_control_hint`).
    height, width = inp.image.shape[:2]
    mask = inp.mask if inp.mask is not None else np.zeros((height, width), dtype=bool)
    alpha = np.where(mask, 255, 0).astype(np.uint8)[:, :, None]
    return np.concatenate([inp.image, alpha], axis=2)


def _lineart_standard(inp: PreprocessorInput, nets: NetworkSource) -> np.ndarray:
    from controlnet_aux.lineart_standard import LineartStandardDetector

    return _run_at_res(inp, lambda img, res: LineartStandardDetector()(img, detect_resolution=res, output_type="np"))


def _hed(safe: bool, scribble: bool) -> PreprocessorFn:
    def run(inp: PreprocessorInput, nets: NetworkSource) -> np.ndarray:
        from controlnet_aux.hed import HEDdetector

        detector = HEDdetector(nets.network("ControlNetHED.pth", _build_hed))
        result = _run_at_res(inp, lambda img, res: detector(img, detect_resolution=res, image_resolution=res,
                                                            safe=safe, output_type="np"))
        return _scribble(result) if scribble else result

    return run


def _pidinet(safe: bool, scribble: bool) -> PreprocessorFn:
    def run(inp: PreprocessorInput, nets: NetworkSource) -> np.ndarray:
        from controlnet_aux.pidi import PidiNetDetector

        detector = PidiNetDetector(nets.network("table5_pidinet.pth", _build_pidinet))
        result = _run_at_res(inp, lambda img, res: detector(img, detect_resolution=res, image_resolution=res,
                                                            safe=safe, output_type="np"))
        return _scribble(result) if scribble else result

    return run


def _mlsd(inp: PreprocessorInput, nets: NetworkSource) -> np.ndarray:
    from controlnet_aux.mlsd import MLSDdetector

    detector = MLSDdetector(nets.network("mlsd_large_512_fp32.pth", _build_mlsd))
    return _run_at_res(inp, lambda img, res: detector(img, thr_v=inp.threshold_a, thr_d=inp.threshold_b,
                                                      detect_resolution=res, image_resolution=res, output_type="np"))


def _lineart(file_name: str) -> PreprocessorFn:
    def run(inp: PreprocessorInput, nets: NetworkSource) -> np.ndarray:
        from controlnet_aux.lineart import LineartDetector

        net = nets.network(file_name, _build_lineart)
        detector = LineartDetector(net, net)  # realistic and coarse are the same class; only `net` is used
        return _run_at_res(inp, lambda img, res: detector(img, detect_resolution=res, image_resolution=res,
                                                          output_type="np"))

    return run


def _lineart_anime(inp: PreprocessorInput, nets: NetworkSource) -> np.ndarray:
    from controlnet_aux.lineart_anime import LineartAnimeDetector

    detector = LineartAnimeDetector(nets.network("netG.pth", _build_lineart_anime))
    return _run_at_res(inp, lambda img, res: detector(img, detect_resolution=res, image_resolution=res,
                                                      output_type="np"))


def _midas(normal: bool) -> PreprocessorFn:
    def run(inp: PreprocessorInput, nets: NetworkSource) -> np.ndarray:
        from controlnet_aux.midas import MidasDetector

        detector = MidasDetector(nets.network("dpt_hybrid-midas-501f0c75.pt", _build_midas))
        if not normal:
            return _run_at_res(inp, lambda img, res: detector(img, detect_resolution=res, image_resolution=res,
                                                              output_type="np"))
        return _run_at_res(inp, lambda img, res: detector(img, a=np.pi * 2.0, bg_th=inp.threshold_a,
                                                          depth_and_normal=True, detect_resolution=res,
                                                          image_resolution=res, output_type="np")[1])

    return run


def _zoe(inp: PreprocessorInput, nets: NetworkSource) -> np.ndarray:
    from controlnet_aux.zoe import ZoeDetector

    detector = ZoeDetector(nets.network("ZoeD_M12_N.pt", _build_zoe))
    return _run_at_res(inp, lambda img, res: detector(img, detect_resolution=res, image_resolution=res,
                                                      output_type="np"))


def _normal_bae(inp: PreprocessorInput, nets: NetworkSource) -> np.ndarray:
    from controlnet_aux.normalbae import NormalBaeDetector

    detector = NormalBaeDetector(nets.network("scannet.pt", _build_normal_bae))
    return _run_at_res(inp, lambda img, res: detector(img, detect_resolution=res, image_resolution=res,
                                                      output_type="np"))


def _openpose(body: bool, hand: bool, face: bool) -> PreprocessorFn:
    def run(inp: PreprocessorInput, nets: NetworkSource) -> np.ndarray:
        from controlnet_aux.open_pose import OpenposeDetector
        from controlnet_aux.open_pose.body import Body
        from controlnet_aux.open_pose.face import Face, params
        from controlnet_aux.open_pose.hand import Hand

        # Body/Hand/Face load their file in __init__ with a bare torch.load; build them around our networks instead.
        body_est = object.__new__(Body)
        body_est.model = nets.network("body_pose_model.pth", _build_openpose_body)
        hand_est = face_est = None
        if hand:
            hand_est = object.__new__(Hand)
            hand_est.model = nets.network("hand_pose_model.pth", _build_openpose_hand)
        if face:
            face_est = object.__new__(Face)
            face_est.model = nets.network("facenet.pth", _build_openpose_face)
            face_est.inference_size = params["inference_img_size"]
            face_est.sigma = params["gaussian_sigma"]
            face_est.threshold = params["heatmap_peak_thresh"]
        detector = OpenposeDetector(body_est, hand_est, face_est)
        return _run_at_res(inp, lambda img, res: detector(img, detect_resolution=res, image_resolution=res,
                                                          include_body=body, include_hand=hand, include_face=face,
                                                          output_type="np"))

    return run


@dataclass(frozen=True)
class SegmenterFolder:
    """A Hugging Face segmentation model folder in the weights folder, and the seg preprocessor it serves."""

    preprocessor: str  # sd-webui-controlnet's name, e.g. seg_ofade20k
    aliases: tuple[str, ...]
    folder: str  # sub-folder of the weights folder, named like the Hugging Face repo
    repo: str
    kind: str  # segmentation.load_segmenter_network kind
    dataset: str  # whose palette the map is painted in: "ADE20K" or "COCO"

    @property
    def _hint(self) -> str:
        return f"{self.repo} on Hugging Face"

    @property
    def config(self) -> WeightFile:
        return WeightFile(f"{self.folder}/config.json", self._hint)

    @property
    def weights(self) -> WeightFile:
        return WeightFile(f"{self.folder}/model.safetensors", self._hint,
                          alternatives=(f"{self.folder}/pytorch_model.bin",))

    @property
    def preprocessor_config(self) -> WeightFile:
        """Optional: its image_mean/image_std override ImageNet's."""
        return WeightFile(f"{self.folder}/preprocessor_config.json", self._hint)

    def palette(self) -> np.ndarray:
        from webui.engine import segmentation

        return segmentation.ade20k_palette() if self.dataset == "ADE20K" else segmentation.coco_panoptic_palette()


# sd-webui-controlnet's seg preprocessors. UniFormer has no maintained implementation in any library, so seg_ufade20k
# runs transformers' UperNet (UniFormer's ADE20K model is a UperNet head too) on ConvNeXt: the same 150 ADE20K classes
# and colours, a different backbone.
ONEFORMER_ADE20K = SegmenterFolder("seg_ofade20k", ("oneformer_ade20k",), "oneformer_ade20k_swin_large",
                                   "shi-labs/oneformer_ade20k_swin_large", "oneformer", "ADE20K")
ONEFORMER_COCO = SegmenterFolder("seg_ofcoco", ("oneformer_coco",), "oneformer_coco_swin_large",
                                 "shi-labs/oneformer_coco_swin_large", "oneformer", "COCO")
UPERNET_ADE20K = SegmenterFolder("seg_ufade20k", ("segmentation", "uniformer"), "upernet-convnext-small",
                                 "openmmlab/upernet-convnext-small", "upernet", "ADE20K")


def _segmentation(folder: SegmenterFolder) -> PreprocessorFn:
    def run(inp: PreprocessorInput, nets: NetworkSource) -> np.ndarray:
        from webui.engine import segmentation

        palette = folder.palette()

        def build(state: dict[str, torch.Tensor], file_name: str) -> torch.nn.Module:
            config = nets.read_json(folder.config)
            if config is None:
                raise PreprocessorWeightsMissing(folder.preprocessor, Path("."), (folder.config,))
            network = segmentation.load_segmenter_network(config, state, folder.kind, f"{folder.folder}/{file_name}")
            if network.config.num_labels != len(palette):  # checked before the runner caches the network
                raise PreprocessorWeightsInvalid(
                    f"{folder.folder}: the model there has {network.config.num_labels} classes, but "
                    f"{folder.preprocessor} paints {folder.dataset}'s {len(palette)}; put the {folder.repo} folder "
                    f"there; {NOTHING_RUN}")
            return network

        try:
            network = nets.network(folder.weights, build)
            segmenter = segmentation.make_segmenter(network, folder.kind, nets.read_json(folder.preprocessor_config))
        except segmentation.SegmenterError as exc:
            raise PreprocessorWeightsInvalid(f"{folder.folder}: {exc}; {NOTHING_RUN}") from exc
        padded, remove_pad = _resize_with_pad(inp.image, inp.resolution)
        return remove_pad(segmentation.colorize(segmentation.segment(segmenter, padded), palette))

    return run


def default_preprocessors() -> PreprocessorRegistry:
    """The built-in set: weight-free preprocessors first, then those that need files from lllyasviel/Annotators, then
    the segmenters, which need a Hugging Face model folder each."""
    reg = PreprocessorRegistry()
    body = WeightFile("body_pose_model.pth")
    hand = WeightFile("hand_pose_model.pth")
    face = WeightFile("facenet.pth")
    hed = (WeightFile("ControlNetHED.pth"),)
    pidi = (WeightFile("table5_pidinet.pth"),)
    midas = (WeightFile("dpt_hybrid-midas-501f0c75.pt"),)

    reg.register(PreprocessorSpec("none", "none", uses_resolution=False), _none)
    reg.register(PreprocessorSpec("invert", "invert (from white bg & black line)", uses_resolution=False), _invert)
    reg.register(PreprocessorSpec(
        "canny", "canny", threshold_a=ThresholdParam("Low Threshold", 100, 1, 255),
        threshold_b=ThresholdParam("High Threshold", 200, 1, 255)), _canny)
    reg.register(PreprocessorSpec(
        "threshold", "threshold", threshold_a=ThresholdParam("Binarization Threshold", 127, 0, 255)), _threshold)
    reg.register(PreprocessorSpec(
        "blur_gaussian", "blur_gaussian", threshold_a=ThresholdParam("Sigma", 9.0, 0.01, 64.0, 0.01)), _blur_gaussian)
    reg.register(PreprocessorSpec(
        "tile_resample", "tile_resample", uses_resolution=False,
        threshold_a=ThresholdParam("Down Sampling Rate", 1.0, 1.0, 8.0, 0.01)), _tile_resample)
    reg.register(PreprocessorSpec("shuffle", "shuffle", uses_seed=True), _shuffle)
    reg.register(PreprocessorSpec("inpaint", "inpaint_global_harmonious", uses_resolution=False, accepts_mask=True),
                 _inpaint)
    reg.register(PreprocessorSpec("inpaint_only", "inpaint_only", uses_resolution=False, accepts_mask=True), _inpaint)
    reg.register(PreprocessorSpec("lineart_standard", "lineart_standard (from white bg & black line)"),
                 _lineart_standard)

    reg.register(PreprocessorSpec("openpose", "openpose", needs_weights=(body,)), _openpose(True, False, False))
    reg.register(PreprocessorSpec("openpose_hand", "openpose_hand", needs_weights=(body, hand)),
                 _openpose(True, True, False))
    reg.register(PreprocessorSpec("openpose_face", "openpose_face", needs_weights=(body, face)),
                 _openpose(True, False, True))
    reg.register(PreprocessorSpec("openpose_faceonly", "openpose_faceonly", needs_weights=(body, face)),
                 _openpose(False, False, True))
    reg.register(PreprocessorSpec("openpose_full", "openpose_full", needs_weights=(body, hand, face)),
                 _openpose(True, True, True))
    reg.register(PreprocessorSpec("depth_midas", "depth_midas", needs_weights=midas, aliases=("depth",)),
                 _midas(normal=False))
    reg.register(PreprocessorSpec(
        "normal_midas", "normal_midas", needs_weights=midas, aliases=("normal_map",),
        threshold_a=ThresholdParam("Normal Background Threshold", 0.4, 0.0, 1.0, 0.01)), _midas(normal=True))
    reg.register(PreprocessorSpec("depth_zoe", "depth_zoe", needs_weights=(WeightFile("ZoeD_M12_N.pt"),)), _zoe)
    reg.register(PreprocessorSpec("softedge_hed", "softedge_hed", needs_weights=hed, aliases=("hed",)),
                 _hed(safe=False, scribble=False))
    reg.register(PreprocessorSpec("softedge_hedsafe", "softedge_hedsafe", needs_weights=hed, aliases=("hed_safe",)),
                 _hed(safe=True, scribble=False))
    reg.register(PreprocessorSpec("scribble_hed", "scribble_hed", needs_weights=hed), _hed(safe=False, scribble=True))
    reg.register(PreprocessorSpec("softedge_pidinet", "softedge_pidinet", needs_weights=pidi, aliases=("pidinet",)),
                 _pidinet(safe=False, scribble=False))
    reg.register(PreprocessorSpec("softedge_pidisafe", "softedge_pidisafe", needs_weights=pidi,
                                  aliases=("pidinet_safe",)), _pidinet(safe=True, scribble=False))
    reg.register(PreprocessorSpec("scribble_pidinet", "scribble_pidinet", needs_weights=pidi,
                                  aliases=("pidinet_scribble",)), _pidinet(safe=False, scribble=True))
    reg.register(PreprocessorSpec("lineart_realistic", "lineart_realistic", needs_weights=(WeightFile("sk_model.pth"),),
                                  aliases=("lineart",)), _lineart("sk_model.pth"))
    reg.register(PreprocessorSpec("lineart_coarse", "lineart_coarse", needs_weights=(WeightFile("sk_model2.pth"),)),
                 _lineart("sk_model2.pth"))
    reg.register(PreprocessorSpec("lineart_anime", "lineart_anime", needs_weights=(WeightFile("netG.pth"),)),
                 _lineart_anime)
    reg.register(PreprocessorSpec("normal_bae", "normal_bae", needs_weights=(WeightFile("scannet.pt"),)), _normal_bae)
    reg.register(PreprocessorSpec(
        "mlsd", "mlsd", needs_weights=(WeightFile("mlsd_large_512_fp32.pth"),),
        threshold_a=ThresholdParam("MLSD Value Threshold", 0.1, 0.01, 2.0, 0.01),
        threshold_b=ThresholdParam("MLSD Distance Threshold", 0.1, 0.01, 20.0, 0.01)), _mlsd)

    for folder in (ONEFORMER_ADE20K, ONEFORMER_COCO, UPERNET_ADE20K):
        reg.register(PreprocessorSpec(folder.preprocessor, folder.preprocessor,
                                      needs_weights=(folder.config, folder.weights), aliases=folder.aliases),
                     _segmentation(folder))
    return reg


# ---------------------------------------------------------------------------------------------------------- runner


def inpaint_control_hint(control_map: Image.Image) -> np.ndarray:
    """The float hint an inpaint ControlNet receives: rgb/255 where unmasked, -1.0 where masked.

    sd-webui-controlnet's inpaint protocol (hook.py): c = rgb, m = (alpha > 0.5); hint = c * (1 - m) - m.
    `control_map` is what `run("inpaint"/"inpaint_only", ...)` returns (RGBA, alpha = mask).
    """
    if control_map.mode != "RGBA":
        raise PreprocessorError(f"an inpaint control map is RGBA with the mask in alpha, got mode {control_map.mode}")
    array = np.asarray(control_map, dtype=np.float32) / 255.0
    color, masked = array[:, :, :3], (array[:, :, 3:4] > 0.5).astype(np.float32)
    return color * (1.0 - masked) - masked


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise PreprocessorError(f"{what} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise PreprocessorError(f"{what} must be finite, got {value!r}")
    return number


class PreprocessorRunner:
    """Runs preprocessors and keeps their networks loaded, so a second run does not read the weights again."""

    def __init__(self, registry: PreprocessorRegistry, weights_dir: Path | str,
                 device: str | torch.device = "cpu") -> None:
        self.registry = registry
        self.weights_dir = Path(weights_dir)
        self.device = device
        self._networks: dict[str, Any] = {}
        self._loads: dict[str, int] = {}
        self._lock = threading.Lock()

    # -- NetworkSource
    def network(self, weight: WeightFile | str, build: NetworkBuilder) -> Any:
        """The network for one weight file, loaded safely on first use and cached."""
        weight = WeightFile(weight) if isinstance(weight, str) else weight
        file_name = weight.file_name
        with self._lock:
            if file_name in self._networks:
                return self._networks[file_name]
            path = weight.find(self.weights_dir)
            if path is None:
                raise PreprocessorWeightsMissing("this preprocessor", self.weights_dir, (weight,))
            state = load_weight_file(path)
            try:
                module = build(state, path.name)
            except RuntimeError as exc:  # size mismatches from load_state_dict
                raise _shape_error(path.name, exc) from exc
            module = module.to(self.device).eval().requires_grad_(False)
            self._networks[file_name] = module
            self._loads[file_name] = self._loads.get(file_name, 0) + 1
            return module

    def read_json(self, weight: WeightFile) -> dict[str, Any] | None:
        """A JSON settings file from the weights folder (a model folder's config.json), or None when absent."""
        path = weight.find(self.weights_dir)
        if path is None:
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PreprocessorWeightsInvalid(f"{weight.file_name}: not readable JSON ({exc}); {NOTHING_RUN}") from exc
        if not isinstance(data, dict):
            raise PreprocessorWeightsInvalid(f"{weight.file_name}: expected a JSON object; {NOTHING_RUN}")
        return data

    def loaded_files(self) -> tuple[str, ...]:
        return tuple(self._networks)

    def load_count(self, file_name: str) -> int:
        """How often a weight file was read (stays 1 while cached)."""
        return self._loads.get(file_name, 0)

    def unload(self) -> None:
        """Drop every cached network (e.g. before loading a large checkpoint)."""
        with self._lock:
            self._networks.clear()

    # -- validation
    def _resolution(self, spec: PreprocessorSpec, resolution: object) -> int:
        if isinstance(resolution, (int, float, np.integer, np.floating)) and not isinstance(resolution, bool) \
                and float(resolution) == -1:
            return spec.default_resolution  # the unit's "-1 = default" convention
        value = _number(resolution, "processor_res")
        if not value.is_integer() or not MIN_RESOLUTION <= value <= MAX_RESOLUTION:
            raise PreprocessorError(f"processor_res must be a whole number from {MIN_RESOLUTION} to {MAX_RESOLUTION} "
                                    f"(or -1 for the default {spec.default_resolution}), got {resolution!r}")
        return int(value)

    @staticmethod
    def _slider(spec: PreprocessorSpec, field: str, value: object) -> float | None:
        param: ThresholdParam | None = getattr(spec, field)
        if param is None:
            return None  # clients send threshold_a/b for every unit; a preprocessor without that slider ignores it
        if value is None:
            return float(param.default)
        number = _number(value, f"{field} ({param.label})")
        if number == -1 and not param.minimum <= -1 <= param.maximum:
            return float(param.default)
        if not param.minimum <= number <= param.maximum:
            raise PreprocessorError(f"{spec.name}: {field} ({param.label}) must be from {param.minimum:g} to "
                                    f"{param.maximum:g} (or -1 for the default {param.default:g}), got {value!r}")
        return number

    @staticmethod
    def _mask(spec: PreprocessorSpec, mask: Image.Image | None, size: tuple[int, int]) -> np.ndarray | None:
        if mask is None or not spec.accepts_mask:
            return None
        if not isinstance(mask, Image.Image):
            raise PreprocessorError(f"{spec.name}: mask must be a PIL image, not {type(mask).__name__}")
        if mask.size != size:
            raise PreprocessorError(f"{spec.name}: mask is {mask.size[0]}x{mask.size[1]} but the image is "
                                    f"{size[0]}x{size[1]}; they must be the same size")
        return np.asarray(mask.convert("L")) > 127  # sd-webui-controlnet binarises at 127

    def run(self, name: str, image: Image.Image, resolution: int, threshold_a: float | None = None,
            threshold_b: float | None = None, seed: int = 0, mask: Image.Image | None = None) -> Image.Image:
        """Make the control map for one unit.

        The map's short side is `resolution` (processor_res) and its aspect is the image's; preprocessors whose
        resolution slider sd-webui-controlnet hides (none, invert, tile_resample, inpaint*) keep the input size.
        The result is RGB, except inpaint/inpaint_only: RGBA with the binarised mask in alpha (see
        `inpaint_control_hint`); `mask` (white = inpaint) is read only by those and must match the image size.
        `seed` only matters for shuffle. Every bad argument raises PreprocessorError before anything runs; a missing
        weight file raises PreprocessorWeightsMissing, an unsafe or mismatched one PreprocessorWeightsInvalid.
        """
        spec = self.registry.get(name)
        if not isinstance(image, Image.Image):
            raise PreprocessorError(f"image must be a PIL image, not {type(image).__name__}")
        if image.width < 1 or image.height < 1:
            raise PreprocessorError(f"image is empty ({image.width}x{image.height})")
        res = self._resolution(spec, resolution)
        thr_a = self._slider(spec, "threshold_a", threshold_a)
        thr_b = self._slider(spec, "threshold_b", threshold_b)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= 0xFFFFFFFF:
            raise PreprocessorError(f"seed must be a whole number from 0 to {0xFFFFFFFF}, got {seed!r}")
        mask_array = self._mask(spec, mask, image.size)
        missing = tuple(w for w in spec.needs_weights if w.find(self.weights_dir) is None)
        if missing:
            raise PreprocessorWeightsMissing(spec.name, self.weights_dir, missing)

        inp = PreprocessorInput(image=_image_to_rgb(image), resolution=res, threshold_a=thr_a, threshold_b=thr_b,
                                seed=int(seed), mask=mask_array)
        fn = self.registry.function(spec.name)
        if spec.needs_weights:
            import torch

            with torch.no_grad():
                result = fn(inp, self)
        else:
            result = fn(inp, self)
        result = np.asarray(result)
        if result.dtype != np.uint8 or result.ndim not in (2, 3):
            raise PreprocessorError(f"{spec.name} returned a {result.dtype} array of shape {result.shape}")
        if result.ndim == 3 and result.shape[2] == 4 and spec.accepts_mask:
            return Image.fromarray(np.ascontiguousarray(result))  # H x W x 4 uint8 -> RGBA
        return Image.fromarray(np.ascontiguousarray(_hwc3(result)))  # H x W x 3 uint8 -> RGB


def preprocess_batch(images: np.ndarray, preprocessor: str, weights_dir: Path) -> np.ndarray:
    """uint8 [N, H, W, 3] images -> uint8 [N, H, W] single-channel maps at the images' own size (a trainer's and an
    evaluator's control maps, made exactly as generation makes them)."""
    runner = PreprocessorRunner(default_preprocessors(), weights_dir=weights_dir)
    side = images.shape[1]
    maps = np.empty(images.shape[:3], dtype=np.uint8)
    for i in range(len(images)):
        maps[i] = np.asarray(runner.run(preprocessor, Image.fromarray(images[i]), side))[..., 0]
    return maps
