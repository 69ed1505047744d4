"""`--compile`: the U-Net compiled with torch.compile in the background, on the app's services and a tiny SD1 file.

The first images of a size run eagerly while that size compiles; later ones run compiled and stay within the parity
bar of eager; on the CPU the graphs hold the weights frozen in, so a job's LoRA-style weight patch runs eagerly and
a graph compiled while weights changed is dropped; a compiler that fails leaves the U-Net eager with the reason kept;
turning the setting off detaches it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_service_context
from webui.engine.generation import SamplingParams, generate_latents
from webui.engine.loader import LoadedModel
from webui.engine.patching import WeightPatch, patched
from webui.engine.samplers import SamplerRegistry
from webui.services import core_settings
from webui.services.unet_compiler import UNetCompiler

COMPILE_TIMEOUT = 600


def _latents(model: LoadedModel, seed: int = 5) -> torch.Tensor:
    params = SamplingParams(prompt="a red circle", sampler="Euler", steps=3, cfg_scale=5.0, width=64, height=64,
                            seeds=[seed])
    with torch.inference_mode():
        return generate_latents(model, params, SamplerRegistry()).clone()


@pytest.fixture(scope="module")
def compiled_context(tmp_path_factory: pytest.TempPathFactory, tiny_sd1):
    context = tiny_service_context(tmp_path_factory.mktemp("compile"), tiny_sd1)
    context.settings.update({core_settings.COMPILE_UNET: True})
    yield context
    context.settings.update({core_settings.COMPILE_UNET: False})
    context.shutdown()


def test_the_first_images_run_eagerly_and_later_ones_compiled_within_the_parity_bar(compiled_context) -> None:
    model = compiled_context.models.get()
    router = compiled_context.compiler.router(model)
    assert router is not None and model.unet._compiled_call_impl is router
    frozen = " (weights frozen in: jobs with LoRAs run uncompiled)"  # what the Models tab adds on the CPU
    assert compiled_context.compiler.describe(model) == "compiled when first used" + frozen
    eager = _latents(model)  # this signature is new: eager, and compiled in the background meanwhile
    assert compiled_context.compiler.describe(model) in ("compiling in the background" + frozen,
                                                         "compiled for 1 input shape" + frozen)
    calls = router.eager_calls
    assert router.compiled_calls == 0 and calls == 3  # 3 steps, cond and uncond in one batch
    assert compiled_context.compiler.wait_until_idle(COMPILE_TIMEOUT)
    assert router.failure is None and len(router.ready) == 1
    assert compiled_context.compiler.describe(model) == "compiled for 1 input shape" + frozen
    cache = compiled_context.paths.data_dir / "torch-compile"
    assert cache.is_dir() and any(cache.iterdir())  # inductor's cache, kept across restarts
    compiled = _latents(model)
    assert router.compiled_calls == calls and router.eager_calls == calls
    assert torch.allclose(compiled, eager, atol=2e-4, rtol=1e-4), (compiled - eager).abs().max()
    # On the CPU the graph holds its weights frozen in, so a job's LoRA-style weight patch must not run it: that call
    # runs eagerly, with the patched weights, and once they are restored the frozen graph runs again.
    assert router.freezes and router.inductor_options == {"cpp_wrapper": True, "freezing": True}
    layer = model.unet.conv_in
    delta = torch.full_like(layer.weight, 0.05)
    with patched([WeightPatch(layer, lambda device: delta, 1.0, "test")]):
        patched_routed = _latents(model)
        model.unet._compiled_call_impl = None
        patched_eager = _latents(model)
        model.unet._compiled_call_impl = router
    assert router.compiled_calls == calls and router.eager_calls == 2 * calls and len(router.ready) == 1
    assert (patched_eager - eager).abs().max() > 1e-2
    assert torch.equal(patched_routed, patched_eager)
    assert compiled_context.compiler.wait_until_idle(COMPILE_TIMEOUT)  # a patched call starts no compile
    assert len(router.ready) == 1
    assert torch.equal(_latents(model), compiled)  # restored exactly: the frozen graph runs again
    assert router.compiled_calls == 2 * calls


def test_a_graph_compiled_while_a_job_wrote_the_weights_is_never_run(tiny_sd1, tmp_path: Path) -> None:
    """The background compile and a job's weight patch can overlap: a graph that may have frozen in a mix of old and
    new weights is dropped, and the next call with the weights back compiles again."""
    from webui.engine.loader import load_checkpoint

    model = load_checkpoint(tiny_sd1.path)
    expected = _latents(model)
    layer = model.unet.conv_in
    backup = layer.weight.detach().clone()
    compiles = []

    def backend_that_sees_a_patch(graph, example_inputs):
        compiles.append(len(compiles))
        if len(compiles) == 1:  # a job patches the weights while the first compile runs; restored exactly later
            with torch.no_grad():
                layer.weight.add_(0.05)
        return graph.forward

    compiler = UNetCompiler(tmp_path / "cache", enabled=True, backend=backend_that_sees_a_patch)
    compiler.attach(model)
    router = compiler.router(model)
    assert router.freezes  # on the CPU: frozen graphs, so the fingerprint guards them
    first_entry_point = router.compiled
    _latents(model)
    assert compiler.wait_until_idle(COMPILE_TIMEOUT)
    assert not router.ready and router.compiled is not first_entry_point and router.failure is None
    assert not router.has_frozen_weights()
    with torch.no_grad():
        layer.weight.copy_(backup)  # the job's restore
    assert router.has_frozen_weights()
    assert torch.equal(_latents(model), expected)  # eager first, while it compiles again in the background
    assert compiler.wait_until_idle(COMPILE_TIMEOUT)
    assert len(compiles) == 2 and len(router.ready) == 1
    before = router.compiled_calls
    assert torch.equal(_latents(model), expected) and router.compiled_calls == before + 3


def test_turning_the_setting_off_detaches_and_on_attaches_again(compiled_context) -> None:
    model = compiled_context.models.get()
    compiled_context.settings.update({core_settings.COMPILE_UNET: False})
    assert model.unet._compiled_call_impl is None and compiled_context.compiler.router(model) is None
    compiled_context.settings.update({core_settings.COMPILE_UNET: True})
    assert compiled_context.compiler.router(model) is model.unet._compiled_call_impl is not None


def test_an_unloaded_model_is_not_kept_alive_by_the_compiler(compiled_context) -> None:
    import gc
    import weakref

    unet = weakref.ref(compiled_context.models.get().unet)
    assert compiled_context.compiler.router(compiled_context.models.get()) is not None
    assert compiled_context.models.unload(compiled_context.models.active_name)
    gc.collect()
    assert unet() is None


def test_a_compiler_that_fails_leaves_the_unet_eager_and_says_why(tiny_sd1, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    from webui.engine.loader import load_checkpoint

    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler found (test)")

    model = load_checkpoint(tiny_sd1.path)
    expected = _latents(model)
    compiler = UNetCompiler(tmp_path / "cache", enabled=True, backend=broken_backend)
    compiler.attach(model)
    router = compiler.router(model)
    with caplog.at_level("WARNING", logger="webui.compile"):
        first = _latents(model)
        assert compiler.wait_until_idle(COMPILE_TIMEOUT)
    assert router.failure is not None and "no C++ compiler found (test)" in router.failure
    assert "runs eagerly (uncompiled) from now on" in caplog.text
    assert torch.equal(first, expected) and torch.equal(_latents(model), expected)
    assert router.compiled_calls == 0 and not router.ready
    assert compiler.describe(model).startswith("not compiled: the compile failed (RuntimeError: no C++ compiler")


def test_a_unet_too_large_to_copy_gets_graphs_that_read_its_weights(tiny_sd1, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Above `FREEZE_MAX_RAM_SHARE` of the RAM no frozen copy is made: the graph reads the weights as inputs, so a
    job's weight patch runs compiled and reaches it."""
    from webui.engine.loader import load_checkpoint
    from webui.services import unet_compiler

    monkeypatch.setattr(unet_compiler, "FREEZE_MAX_RAM_SHARE", 1e-9)
    model = load_checkpoint(tiny_sd1.path)
    compiler = UNetCompiler(tmp_path / "cache", enabled=True, backend=lambda graph, example_inputs: graph.forward)
    compiler.attach(model)
    router = compiler.router(model)
    assert not router.freezes and router.inductor_options == {"cpp_wrapper": True} and router.weights is None
    expected = _latents(model)
    assert compiler.wait_until_idle(COMPILE_TIMEOUT) and len(router.ready) == 1
    layer = model.unet.conv_in
    delta = torch.full_like(layer.weight, 0.05)
    with patched([WeightPatch(layer, lambda device: delta, 1.0, "test")]):
        before = router.compiled_calls
        patched_compiled = _latents(model)
        assert router.compiled_calls == before + 3
        model.unet._compiled_call_impl = None
        patched_eager = _latents(model)
        model.unet._compiled_call_impl = router
    assert (patched_eager - expected).abs().max() > 1e-2
    assert torch.allclose(patched_compiled, patched_eager, atol=2e-4, rtol=1e-4)
    assert torch.equal(_latents(model), expected)
