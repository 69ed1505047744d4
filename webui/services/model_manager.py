"""The model manager: the one object that owns loaded checkpoints and moves weights between devices.

It scans `models/Stable-diffusion/` and `models/VAE/`, loads on demand, keeps the active model on the compute device and
a few recently used ones in RAM (LRU), and never lets a failed load disturb the model that was working.

The cache holds base models only. A job gets its model through `checkout(recipe)`: the base model with the recipe's VAE
and weight patches (LoRAs) applied for as long as the job holds the device, and restored exactly afterwards
(ComfyUI's clone-and-patch, InvokeAI's LayerPatcher). Nothing a job chooses is process-wide.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol

import torch

from webui.engine.checkpoint_io import (
    CHECKPOINT_SUFFIXES,
    CheckpointReadError,
    read_checkpoint,
    read_key_shapes,
    read_metadata,
)
from webui.engine.families import UnsupportedCheckpointError, detect_family
from webui.engine.loader import (
    LoadedModel,
    ModelLoadError,
    PredictionType,
    TextEncoder,
    build_model,
    build_vae,
    declared_resolution,
    read_vae_override,
)
from webui.engine.offload import OFFLOAD_MODES, OffloadMode, choose_offload, device_bytes, make_offload
from webui.engine.patching import PatchError, WeightPatch, patched
from webui.engine.weight_packing import move_packed
from webui.services.hashing import HashCache

log = logging.getLogger("webui.models")
DEFAULT_MODEL_NAME = "latent-studio-shapes"
Precision = Literal["fp32", "fp16", "bf16"]
_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
AUTO_OFFLOAD = "auto"
OFFLOAD_CHOICES: tuple[str, ...] = (AUTO_OFFLOAD, *OFFLOAD_MODES)
# Device memory left for activations when deciding whether a model fits a GPU without a budget (Forge's default).
ACTIVATION_RESERVE = 2**30


class ModelError(ValueError):
    """Choosing or loading a model failed; the previous model is still loaded and usable."""


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint file found on disk."""

    name: str  # path relative to the checkpoint folder, without the suffix (A1111's model name)
    path: Path

    @property
    def file_name(self) -> str:
        return self.path.name


AUTOMATIC_VAE = "Automatic"  # the checkpoint's own VAE (A1111: a same-named VAE file would win; not yet)
NO_VAE = "None"  # also the checkpoint's own VAE, as in A1111


class PatchSource(Protocol):
    """Something a job applies to the model's weights, e.g. one LoRA at its strengths."""

    def patches(self, model: LoadedModel) -> list[WeightPatch]: ...


@dataclass(frozen=True)
class ModelRecipe:
    """What one job runs on: a checkpoint, a VAE choice and weight patches. Built per request, never stored."""

    checkpoint: str | None = None  # None: the active (or default) checkpoint
    vae: str = AUTOMATIC_VAE
    patches: tuple[PatchSource, ...] = ()


@dataclass(frozen=True)
class ModelResidency:
    """Where one loaded checkpoint's weights are: on the compute device (the active model) or parked in RAM."""

    name: str
    where: Literal["device", "ram"]
    device: str
    dtype: str
    bytes: int
    # of `bytes`, what it shares with another loaded checkpoint (an identical VAE or text encoder)
    shared_bytes: int = 0
    offload: str = ""  # "medvram" or "lowvram" while it runs offloaded, with why ("auto: 3.4 GB > 2.0 GB budget")


def module_bytes(modules: Iterable[torch.nn.Module]) -> int:
    """The bytes these modules' parameters and buffers hold, each module and each storage counted once (a component
    two checkpoints share, or tied tensors, are not doubled)."""
    seen: set[tuple[str, int]] = set()
    total = 0
    for module in {id(module): module for module in modules}.values():
        for tensor in [*module.parameters(), *module.buffers()]:
            storage = tensor.untyped_storage()
            key = (str(tensor.device), storage.data_ptr())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
    return total


def weight_bytes(model: LoadedModel) -> int:
    """The bytes one model's weights hold."""
    return module_bytes(model.modules())


