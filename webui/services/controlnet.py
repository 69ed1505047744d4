"""ControlNet as a service: the model folder, unit validation with sd-webui-controlnet's field names, preprocessing,
loading (cached) and the denoise extension for one job, plus the infotext each unit writes.

Interfaces (the ControlNet builtin extension's UI section and tab, the CLI, the HTTP API) hand units in as dicts in
the A1111 API spelling (`alwayson_scripts.controlnet.args`); everything is checked before a job starts.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from webui.engine.controlnet import ControlMode, ControlNetExtension, ControlUnit, control_image
from webui.engine.controlnet_loader import (
    ControlNetLoadError,
    LoadedControlNet,
    check_compatible,
    load_controlnet,
)
from webui.engine.loader import LoadedModel
from webui.engine.preprocessors import (
    ControlResizeMode,
    PreprocessorError,
    PreprocessorRunner,
    default_preprocessors,
    parse_resize_mode,
    pixel_perfect_resolution,
)
from webui.services.hashing import HashCache
from webui.services.requests import Finite, RequestError, Whole, parse_field
from webui.services.uploads import UploadLimits, load_image, load_image_base64

CONTROLNET_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
NO_MODEL = ("", "none", "None")
# Fields sd-webui-controlnet clients send that have no effect here (memory options, hires handling, UI state).
IGNORED_FIELDS = frozenset({
    "lowvram", "low_vram", "guessmode", "hr_option", "save_detected_map", "is_ui", "input_mode", "batch_images",
    "output_dir", "loopback", "use_preview_as_input", "generated_image", "enabled_by_api", "advanced_weighting",
    "inpaint_crop_input_image", "effective_region_mask", "ipadapter_input", "pulid_mode", "union_control_type",
})
_MODE_ALIASES = {
    "0": ControlMode.BALANCED, "balanced": ControlMode.BALANCED,
    "1": ControlMode.PROMPT, "prompt": ControlMode.PROMPT, "my prompt is more important": ControlMode.PROMPT,
    "2": ControlMode.CONTROLNET, "controlnet": ControlMode.CONTROLNET,
    "controlnet is more important": ControlMode.CONTROLNET,
}


def parse_control_mode(value: Any, field_name: str) -> ControlMode:
    """A control mode as the API, the UI or the CLI spells it: its label, 0/1/2, or balanced/prompt/controlnet."""
    if isinstance(value, ControlMode):
        return value
    key = str(value.value if hasattr(value, "value") else value).strip().lower()
    if key not in _MODE_ALIASES:
        labels = ", ".join(mode.value for mode in ControlMode)
        raise RequestError(field_name, f"{value!r} is not a control mode (use one of: {labels}; or 0, 1, 2)")
    return _MODE_ALIASES[key]


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise RequestError(name, f"{value!r} is not true or false")


def unit_label(index: int) -> str:
    """How messages name unit `index`: counted from 0, as the accordion ("ControlNet Unit 0") and the infotext
    ("ControlNet 0") count."""
    return f"controlnet unit {index}"


@dataclass
class ControlUnitRequest:
    """One ControlNet unit with sd-webui-controlnet's API field names and defaults."""

    enabled: bool = True
    module: str = "none"
    model: str = "None"
    weight: float = 1.0
    image: Image.Image | None = None  # None in img2img: the init image is the control image
    mask_image: Image.Image | None = None
    resize_mode: ControlResizeMode = ControlResizeMode.CROP_AND_RESIZE
    processor_res: int = -1  # -1: the preprocessor's default
    threshold_a: float | None = None
    threshold_b: float | None = None
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: ControlMode = ControlMode.BALANCED
    pixel_perfect: bool = False

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], index: int, limits: UploadLimits | None = None, with_images: bool = True
    ) -> "ControlUnitRequest":
        """Parse one unit from the API/UI/CLI; `index` (0-based) names the unit in every message. Without
        `with_images` the images are not decoded (infotext needs only the other fields)."""
        where = unit_label(index)
        if not isinstance(data, dict):
            raise RequestError(where, f"a unit must be an object of fields, not {type(data).__name__}")
        values = dict(data)
        if "input_image" in values and values.get("image") is None:  # older clients
            values["image"] = values.pop("input_image")
        values.pop("input_image", None)
        if "mask" in values and values.get("mask_image") is None:
            values["mask_image"] = values.pop("mask")
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in values if k not in known and k not in IGNORED_FIELDS)
        if unknown:
            raise RequestError(f"{where} {unknown[0]}", f"unknown field (known: {', '.join(sorted(known))})")
        unit = cls()
        if "enabled" in values:
            unit.enabled = _as_bool(values["enabled"], f"{where} enabled")
        if values.get("module") is not None:
            unit.module = str(values["module"]).strip() or "none"
        if values.get("model") is not None:
            unit.model = str(values["model"]).strip() or "None"
        if values.get("weight") is not None:
            unit.weight = parse_field(Finite, values["weight"], f"{where} weight")
        for name in ("image", "mask_image"):
            value = values.get(name)
            if value is None or value == "" or not with_images:
                continue
            limits = limits or UploadLimits.from_env()
            if isinstance(value, dict) and "image" in value:  # sd-webui-controlnet's {"image": ..., "mask": ...}
                value = value["image"]
            if isinstance(value, str):  # always base64 (never a server path: API input must not read files)
                setattr(unit, name, load_image_base64(value, f"{where} {name}", limits))
            elif isinstance(value, (Image.Image, np.ndarray, bytes)):
                setattr(unit, name, load_image(value, f"{where} {name}", limits))
            else:
                raise RequestError(f"{where} {name}", f"expected a base64 image, not {type(value).__name__}")
        if values.get("resize_mode") is not None:
            try:
                unit.resize_mode = parse_resize_mode(values["resize_mode"])
            except (PreprocessorError, ValueError) as exc:
                raise RequestError(f"{where} resize_mode", str(exc)) from exc
        if values.get("processor_res") is not None:
            unit.processor_res = parse_field(Whole, values["processor_res"], f"{where} processor_res")
        for name in ("threshold_a", "threshold_b"):
            if values.get(name) is not None:
                setattr(unit, name, parse_field(Finite, values[name], f"{where} {name}"))
        for name in ("guidance_start", "guidance_end"):
            if values.get(name) is not None:
                setattr(unit, name, parse_field(Finite, values[name], f"{where} {name}"))
        if values.get("control_mode") is not None:
            unit.control_mode = parse_control_mode(values["control_mode"], f"{where} control_mode")
        if "pixel_perfect" in values:
            unit.pixel_perfect = _as_bool(values["pixel_perfect"], f"{where} pixel_perfect")
        return unit


