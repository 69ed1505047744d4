"""Running a model that does not fit on the device: `--medvram` and `--lowvram`.

- **medvram** (`ComponentOffload`): the text encoders, the U-Net and the VAE each live in RAM and come to the device
  only for their own stage; the one that was there goes back first. One packed copy per component and stage
  (`weight_packing`), so the device holds the largest component, not the whole model.
- **lowvram** (`SequentialOffload`): every layer's weights come to the device just for that layer's call and are
  dropped after it, as diffusers' sequential CPU offload does; the device holds one layer at a time. Slow (every call
  copies its weights), but it runs models far larger than the device.

Both hang on accelerate's module hooks (`ModelHook`, `add_hook_to_module`), which wrap `forward`, so every call site
(the engine's, an extension's, diffusers' own `encode`/`decode`) triggers the move. The moves are ours: accelerate's
`AlignDevicesHook` and `cpu_offload` swap the weights for `meta` tensors between calls and keep the values in a side
map, which would leave the in-place LoRA patches (`patching.py`) nothing to patch. Here each parameter keeps its
RAM tensor ("home") as its value between calls, so patches applied before a job land in the weights that move, and
restore exactly afterwards.

The engine asks the model, not its weights, where to compute (`LoadedModel.device`, `.dtype`, `.vae_dtype`): an
offloaded model's weights are mostly in RAM while it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module
from accelerate.utils import send_to_device

from .weight_packing import move_packed

OffloadMode = Literal["medvram", "lowvram"]
OFFLOAD_MODES: tuple[OffloadMode, ...] = ("medvram", "lowvram")

DtypeFor = Callable[[torch.nn.Module], torch.dtype]


def _tensors_bytes(tensors: Iterable[torch.Tensor], dtype: torch.dtype) -> int:
    """Bytes of `tensors` once floating-point ones are stored as `dtype`."""
    return sum(t.numel() * (torch.empty((), dtype=dtype).element_size() if t.is_floating_point() else t.element_size())
               for t in tensors)


def device_bytes(module: torch.nn.Module, dtype: torch.dtype) -> int:
    """What `module` occupies on the device in `dtype` (tied weights once)."""
    seen: dict[int, torch.Tensor] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        seen.setdefault(id(tensor), tensor)
    return _tensors_bytes(seen.values(), dtype)


class _Offload:
    """What both modes share: the compute device, each component's dtype there and in RAM, and the hooks."""

    mode: OffloadMode

    def __init__(self, components: list[torch.nn.Module], device: torch.device, device_dtype: DtypeFor,
                 home_dtype: DtypeFor, pin: bool) -> None:
        self.device = torch.device(device)
        unique: dict[int, torch.nn.Module] = {}
        for component in components:
            unique.setdefault(id(component), component)
        self.components = list(unique.values())
        self._device_dtypes = {id(c): device_dtype(c) for c in self.components}
        self._home_dtypes = {id(c): home_dtype(c) for c in self.components}
        self.pin = pin
        self._hooked: list[torch.nn.Module] = []

    def manages(self, module: torch.nn.Module) -> bool:
        return id(module) in self._device_dtypes

    def dtype_of(self, component: torch.nn.Module) -> torch.dtype:
        """The dtype `component` computes in (where its weights are when it runs)."""
        return self._device_dtypes[id(component)]

    def set_dtype(self, component: torch.nn.Module, dtype: torch.dtype) -> None:
        """Compute `component` in another dtype from now on (the VAE's fp32 fallback on NaN)."""
        self._device_dtypes[id(component)] = dtype

    def _hook(self, module: torch.nn.Module, hook: ModelHook) -> None:
        add_hook_to_module(module, hook)
        self._hooked.append(module)

    def detach(self) -> None:
        """Remove the hooks and leave every weight in RAM, as a parked model's are."""
        for module in self._hooked:
            remove_hook_from_module(module)
        self._hooked.clear()

    def peak_bytes(self) -> int:
        """The most this model holds on the device at once (its weights; activations come on top)."""
        raise NotImplementedError


class _StageHook(ModelHook):
    def __init__(self, offload: ComponentOffload, component: torch.nn.Module) -> None:
        super().__init__()
        self.offload, self.component = offload, component

    def pre_forward(self, module: torch.nn.Module, *args: object, **kwargs: object) -> tuple[tuple, dict]:
        self.offload.bring(self.component)
        return send_to_device(args, self.offload.device), send_to_device(kwargs, self.offload.device)


