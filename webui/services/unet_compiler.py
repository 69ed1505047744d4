"""Optional `torch.compile` of the U-Net (`--compile`, setting `core.compile_unet`), warmed in the background.

Compiling costs seconds to minutes (about 20 s for the shipped model on 2 CPU cores), and a new input shape (another
resolution, batch size, a ControlNet's residuals) compiles again. So a job never waits for it: each distinct call
signature runs eagerly the first time while a background thread compiles that signature on copies of the inputs;
later calls with a warmed signature run compiled. A compile that fails (no C++ compiler, an unsupported op) is logged
once and that U-Net stays eager. Inductor's caches live under the app's data folder, so a restart recompiles from
cache instead of from scratch.

The hook is `nn.Module`'s own: `Module.compile()` stores a compiled `_call_impl` that `Module.__call__` then uses;
here that slot holds a router that chooses per call, so every call site stays as it is. Gradient-enabled calls
(training) always run eagerly.

Weights: on a GPU a graph reads them as inputs, so a job's LoRA patches (written into the weights in place) reach it.
On the CPU, where a small U-Net's time goes to launching kernels rather than computing them, the graphs are built with
two inductor options that make a call about twice as fast (bench/cpu_unet_options.py): `cpp_wrapper` (kernels
launched from generated C++, not Python) and `freezing` (weights folded in as constants, pre-packed for oneDNN). A
frozen graph holds a copy of the weights it was compiled with, so it runs only while the U-Net's weights are exactly
those (`WeightsFingerprint`); a call with other weights (a job with LoRAs) runs eagerly.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map

from webui.engine.loader import LoadedModel
from webui.engine.weights_fingerprint import WeightsFingerprint
from webui.services.core_settings import physical_ram_bytes

log = logging.getLogger("webui.compile")
# Each resolution/batch/ControlNet combination is its own static-shape graph; dynamo's default of 8 per function
# would fall back to eager for good after a few sizes.
RECOMPILE_LIMIT = 64
# Inductor options for U-Nets on the CPU (see above); inductor reads its settings per thread, so they are applied in
# the thread that compiles.
CPU_INDUCTOR_OPTIONS: dict[str, Any] = {"cpp_wrapper": True, "freezing": True}
# A frozen graph keeps its own copy of the weights. Only U-Nets up to this share of the machine's RAM are frozen (the
# shipped model's 26 MB, SD 1.5 in half precision); larger ones get graphs that read the weights as inputs.
FREEZE_MAX_RAM_SHARE = 1 / 8


def _signature(args: tuple, kwargs: dict) -> tuple:
    """What a compiled graph is specialised on: the structure, shapes and dtypes of the inputs, and the grad mode."""
    leaves, spec = tree_flatten((args, kwargs))
    described = tuple((tuple(leaf.shape), leaf.dtype, leaf.device.type) if isinstance(leaf, torch.Tensor) else
                      leaf if isinstance(leaf, (bool, int, float, str, type(None))) else type(leaf).__name__
                      for leaf in leaves)
    return str(spec), described, torch.is_inference_mode_enabled()


class CompiledUNet:
    """The router in one U-Net's compiled-call slot: compiled for warmed signatures, eager otherwise."""

    def __init__(self, unet: torch.nn.Module, compiler: "UNetCompiler") -> None:
        self.unet = unet
        self.compiler = compiler
        on_cpu = next(unet.parameters()).device.type == "cpu"
        weight_bytes = sum(tensor.numel() * tensor.element_size() for tensor in unet.parameters())
        self.inductor_options: dict[str, Any] = dict(CPU_INDUCTOR_OPTIONS) if on_cpu else {}
        if weight_bytes > FREEZE_MAX_RAM_SHARE * physical_ram_bytes():
            self.inductor_options.pop("freezing", None)
        # (Another backend ignores inductor's options; its graphs are still treated as frozen when these say so.)
        # Frozen graphs hold the weights they were compiled with: these, as they were when the router was attached.
        self.weights = WeightsFingerprint(unet) if self.freezes else None
        self.frozen_weights = self.weights.current() if self.weights else None
        self.ready: set[tuple] = set()
        self.compiled = self._new_compiled()
        self.failure: str | None = None
        self.compiled_calls = 0
        self.eager_calls = 0

    @property
    def freezes(self) -> bool:
        return bool(self.inductor_options.get("freezing"))

    def _new_compiled(self) -> Callable[..., Any]:
        """A compiled entry point with a backend object of its own: dynamo keeps graphs per backend, so a new one
        never reuses a graph compiled for other weights."""
        backend = self.compiler.backend
        compile_graph = torch._dynamo.lookup_backend(backend) if isinstance(backend, str) else backend

        def backend_of_this_router(graph: torch.fx.GraphModule, example_inputs: list) -> Callable[..., Any]:
            return compile_graph(graph, example_inputs)

        self.ready.clear()
        return torch.compile(self.unet._call_impl, backend=backend_of_this_router, dynamic=False)

    def has_frozen_weights(self) -> bool:
        """Whether the U-Net's weights now are those its graphs hold (always, for graphs that read them as inputs)."""
        return self.weights is None or self.weights.current() == self.frozen_weights

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failure is None and not torch.is_grad_enabled() and self.has_frozen_weights():
            signature = _signature(args, kwargs)
            if signature in self.ready:
                try:
                    output = self.compiled(*args, **kwargs)
                except Exception as exc:  # a graph that compiled but cannot run: eager from now on
                    self.fail(exc)
                else:
                    self.compiled_calls += 1
                    return output
            else:
                self.compiler.warm_in_background(self, signature, args, kwargs)
        self.eager_calls += 1
        return self.unet._call_impl(*args, **kwargs)

    def fail(self, exc: BaseException) -> None:
        cause = getattr(exc, "inner_exception", None) or exc.__cause__ or exc  # dynamo wraps the backend's error
        text = str(cause).strip()
        self.failure = f"{type(cause).__name__}: {text.splitlines()[0][:300] if text else 'no message'}"
        log.warning("torch.compile of the U-Net failed (%s); it runs eagerly (uncompiled) from now on", self.failure)