def _same_bytes(new: torch.Tensor, kept: torch.Tensor) -> bool:
    """Whether `new`, stored as `kept` is, would be bit for bit `kept` (NaN and -0.0 compared as bits)."""
    if new.shape != kept.shape or new.dtype.is_floating_point != kept.dtype.is_floating_point:
        return False
    converted = new.to(kept.device, kept.dtype)
    if kept.is_floating_point():
        bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}.get(kept.element_size())
        if bits is not None:
            return torch.equal(converted.contiguous().view(bits), kept.contiguous().view(bits))
    return torch.equal(converted, kept)


def identical_modules(new: torch.nn.Module, kept: torch.nn.Module) -> bool:
    """Same class, same configuration and the same weights byte for byte, once `new`'s are stored as `kept`'s are:
    then `new` can be dropped and `kept` used in its place. Stops at the first tensor that differs."""
    if type(new) is not type(kept) or _config_of(new) != _config_of(kept):
        return False
    new_state, kept_state = new.state_dict(), kept.state_dict()
    if new_state.keys() != kept_state.keys():
        return False
    return all(_same_bytes(new_state[key], kept_state[key]) for key in kept_state)


def _config_of(module: torch.nn.Module) -> dict:
    config = getattr(module, "config", None)
    if config is None:
        return {}
    return dict(config.to_dict() if hasattr(config, "to_dict") else config)