def units_from_controls(
    controls: dict[str, Any], limits: UploadLimits | None = None, with_images: bool = True
) -> list[ControlUnitRequest]:
    """The enabled units of a request's `controlnet` controls: `{"args": [unit, ...]}` (A1111's alwayson_scripts
    shape), `{"units": [...]}`, or the UI's flat `unit<i>.<field>` values."""
    if "args" in controls or "units" in controls:
        raw = controls.get("args", controls.get("units"))
        if not isinstance(raw, list):
            raise RequestError("controlnet", "units must be a list of unit objects")
    else:
        grouped: dict[int, dict[str, Any]] = {}
        for key, value in controls.items():
            prefix, _, name = key.partition(".")
            if prefix.startswith("unit") and prefix[4:].isdigit() and name:
                grouped.setdefault(int(prefix[4:]), {})[name] = value
        raw = [grouped[i] for i in sorted(grouped)]
    units = [ControlUnitRequest.from_dict(item, index, limits, with_images) for index, item in enumerate(raw)]
    return [unit for unit in units if unit.enabled]


@dataclass
class PreparedUnit:
    """A validated unit with its loaded network and its control map (what the job samples with)."""

    request: ControlUnitRequest
    controlnet: LoadedControlNet
    detected_map: Image.Image
    model_title: str  # "name [hash8]", as infotext writes it
    processor_res: int