@dataclass(eq=False)
class _WarmRequest:
    """One signature to compile, on copies of the inputs that first asked for it, in their grad mode."""

    router: CompiledUNet
    signature: tuple
    args: tuple
    kwargs: dict
    inference: bool


class UNetCompiler:
    """Attaches a `CompiledUNet` router to each U-Net the model manager places, while enabled."""

    def __init__(self, cache_dir: Path, enabled: bool = False, backend: str | Callable = "inductor") -> None:
        self.cache_dir = Path(cache_dir)
        self.backend = backend
        self.enabled = False
        self._lock = threading.Lock()
        # Weak: an unloaded model's U-Net must not be kept alive here (its router lives in the U-Net's own slot).
        self._attached: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
        self._warming: threading.Thread | None = None
        self._waiting: list[_WarmRequest] = []  # the first is the one compiling
        self.set_enabled(enabled)

    def set_enabled(self, enabled: bool, models: Sequence[LoadedModel] = ()) -> None:
        """Turn compiling on or off, live; `models` (those loaded now) are attached or detached at once."""
        self.enabled = bool(enabled)
        if self.enabled:
            # Inductor looks its cache folder up at each compile. Importing torch._dynamo already set it to the
            # default (/tmp/torchinductor_<user>); unless the user chose one, use the data folder, which survives
            # restarts and /tmp clean-ups.
            import torch._dynamo
            from torch._inductor.runtime.cache_dir_utils import default_cache_dir

            if os.environ.get("TORCHINDUCTOR_CACHE_DIR", default_cache_dir()) == default_cache_dir():
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.cache_dir.resolve())

            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
            for model in models:
                self.attach(model)
        else:
            self.detach_all()

    def attach(self, model: LoadedModel) -> None:
        """Route this model's U-Net calls through a compiled graph once warmed (no-op when disabled or attached)."""
        unet = model.unet
        if model.offload is not None:  # its weights move between calls (--medvram/--lowvram): run it eagerly
            with self._lock:
                self._attached.discard(unet)
                if isinstance(unet._compiled_call_impl, CompiledUNet):
                    unet._compiled_call_impl = None
            return
        if not self.enabled:
            return
        with self._lock:
            if isinstance(unet._compiled_call_impl, CompiledUNet):
                return
            unet._compiled_call_impl = CompiledUNet(unet, self)
            self._attached.add(unet)

    def detach_all(self) -> None:
        with self._lock:
            attached = list(self._attached)
            self._attached.clear()
            self._waiting.clear()
        for unet in attached:
            if isinstance(unet._compiled_call_impl, CompiledUNet):
                unet._compiled_call_impl = None

    def describe(self, model: LoadedModel) -> str:
        """What the Models tab says about this model's U-Net."""
        router = self.router(model)
        if router is None:
            return f"not compiled: runs offloaded ({model.offload.mode})" if model.offload else "not compiled"
        if router.failure is not None:
            return f"not compiled: the compile failed ({router.failure})"
        with self._lock:
            warming = any(request.router is router for request in self._waiting)
        sizes = len(router.ready)
        ready = f"compiled for {sizes} input shape{'s' if sizes != 1 else ''}" if sizes else ""
        text = ", ".join(part for part in (ready, "compiling in the background" if warming else "") if part) or (
            "compiled when first used")
        return f"{text} (weights frozen in: jobs with LoRAs run uncompiled)" if router.freezes else text

    @staticmethod
    def router(model: LoadedModel) -> CompiledUNet | None:
        """The router in this model's U-Net slot, if attached."""
        slot = model.unet._compiled_call_impl
        return slot if isinstance(slot, CompiledUNet) else None

    def warm_in_background(self, router: CompiledUNet, signature: tuple, args: tuple, kwargs: dict) -> None:
        """Compile `signature` on copies of these inputs in a short-lived thread (one at a time; others wait their
        turn). The thread ends when nothing is left to compile, so no idle thread keeps an OpenMP team alive
        (docs/performance.md, "Threads")."""
        with self._lock:
            if router.failure or any(r.router is router and r.signature == signature for r in self._waiting):
                return
            copies = tree_map(lambda x: x.detach().clone() if isinstance(x, torch.Tensor) else x, (args, kwargs))
            self._waiting.append(_WarmRequest(router, signature, *copies, torch.is_inference_mode_enabled()))
            if self._warming is None:
                self._warming = threading.Thread(target=self._warm_loop, name="unet-compile", daemon=True)
                self._warming.start()

    def _warm_loop(self) -> None:
        while True:
            with self._lock:
                if not self._waiting:
                    self._warming = None
                    return
                request = self._waiting[0]
            started = time.perf_counter()
            compiled = request.router.failure is None and self._compile(request)  # after a failure it stays eager
            with self._lock:  # ready and no longer waiting in one step, as `describe` sees it
                if compiled:
                    request.router.ready.add(request.signature)
                if request in self._waiting:  # `detach_all` may have emptied the queue meanwhile
                    self._waiting.remove(request)
            if compiled:
                log.info("U-Net compiled for %s in %.1f s", request.signature[1][:1], time.perf_counter() - started)

    @staticmethod
    def _compile(request: _WarmRequest) -> bool:
        import torch._inductor.config as inductor_config

        router = request.router
        if not router.has_frozen_weights():  # a job patched the weights since: compile when they are back
            return False
        versions = router.weights.versions() if router.weights else None
        try:
            with (inductor_config.patch(router.inductor_options), torch.inference_mode(request.inference),
                  torch.no_grad()):
                router.compiled(*request.args, **request.kwargs)
        except Exception as exc:  # anything torch.compile raises: stay eager
            router.fail(exc)
            return False
        if router.weights and router.weights.versions() != versions:
            # A job wrote the weights while they were being frozen in: the graph may hold a mix. Start over with a
            # new entry point, so that graph is never run; the next call with the weights back compiles again.
            log.info("the U-Net's weights changed while it compiled; compiling again when they are restored")
            router.compiled = router._new_compiled()
            return False
        return True

    def wait_until_idle(self, timeout: float) -> bool:
        """Block until no compile is queued or running (benchmarks, tests); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                thread = self._warming
            if thread is None:
                return True
            thread.join(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
        return False