class ComponentOffload(_Offload):
    """--medvram: one component on the device at a time, moved in whole when one of its layers is called."""

    mode: OffloadMode = "medvram"

    def __init__(self, components: list[torch.nn.Module], device: torch.device, device_dtype: DtypeFor,
                 home_dtype: DtypeFor, pin: bool) -> None:
        super().__init__(components, device, device_dtype, home_dtype, pin)
        self.resident: torch.nn.Module | None = None

    def attach(self) -> None:
        """Everything to RAM, then hooks on each component and its direct children: diffusers' VAE is entered through
        `encode`/`decode`, which call its children, not its own `forward`."""
        for component in self.components:
            self._send_home(component)
            for module in [component, *component.children()]:
                self._hook(module, _StageHook(self, component))

    def _send_home(self, component: torch.nn.Module) -> None:
        move_packed(component, "cpu", self._home_dtypes[id(component)], pin=self.pin)

    def bring(self, component: torch.nn.Module) -> None:
        """Make `component` the one on the device (the previous one goes back to RAM first, to make room)."""
        if self.resident is component:
            return
        if self.resident is not None:
            self._send_home(self.resident)
        self.resident = None
        move_packed(component, self.device, self._device_dtypes[id(component)])
        self.resident = component

    def set_dtype(self, component: torch.nn.Module, dtype: torch.dtype) -> None:
        super().set_dtype(component, dtype)
        if self.resident is component:
            move_packed(component, self.device, dtype)

    def detach(self) -> None:
        super().detach()
        if self.resident is not None:
            self._send_home(self.resident)
            self.resident = None

    def peak_bytes(self) -> int:
        return max((device_bytes(c, self.dtype_of(c)) for c in self.components), default=0)


class _LayerHook(ModelHook):
    """Bring one module's own weights (not its children's) to the device for its call; point back at RAM after."""

    def __init__(self, offload: SequentialOffload, component: torch.nn.Module, module: torch.nn.Module) -> None:
        super().__init__()
        self.offload, self.component, self.module = offload, component, module
        # The RAM tensors themselves (a parameter's `.data`, not the Parameter, whose data the call re-points).
        self.home = {**{name: p.data for name, p in module._parameters.items() if p is not None},
                     **{name: b for name, b in module._buffers.items() if b is not None}}

    def _point(self, name: str, tensor: torch.Tensor) -> None:
        parameter = self.module._parameters.get(name)
        if parameter is not None:
            parameter.data = tensor  # the Parameter object (what a LoRA patch writes through) stays the same
        else:
            self.module._buffers[name] = tensor

    def pre_forward(self, module: torch.nn.Module, *args: object, **kwargs: object) -> tuple[tuple, dict]:
        dtype = self.offload.dtype_of(self.component)
        for name, home in self.home.items():
            self._point(name, home.to(self.offload.device, dtype if home.is_floating_point() else home.dtype,
                                      non_blocking=True))
        return send_to_device(args, self.offload.device), send_to_device(kwargs, self.offload.device)

    def post_forward(self, module: torch.nn.Module, output: object) -> object:
        self.restore()
        return output

    def restore(self) -> None:
        for name, home in self.home.items():
            self._point(name, home)


class SequentialOffload(_Offload):
    """--lowvram: each layer's weights on the device only during that layer's call."""

    mode: OffloadMode = "lowvram"

    def attach(self) -> None:
        for component in self.components:
            move_packed(component, "cpu", self._home_dtypes[id(component)], pin=self.pin)
            for module in component.modules():
                if (any(True for _ in module.parameters(recurse=False))
                        or any(True for _ in module.buffers(recurse=False))):
                    self._hook(module, _LayerHook(self, component, module))

    def detach(self) -> None:
        for module in self._hooked:
            hook = getattr(module, "_hf_hook", None)
            if isinstance(hook, _LayerHook):
                hook.restore()  # a call interrupted mid-way may have left device copies in place
        super().detach()

    def peak_bytes(self) -> int:
        largest = 0
        for component in self.components:
            dtype = self.dtype_of(component)
            for module in component.modules():
                own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
                largest = max(largest, _tensors_bytes(own, dtype))
        return largest


def make_offload(mode: OffloadMode, components: list[torch.nn.Module], device: torch.device,
                 device_dtype: DtypeFor, home_dtype: DtypeFor, pin: bool) -> ComponentOffload | SequentialOffload:
    kinds = {"medvram": ComponentOffload, "lowvram": SequentialOffload}
    if mode not in kinds:
        raise ValueError(f"offload mode must be one of {', '.join(OFFLOAD_MODES)} (got {mode!r})")
    return kinds[mode](components, device, device_dtype, home_dtype, pin)


def choose_offload(total_bytes: int, largest_component_bytes: int, capacity: int | None) -> OffloadMode | None:
    """The lightest mode under which a model fits `capacity` bytes of device memory (None: it fits as it is)."""
    if capacity is None or total_bytes <= capacity:
        return None
    return "medvram" if largest_component_bytes <= capacity else "lowvram"