def choose_device(requested: str | None) -> torch.device:
    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise ModelError(f"--device {requested}: CUDA is not available on this machine; use --device cpu")
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def choose_dtype(device: torch.device, requested: str | None) -> torch.dtype:
    if requested:
        if requested not in _DTYPES:
            raise ModelError(f"--precision {requested}: choose one of {', '.join(_DTYPES)}")
        if device.type == "cpu" and requested == "fp16":
            raise ModelError("--precision fp16 is not supported on the CPU; use fp32 or bf16")
        return _DTYPES[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class ModelManager:
    """Loads, caches and switches checkpoints. Thread-safe; one instance per app."""

    def __init__(
        self,
        checkpoint_dir: Path,
        vae_dir: Path,
        hashes: HashCache,
        device: torch.device,
        dtype: torch.dtype,
        ram_cache_size: int = 1,
        vram_budget: int | None = None,
        ram_budget: int | None = None,
        offload_mode: str = AUTO_OFFLOAD,
    ) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.vae_dir = Path(vae_dir)
        self.hashes = hashes
        self.device = device
        self.dtype = dtype
        self.ram_cache_size = ram_cache_size
        # Byte budgets of the two LRU levels. On the device, None keeps only the active model there (A1111's
        # behaviour); a budget keeps as many recently used models as fit, so switching back is a pointer swap.
        # In RAM, the count (`ram_cache_size`) and, when set, the bytes both bound the cache.
        self.vram_budget = vram_budget
        self.ram_budget = ram_budget
        # "auto": a model that does not fit the device (the VRAM budget, else the GPU's memory) runs offloaded, and the
        # log and the Models tab say so; "medvram"/"lowvram" (the flags) offload every model.
        self.offload_mode = self._checked_offload_mode(offload_mode)
        self._offload_notes: dict[str, str] = {}  # model name -> why it runs offloaded
        self._placed_under: dict[str, tuple[str, int | None]] = {}  # model name -> (offload mode, budget) at placement
        self.prediction_overrides: dict[str, PredictionType] = {}
        self.vae_choice: str = AUTOMATIC_VAE  # the default for requests that name no VAE (A1111's sd_vae setting)
        self._lock = threading.RLock()
        self._vaes: OrderedDict[tuple[Path, float, int], torch.nn.Module] = OrderedDict()  # per-job VAE choices
        self._checkpoints: dict[str, CheckpointInfo] = {}
        self._on_device: OrderedDict[str, LoadedModel] = OrderedDict()  # least recently used first; last = active
        self._ram_cache: OrderedDict[str, LoadedModel] = OrderedDict()
        # Called with each model just placed on the device (the optional U-Net compiler attaches itself here).
        self.on_placed: list[Callable[[LoadedModel], None]] = []
        self.refresh()

    # ----- discovery -----
    def refresh(self) -> list[CheckpointInfo]:
        """Rescan the checkpoint folder (recursive, A1111 naming)."""
        found: dict[str, CheckpointInfo] = {}
        if self.checkpoint_dir.is_dir():
            for path in sorted(self.checkpoint_dir.rglob("*")):
                if path.is_file() and path.suffix.lower() in CHECKPOINT_SUFFIXES:
                    name = path.relative_to(self.checkpoint_dir).with_suffix("").as_posix()
                    found[name] = CheckpointInfo(name=name, path=path)
        with self._lock:
            self._checkpoints = found
        return list(found.values())

    def checkpoints(self) -> list[CheckpointInfo]:
        with self._lock:
            return list(self._checkpoints.values())

    def vae_names(self) -> list[str]:
        names = ["Automatic", "None"]
        if self.vae_dir.is_dir():
            names += [
                p.relative_to(self.vae_dir).as_posix()
                for p in sorted(self.vae_dir.rglob("*"))
                if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES
            ]
        return names

    def default_checkpoint(self) -> CheckpointInfo | None:
        checkpoints = self.checkpoints()
        for info in checkpoints:
            if info.name == DEFAULT_MODEL_NAME:
                return info
        return checkpoints[0] if checkpoints else None

    def resolve(self, name_or_path: str) -> CheckpointInfo:
        """Accept a model name, a `name [hash]` title, a file name, or a path to a file."""
        text = name_or_path.strip()
        bare = text.split(" [", 1)[0]
        with self._lock:
            if bare in self._checkpoints:
                return self._checkpoints[bare]
            for info in self._checkpoints.values():
                if bare in (info.file_name, info.path.stem):
                    return info
        path = Path(text).expanduser()
        if path.is_file():
            return CheckpointInfo(name=path.stem, path=path.resolve())
        raise ModelError(f"model {text!r} not found in {self.checkpoint_dir} (press refresh after adding files)")

    def default_size(self, name: str | None = None) -> tuple[int, int]:
        """(width, height) the UI should start with, read from the file header without loading the model."""
        with self._lock:
            active = self._active
            if active and (name is None or self.resolve(name).name == active[0]):
                return active[1].default_resolution
        info = self.resolve(name) if name else self.default_checkpoint()
        if info is None:
            return (512, 512)
        try:
            declared = declared_resolution(read_metadata(info.path))
            if declared:
                return declared
            side = detect_family(read_key_shapes(info.path), info.file_name).native_resolution
        except (CheckpointReadError, UnsupportedCheckpointError):
            return (512, 512)
        return (side, side)

    def family_title(self, info: CheckpointInfo) -> str:
        """The model family of a checkpoint file ("SD 1.x", ...), read from its header without loading it; raises
        ModelError saying why a file is unusable (unreadable, not a checkpoint, an unknown layout)."""
        try:
            return detect_family(read_key_shapes(info.path), info.file_name).title
        except (CheckpointReadError, UnsupportedCheckpointError) as exc:
            raise ModelError(str(exc)) from exc

    def title(self, info: CheckpointInfo) -> str:
        """A1111 dropdown title: `name [shorthash]` (hashes the file if needed)."""
        return f"{info.name} [{self.hashes.short_hash(info.path)}]"

    def display_title(self, info: CheckpointInfo) -> str:
        """`name [shorthash]` when the hash is already known, else just the name: listing many multi-GB files must
        not hash them all at start-up. Hashes are computed when a model is first used and show after a refresh."""
        known = self.hashes.cached_short_hash(info.path)
        return f"{info.name} [{known}]" if known else info.name

    # ----- loading -----
    @property
    def _active(self) -> tuple[str, LoadedModel] | None:
        """The most recently used model on the device: what a request without a checkpoint runs on."""
        return next(reversed(self._on_device.items()), None)

    @property
    def active(self) -> LoadedModel | None:
        with self._lock:
            return self._active[1] if self._active else None

    @property
    def active_name(self) -> str | None:
        with self._lock:
            return self._active[0] if self._active else None

    def _load_fresh(self, info: CheckpointInfo) -> LoadedModel:
        """Read and build a checkpoint, its tensors still views of the memory-mapped file (the first placement packs
        and converts them in one copy), with any VAE or text encoder that a loaded checkpoint already holds byte for
        byte shared instead of kept twice."""
        try:
            raw = read_checkpoint(info.path)
            model = build_model(raw, dtype=None, prediction_override=self.prediction_overrides.get(info.name),
                                name=info.name)
        except (CheckpointReadError, UnsupportedCheckpointError, ModelLoadError) as exc:
            raise ModelError(str(exc)) from exc
        self._share_identical_components(model)
        return model

    def _share_identical_components(self, model: LoadedModel) -> None:
        """Many checkpoints of one family carry the same VAE and text encoders (merges, fine-tunes of the U-Net):
        use the loaded copy instead of a second one. Compared with the kept copy's dtype and device, bit for bit."""
        loaded = [*self._on_device.values(), *self._ram_cache.values()]
        for other in loaded:
            if other.family.name == model.family.name and model.vae is not other.vae and identical_modules(
                    model.vae, other.vae):
                model.vae = other.vae
                break
        for index, encoder in enumerate(model.text_encoders):
            for other in loaded:
                if (other.family.name == model.family.name and len(other.text_encoders) > index
                        and other.text_encoders[index].slot == encoder.slot
                        and identical_modules(encoder.model, other.text_encoders[index].model)):
                    model.text_encoders[index] = TextEncoder(slot=encoder.slot, model=other.text_encoders[index].model)
                    break

    def _dtype_for(self, model: LoadedModel, module: torch.nn.Module, on_device: bool) -> torch.dtype:
        """fp16 VAEs overflow into NaN (the classic SDXL VAE), so with fp16 the VAE stays fp32, on the device and in
        RAM alike; decoding in fp32 is cheap. Models parked in RAM keep the compute dtype (fp16 halves RAM use),
        except on a CPU-only run, where they are fp32."""
        if module is model.vae and self.dtype == torch.float16:
            return torch.float32
        return self.dtype if on_device else self._ram_dtype

    def _place(self, model: LoadedModel, offload: OffloadMode | None = None) -> LoadedModel:
        """Onto the compute device, each module's weights in one copy (`weight_packing`); or, offloaded, into RAM
        with hooks that bring each component (medvram) or layer (lowvram) to the device for its own call."""
        if offload is not None:
            model.offload = make_offload(
                offload, model.modules(), self.device,
                device_dtype=lambda module: self._dtype_for(model, module, on_device=True),
                home_dtype=lambda module: self._dtype_for(model, module, on_device=False),
                pin=self.device.type == "cuda")
            model.offload.attach()
            return model
        for module in model.modules():
            move_packed(module, self.device, self._dtype_for(model, module, on_device=True))
        return model

    @staticmethod
    def _end_offload(model: LoadedModel) -> None:
        """Remove an offloaded model's hooks (its weights are in RAM then); no-op for a model placed whole."""
        if model.offload is not None:
            model.offload.detach()
            model.offload = None

    def _device_size(self, model: LoadedModel, modules: Iterable[torch.nn.Module]) -> int:
        return sum(device_bytes(module, self._dtype_for(model, module, on_device=True)) for module in modules)

    def _device_capacity(self) -> int | None:
        """Bytes a model may take on the device: the VRAM budget, else on a GPU what is free, plus what torch's
        allocator caches unused and what this manager's models hold (both can be freed), less an activation reserve;
        None (no limit) on the CPU."""
        if self.vram_budget is not None:
            return self.vram_budget
        if self.device.type != "cuda":
            return None
        free, _total = torch.cuda.mem_get_info(self.device)
        cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return free + cached + self._device_bytes() - ACTIVATION_RESERVE

    def _offload_for(self, name: str, model: LoadedModel) -> OffloadMode | None:
        """The offload mode this model gets now (None: placed whole); an automatic choice is logged with its reason."""
        self._offload_notes.pop(name, None)
        if self.offload_mode != AUTO_OFFLOAD:
            self._offload_notes[name] = f"{self.offload_mode} (--{self.offload_mode} or setting core.offload)"
            return self.offload_mode  # type: ignore[return-value]
        capacity = self._device_capacity()
        total = self._device_size(model, model.modules())
        largest = max(self._device_size(model, [module]) for module in model.modules())
        mode = choose_offload(total, largest, capacity)
        if mode is not None:
            note = f"{mode} (auto: {total / 2**30:.2f} GB of weights > {capacity / 2**30:.2f} GB on {self.device})"
            self._offload_notes[name] = note
            log.warning("%s does not fit on %s (%.2f GB of weights, %.2f GB available): running it with --%s, "
                        "slower; free device memory or raise the VRAM budget to run it whole", name, self.device,
                        total / 2**30, capacity / 2**30, mode)
        return mode

    @staticmethod
    def _checked_offload_mode(mode: str) -> str:
        if mode not in OFFLOAD_CHOICES:
            raise ModelError(f"offload must be one of {', '.join(OFFLOAD_CHOICES)} (got {mode!r})")
        return mode

    def set_offload_mode(self, mode: str) -> None:
        """The offload setting, live: models on the device are placed again under it at their next use."""
        with self._lock:
            self.offload_mode = self._checked_offload_mode(mode)

    def _ids_on_device(self, besides: LoadedModel | None = None) -> set[int]:
        """The modules (by id) of the models placed whole on the device, other than `besides`: what must stay there."""
        return {id(module) for other in self._on_device.values() if other is not besides and other.offload is None
                for module in other.modules()}

    def _park(self, model: LoadedModel) -> None:
        """Into RAM (pinned when a GPU will take the weights back), except the modules that a model still on the
        device shares with it."""
        self._end_offload(model)
        in_use = self._ids_on_device(besides=model)
        for module in model.modules():
            if id(module) not in in_use:
                move_packed(module, "cpu", self._dtype_for(model, module, on_device=False),
                            pin=self.device.type == "cuda")

    def choice_name(self, name: str | None = None) -> str:
        """The checkpoint `get(name)` would use, without loading it: the named one, else the active, else the
        default (a job sent to another process must name its model)."""
        with self._lock:
            if name is None and self._active:
                return self._active[0]
            if name is None:
                default = self.default_checkpoint()
                if default is None:
                    raise ModelError(f"no checkpoints found; put a .safetensors file in {self.checkpoint_dir}")
                return default.name
            return self.resolve(name).name

    def get(self, name: str | None = None) -> LoadedModel:
        """The requested (or active, or default) model on the compute device, loading it if needed."""
        with self._lock:
            placement = (self.offload_mode, self.vram_budget)
            if name is None and self._active and self._placed_under.get(self._active[0]) == placement:
                return self._active[1]
            # resolve `name` itself: it may be a path to a file outside the checkpoint folder
            info = self.resolve(name if name is not None else self.choice_name())
            if info.name in self._on_device:
                model = self._on_device[info.name]
                # after a change of the offload setting or the budget, placed again only if its mode changes
                if self._placed_under.get(info.name) == placement or (
                        self._offload_for(info.name, model) == (model.offload.mode if model.offload else None)):
                    self._placed_under[info.name] = placement
                    self._on_device.move_to_end(info.name)
                    return model
                self._cache_in_ram(info.name, self._on_device.pop(info.name))
            model = self._ram_cache.pop(info.name, None)
            if model is None:
                model = self._load_fresh(info)
            offload = self._offload_for(info.name, model)
            # An offloaded model has the device to itself (its hooks move components that another model may share),
            # and a model placed whole never sits beside an offloaded one.
            for other in [other for other, placed in self._on_device.items() if offload or placed.offload]:
                self._cache_in_ram(other, self._on_device.pop(other))
            if self.vram_budget is not None and offload is None:  # a hard cap: make room before the move
                on_device = self._ids_on_device()
                self._make_room_on_device(module_bytes(m for m in model.modules() if id(m) not in on_device))
            try:
                self._place(model, offload)
            except RuntimeError as exc:  # torch.OutOfMemoryError included; the weights are still in RAM
                raise self._placement_failed(info.name, model, exc) from exc
            self._on_device[info.name] = model
            self._placed_under[info.name] = placement
            self._make_room_on_device(0, keep=info.name)  # without a budget the previous model leaves only now
            for hook in self.on_placed:
                hook(model)
            return model

    def loaded(self, name: str) -> LoadedModel | None:
        """The loaded checkpoint of that (resolved) name, on the device or in RAM; None when not loaded."""
        with self._lock:
            return self._on_device.get(name) or self._ram_cache.get(name)

    def loaded_models(self) -> list[LoadedModel]:
        """Every loaded checkpoint, on the device or in RAM."""
        with self._lock:
            return [*self._on_device.values(), *self._ram_cache.values()]

    def _make_room_on_device(self, incoming: int, keep: str | None = None) -> None:
        """Move least recently used models (never `keep`) to RAM until `incoming` more bytes fit the VRAM budget;
        without a budget, every model but `keep` leaves the device."""
        for name in [name for name in self._on_device if name != keep]:
            if self.vram_budget is not None and self._device_bytes() + incoming <= self.vram_budget:
                return
            self._cache_in_ram(name, self._on_device.pop(name))

    def _device_bytes(self) -> int:
        """Weights on the device: whole models' bytes, and an offloaded model's most at once."""
        whole = module_bytes(module for model in self._on_device.values() if model.offload is None
                             for module in model.modules())
        return whole + sum(model.offload.peak_bytes() for model in self._on_device.values() if model.offload)

    def _ram_bytes(self) -> int:
        """What the RAM cache holds, less the modules it shares with models on the device (those are there)."""
        on_device = self._ids_on_device()
        return module_bytes(module for model in self._ram_cache.values() for module in model.modules()
                            if id(module) not in on_device)

    def _placement_failed(self, name: str, model: LoadedModel, exc: RuntimeError) -> ModelError:
        """Moving `model` to the device failed part-way: bring it back to the CPU into the RAM cache (so a retry does
        not read the file again), free what it held on the device, and explain. The active model is untouched."""
        try:
            self._park(model)  # frees whatever part already reached the device
        except RuntimeError as cleanup:  # could not even move it back: drop it rather than keep a split model
            log.warning("dropping %s after a failed move back to the CPU: %s", name, cleanup)
        else:
            if self.ram_cache_size > 0:
                self._cache_in_ram(name, model)
        del model
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        kept = f"{self._active[0]!r} is still loaded" if self._active else "no model is loaded"
        if isinstance(exc, torch.OutOfMemoryError):
            advice = ("free memory on the GPU (close other programs using it, or start with --precision fp16), "
                      "then try again, or use --device cpu" if self.device.type == "cuda"
                      else "free RAM (a smaller --ram-cache keeps fewer models in memory), then try again")
            return ModelError(
                f"not enough memory on {self.device} to load {name!r}; {kept}. {advice[0].upper()}{advice[1:]}."
            )
        return ModelError(f"could not move {name!r} to {self.device} ({type(exc).__name__}: {exc}); {kept}.")

    @property
    def _ram_dtype(self) -> torch.dtype:
        """Models parked in RAM keep the compute dtype (fp16 halves RAM use); on a CPU-only run they are fp32."""
        return torch.float32 if self.device.type == "cpu" else self.dtype

    def _cache_in_ram(self, name: str, model: LoadedModel) -> None:
        """Park a model that leaves the device. Memory is collected (a full `gc` pass and, on CUDA, returning cached
        blocks to the driver, ~0.2 s together) only when a model was dropped: a plain swap leaves the freed device
        blocks in torch's cache, where the incoming model's buffers reuse them."""
        if self.ram_cache_size <= 0:
            self._end_offload(model)
            del model
            dropped = True
        else:
            self._park(model)
            self._ram_cache[name] = model
            self._ram_cache.move_to_end(name)
            dropped = self._trim_ram_cache()
        if dropped:
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _trim_ram_cache(self) -> bool:
        """Drop least recently used models until the count and the byte budget hold; True if any was dropped."""
        dropped = False
        while self._ram_cache and (len(self._ram_cache) > self.ram_cache_size
                                   or self.ram_budget is not None and self._ram_bytes() > self.ram_budget):
            self._ram_cache.popitem(last=False)
            dropped = True
        return dropped

    def set_budgets(self, vram_budget: int | None, ram_budget: int | None) -> None:
        """The budget settings, live: lower ones move or drop least recently used models at once."""
        with self._lock:
            self.vram_budget, self.ram_budget = vram_budget, ram_budget
            active = self._active
            self._make_room_on_device(0, keep=active[0] if active else None)  # the active model always stays
            dropped = self._trim_ram_cache()
        if dropped:
            gc.collect()

    def cached_names(self) -> list[str]:
        with self._lock:
            return list(self._ram_cache)

    def set_ram_cache_size(self, size: int) -> None:
        """The "Checkpoints to keep in RAM" setting, live: a smaller size drops the least recently used at once."""
        with self._lock:
            self.ram_cache_size = max(0, int(size))
            dropped = self._trim_ram_cache()
        if dropped:
            gc.collect()

    def residency(self) -> list[ModelResidency]:
        """What is loaded where, with sizes: the active model first, then the RAM cache, most recently used first."""
        with self._lock:
            placed = [(name, "device", model) for name, model in reversed(self._on_device.items())]
            placed += [(name, "ram", model) for name, model in reversed(self._ram_cache.items())]
            return [ModelResidency(name, where, str(model.device), str(model.dtype).removeprefix("torch."),
                                   weight_bytes(model), self._shared_bytes(model, [m for _, _, m in placed]),
                                   self._offload_notes.get(name, "") if model.offload else "")
                    for name, where, model in placed]

    @staticmethod
    def _shared_bytes(model: LoadedModel, loaded: list[LoadedModel]) -> int:
        others = {id(module) for other in loaded if other is not model for module in other.modules()}
        return module_bytes(module for module in model.modules() if id(module) in others)

    def unload(self, name: str) -> bool:
        """Drop a checkpoint from the device and from RAM (the next job that needs it reads the file again).
        Call it between jobs (the job lock held): it never waits for a running job. False when it was not loaded."""
        with self._lock:
            info = self.resolve(name)
            loaded = info.name in self._ram_cache or info.name in self._on_device
            self._forget(info.name)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return loaded

    def set_prediction_override(self, name: str, prediction: PredictionType | None) -> None:
        """Per-model eps/v override (SD2 files cannot always tell); reloads the model if it is loaded."""
        info = self.resolve(name)
        with self._lock:
            if prediction:
                self.prediction_overrides[info.name] = prediction
            else:
                self.prediction_overrides.pop(info.name, None)
            self._forget(info.name)

    def check_vae(self, choice: str) -> str:
        """A VAE name from `vae_names()`, or a ModelError saying what exists."""
        names = self.vae_names()
        if choice not in names:
            raise ModelError(f"VAE {choice!r} not found in {self.vae_dir}; choose one of: {', '.join(names)}")
        return choice

    def set_vae(self, choice: str) -> None:
        """The default VAE for requests that do not name one; loaded models are not touched."""
        self.vae_choice = self.check_vae(choice)

    def _vae_for(self, choice: str, model: LoadedModel) -> torch.nn.Module | None:
        """The VAE module a job with `choice` decodes with (None: the checkpoint's own), on the compute device.

        Built from the file for this model's scale and size and kept in a one-entry cache, so switching LoRAs or
        prompts does not reread it.
        """
        if choice in (AUTOMATIC_VAE, NO_VAE):
            return None
        path = self.vae_dir / self.check_vae(choice)
        key = (path, model.vae_scale, model.latent_channels)
        with self._lock:
            if key in self._vaes:
                self._vaes.move_to_end(key)
                return self._vaes[key]
            try:
                vae = build_vae(read_vae_override(path), model, choice)
            except (CheckpointReadError, ModelLoadError) as exc:
                raise ModelError(str(exc)) from exc
            torch.nn.Module.to(vae, self.device, torch.float32 if self.dtype == torch.float16 else self.dtype)
            self._vaes.clear()  # one alternative VAE at a time
            self._vaes[key] = vae
            return vae

    @contextmanager
    def checkout(self, recipe: ModelRecipe) -> Iterator[LoadedModel]:
        """The model a job runs on: the base model with the recipe's VAE and patches, restored on exit.

        Call it while holding the device (the job lock): the patches change the cached base weights in place for the
        job's duration and are undone exactly, even on an error or an interrupt. The yielded object is a view; the
        cached base model itself never has its VAE replaced.
        """
        base = self.get(recipe.checkpoint)
        vae = self._vae_for(recipe.vae, base)
        model = base if vae is None else replace(base, vae=vae)
        weight_patches: list[WeightPatch] = []
        for source in recipe.patches:
            weight_patches.extend(source.patches(base))
        with ExitStack() as stack:
            try:
                stack.enter_context(patched(weight_patches))
            except PatchError as exc:
                raise ModelError(str(exc)) from exc
            yield model

    def vae_title(self, choice: str) -> str | None:
        """What the infotext's `VAE:` says for a choice (None for the checkpoint's own)."""
        return None if choice in (AUTOMATIC_VAE, NO_VAE, "") else choice

    def vae_hash(self, choice: str) -> str | None:
        """The infotext's `VAE hash:` (A1111: first 10 hex of the file's sha256), None for the checkpoint's own."""
        title = self.vae_title(choice)
        return None if title is None else self.hashes.short_hash(self.vae_dir / title)

    def _forget(self, name: str) -> None:
        self._ram_cache.pop(name, None)
        self._placed_under.pop(name, None)
        model = self._on_device.pop(name, None)
        if model is not None:
            self._end_offload(model)  # its hooks would stay on modules another loaded model may share
            gc.collect()

    def model_hash(self, model: LoadedModel) -> str:
        return self.hashes.short_hash(model.path)
