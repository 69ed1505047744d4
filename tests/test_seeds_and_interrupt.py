"""Seeds and interrupts through the real generation service, checked against oracles computed here.

The seed oracle is A1111's rule written out in the test: image i of a job starts from
`randn((4, H/8, W/8), generator=torch.Generator("cpu").manual_seed(seed + i))`, across batch count and batch size.
What the U-Net actually receives is observed with a torch forward pre-hook (an observer: the model runs unchanged).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cpu_share import cpu_share
from webui.context import AppPaths, build_context
from webui.services.requests import GenerationRequest

OWNER = "tester"


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory, tiny_sd1):
    root = tmp_path_factory.mktemp("service-oracles")
    checkpoints = root / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    (checkpoints / "tiny.safetensors").symlink_to(tiny_sd1.path)
    torch.set_num_threads(cpu_share())
    return build_context(AppPaths(root / "models", root / "outputs", root / "data"), device="cpu",
                         load_extensions=False)


class UnetCalls:
    """Counts U-Net calls and keeps the `sample` input of each; `on_call(n)` runs inside call n (1-based)."""

    def __init__(self, unet: torch.nn.Module, on_call=None) -> None:
        self.samples: list[torch.Tensor] = []
        self.on_call = on_call
        self._handle = unet.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs) -> None:
        sample = args[0] if args else kwargs["sample"]
        self.samples.append(sample.detach().clone())
        if self.on_call is not None:
            self.on_call(len(self.samples))

    def __enter__(self) -> "UnetCalls":
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def test_seed_to_noise_mapping_across_batch_count_and_size(context) -> None:
    """DDIM at CFG 1: the first U-Net input of each batch is exactly the start noise (init sigma 1, no scaling)."""
    seed, batch_size, n_iter, steps = 123_456, 2, 2, 2
    request = GenerationRequest(prompt="a red circle", sampler_name="DDIM", steps=steps, cfg_scale=1.0, width=64,
                                height=96, seed=seed, batch_size=batch_size, n_iter=n_iter, model="tiny")
    with UnetCalls(context.models.get("tiny").unet) as calls:
        result = context.generation.run(context.jobs.create(OWNER, "txt2img"), request)
    assert len(calls.samples) == n_iter * steps
    firsts = torch.cat([calls.samples[batch * steps] for batch in range(n_iter)])
    assert firsts.shape == (batch_size * n_iter, 4, 96 // 8, 64 // 8)
    for i in range(batch_size * n_iter):
        expected = torch.randn((4, 12, 8), generator=torch.Generator("cpu").manual_seed(seed + i))
        assert torch.equal(firsts[i], expected), f"image {i} did not start from seed {seed + i}"
    assert result.seeds == [seed + i for i in range(4)]
    assert [f"Seed: {seed + i}," in text for i, text in enumerate(result.infotexts)] == [True] * 4
    assert [Path(path).stem.split("-", 1)[1] for path in result.paths] == [str(seed + i) for i in range(4)]


def test_same_seed_same_image_and_neighbouring_seeds_differ(context) -> None:
    """A seed reproduces its image in a later job, whatever its position in the batch."""
    def images(seed: int, batch_size: int):
        request = GenerationRequest(prompt="a red circle", sampler_name="Euler a", steps=3, width=64, height=64,
                                    seed=seed, batch_size=batch_size, model="tiny")
        return context.generation.run(context.jobs.create(OWNER, "txt2img"), request).images

    pair = images(40, 2)
    alone = images(41, 1)
    second, single, first = (np.asarray(image, dtype=int) for image in (pair[1], alone[0], pair[0]))
    assert np.abs(second - single).max() <= 2  # ancestral noise is per image, not per batch (float noise only)
    assert np.abs(first - second).max() > 20


@pytest.mark.parametrize("sampler,calls_per_step", [("Euler", 1), ("Heun", 2)])
def test_case_26_interrupt_stops_within_one_step(context, sampler: str, calls_per_step: int) -> None:
    """An interrupt requested from another thread during step 3 ends the job before step 4's U-Net call.

    The worker pauses inside step 3's U-Net call until the interrupt has been sent, so the count is exact and does not
    depend on thread timing. Later batches of the job never start.
    """
    steps, stop_at = 12, 3
    reached, sent = threading.Event(), threading.Event()

    def pause_in_step(call: int) -> None:
        if call == stop_at * calls_per_step:
            reached.set()
            assert sent.wait(60), "the interrupt was never sent"

    request = GenerationRequest(prompt="a red circle", negative_prompt="blue", sampler_name=sampler, steps=steps,
                                width=64, height=64, seed=1, n_iter=3, model="tiny")
    job = context.jobs.create(OWNER, "txt2img")
    outcome: dict[str, object] = {}
    with UnetCalls(context.models.get("tiny").unet, pause_in_step) as calls:
        worker = threading.Thread(target=lambda: outcome.setdefault("result", context.generation.run(job, request)))
        worker.start()
        assert reached.wait(120), "the job never reached step 3"
        assert context.jobs.interrupt_owned("someone else") == 0  # only the owner's request counts
        assert context.jobs.interrupt_owned(OWNER) == 1
        sent.set()
        worker.join(120)
    assert not worker.is_alive()
    result = outcome["result"]
    assert result.interrupted and job.status == "interrupted"
    # Heun's last step is a single call, so "within one step" is at most one more step's worth of calls.
    assert stop_at * calls_per_step <= len(calls.samples) <= (stop_at + 1) * calls_per_step, len(calls.samples)
    assert result.images == [] and job.batches_done == 0