@dataclass
class ControlNetJob:
    """The denoise extension for one job and what it used (for infotext and "save detected map")."""

    extension: ControlNetExtension
    units: list[PreparedUnit] = field(default_factory=list)


class ControlNetService:
    """Owns the ControlNet folder, a small cache of loaded networks, and the preprocessor runner."""

    def __init__(
        self,
        folder: Path,
        preprocessor_dir: Path,
        hashes: HashCache | None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        cache_size: int = 2,
        limits: UploadLimits | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.preprocessor_dir = Path(preprocessor_dir)
        self.hashes = hashes
        self.device = torch.device(device)
        self.dtype = dtype
        self.cache_size = cache_size
        self.limits = limits  # upload limits for control images (None: UploadLimits.from_env())
        self.preprocessors = PreprocessorRunner(default_preprocessors(), self.preprocessor_dir, self.device)
        self._cache: OrderedDict[tuple[Path, float], LoadedControlNet] = OrderedDict()
        self._lock = threading.Lock()

    # ----- the model folder -----
    def files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.rglob("*") if p.is_file() and p.suffix.lower() in CONTROLNET_SUFFIXES)

    def names(self) -> list[str]:
        """File stems, for dropdowns (the API also accepts "name [hash]" and file names)."""
        return [p.stem for p in self.files()]

    def title(self, path: Path) -> str:
        """"name [hash8]" as sd-webui-controlnet writes models in infotext and the API."""
        if self.hashes is None:
            return path.stem
        return f"{path.stem} [{self.hashes.short_hash(path)[:8]}]"

    def resolve(self, name: str, field_name: str = "controlnet model") -> Path:
        wanted = name.strip()
        bare = wanted.split(" [", 1)[0].strip() if wanted.endswith("]") else wanted
        for path in self.files():
            if bare in (path.stem, path.name):
                return path
        available = ", ".join(self.names()) or f"none yet: put ControlNet files in {self.folder}"
        raise RequestError(field_name, f"no ControlNet named {name!r} in {self.folder} (available: {available})")

    def load(self, path: Path) -> LoadedControlNet:
        """Load (or reuse) a ControlNet on the service's device and dtype."""
        key = (path.resolve(), path.stat().st_mtime)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        loaded = load_controlnet(path, dtype=self.dtype).to(self.device, self.dtype)
        with self._lock:
            self._cache[key] = loaded
            while len(self._cache) > max(0, self.cache_size):
                self._cache.popitem(last=False)
        return loaded

    # ----- preprocessing -----
    def preprocess(
        self, module: str, image: Image.Image, resolution: int = -1, threshold_a: float | None = None,
        threshold_b: float | None = None, seed: int = 0, mask: Image.Image | None = None, field_name: str = "module",
    ) -> Image.Image:
        """Run one preprocessor (the workbench and each unit); errors become RequestError with the same message."""
        try:
            return self.preprocessors.run(module, image, resolution, threshold_a, threshold_b, seed % 2**32, mask)
        except PreprocessorError as exc:
            raise RequestError(field_name, str(exc)) from exc

    # ----- one job -----
    def prepare(
        self,
        units: list[ControlUnitRequest],
        model: LoadedModel,
        width: int,
        height: int,
        seed: int = 0,
        init_image: Image.Image | None = None,
        init_mask: Image.Image | None = None,
    ) -> ControlNetJob | None:
        """Validate every unit, run its preprocessor and load its network; None when no unit is enabled.

        Everything that can be wrong with a unit is found here, before sampling starts.
        """
        prepared: list[PreparedUnit] = []
        for index, unit in enumerate(units):
            where = unit_label(index)
            if not 0.0 <= unit.guidance_start < unit.guidance_end <= 1.0:
                raise RequestError(f"{where} guidance", f"start ({unit.guidance_start:g}) and end "
                                   f"({unit.guidance_end:g}) must satisfy 0 <= start < end <= 1")
            if not 0.0 <= unit.weight <= 2.0:
                raise RequestError(f"{where} weight", f"{unit.weight:g} is outside 0..2")
            if unit.model in NO_MODEL:
                raise RequestError(f"{where} model", "choose a ControlNet model for the enabled unit "
                                   f"(files in {self.folder})")
            image = unit.image if unit.image is not None else init_image
            if image is None:
                raise RequestError(f"{where} image", "the unit is enabled but has no control image: upload one "
                                   "(in img2img the input image is used when the unit has none)")
            path = self.resolve(unit.model, f"{where} model")
            resolution = unit.processor_res
            if unit.pixel_perfect:
                resolution = pixel_perfect_resolution(image.size, (width, height), unit.resize_mode)
            mask = unit.mask_image if unit.mask_image is not None else init_mask
            if mask is not None and mask.size != image.size:
                mask = mask.resize(image.size, Image.Resampling.NEAREST)
            detected = self.preprocess(unit.module, image, resolution, unit.threshold_a, unit.threshold_b, seed,
                                       mask, f"{where} module")
            try:
                loaded = self.load(path)
                check_compatible(loaded, model)
            except ControlNetLoadError as exc:
                raise RequestError(f"{where} model", str(exc)) from exc
            prepared.append(PreparedUnit(unit, loaded, detected, self.title(path), resolution))
        if not prepared:
            return None
        engine_units = [
            ControlUnit(
                controlnet=p.controlnet.model,
                image=control_image(p.detected_map, width, height, p.request.resize_mode.int_value),
                weight=p.request.weight,
                guidance_start=p.request.guidance_start,
                guidance_end=p.request.guidance_end,
                mode=p.request.control_mode,
            )
            for p in prepared
        ]
        return ControlNetJob(ControlNetExtension(engine_units), prepared)

    def infotext(self, units: list[ControlUnitRequest]) -> dict[str, str]:
        """`ControlNet <i>` entries as sd-webui-controlnet writes them (one quoted value per unit)."""
        entries: dict[str, str] = {}
        for index, unit in enumerate(units):
            try:
                model = self.title(self.resolve(unit.model))
            except RequestError:
                model = unit.model
            parts = [
                ("Module", unit.module),
                ("Model", model),
                ("Weight", f"{unit.weight:g}"),
                ("Resize Mode", unit.resize_mode.value),
                ("Processor Res", str(unit.processor_res)),
                ("Threshold A", "" if unit.threshold_a is None else f"{unit.threshold_a:g}"),
                ("Threshold B", "" if unit.threshold_b is None else f"{unit.threshold_b:g}"),
                ("Guidance Start", f"{unit.guidance_start:g}"),
                ("Guidance End", f"{unit.guidance_end:g}"),
                ("Pixel Perfect", str(unit.pixel_perfect)),
                ("Control Mode", unit.control_mode.value),
            ]
            entries[f"ControlNet {index}"] = ", ".join(f"{key}: {value}" for key, value in parts if value != "")
        return entries


def parse_unit_infotext(value: str) -> dict[str, Any]:
    """One `ControlNet <i>` infotext value back into API unit fields (PNG Info, paste)."""
    names = {
        "Module": "module", "Model": "model", "Weight": "weight", "Resize Mode": "resize_mode",
        "Processor Res": "processor_res", "Threshold A": "threshold_a", "Threshold B": "threshold_b",
        "Guidance Start": "guidance_start", "Guidance End": "guidance_end", "Pixel Perfect": "pixel_perfect",
        "Control Mode": "control_mode",
    }
    unit: dict[str, Any] = {"enabled": True}
    for part in value.split(", "):
        key, sep, text = part.partition(": ")
        if not sep or key not in names:
            continue
        name = names[key]
        if name in ("weight", "threshold_a", "threshold_b", "guidance_start", "guidance_end"):
            unit[name] = float(text)
        elif name == "processor_res":
            unit[name] = int(float(text))
        elif name == "pixel_perfect":
            unit[name] = text.strip() == "True"
        else:
            unit[name] = text
    return unit
