"""Shared fixtures: tiny real-layout checkpoints built once per test session with seeded random weights."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from webui import offline

offline.enforce()
if os.environ.get("PYTEST_XDIST_WORKER"):  # keep to this worker's share of the cores (tests/cpu_share.py)
    import torch

    from tests.cpu_share import cpu_share

    share = cpu_share()
    os.environ["OMP_NUM_THREADS"] = str(share)  # the servers and CLIs it starts inherit it
    torch.set_num_threads(share)
# Playwright's `expect` gives up after 5 s by default; on two cores busy with two test workers a server's answer to a
# click can take longer. Waiting longer never slows a passing test.
from playwright.sync_api import expect  # noqa: E402

expect.set_options(timeout=30_000)
os.environ.setdefault("GRADIO_TEMP_DIR", str(Path(__file__).resolve().parent.parent / "scratch" / "gradio-tmp"))

from webui.engine.synthetic import SyntheticModel, write_synthetic_checkpoint  # noqa: E402
from webui.engine.loader import LoadedModel, load_checkpoint  # noqa: E402


# `pytest -n 2` (opt-in, docs/testing.md) runs two pytest-xdist workers, each file whole on one worker (`--dist
# loadfile`), handed out in collection order (`--no-loadscope-reorder`). These files take longest on 2 cores (browsers,
# Ray clusters, subprocess trainings, torch.compile), so they are collected first and the two workers finish close
# together (longest-first scheduling); a browser file alternates with one without, so that two Chromiums seldom run at
# once. The order of the tests inside a file is unchanged. Measured under `-n 2`, 35-125 s each.
LONGEST_FILES_FIRST = (
    "test_browser_ui_flow.py", "test_training_multiprocess.py", "test_browser_brush.py", "test_ray_workers.py",
    "test_browser_small_things.py", "test_unet_compiler.py", "test_ui_two_users.py", "test_lora_training.py",
    "test_browser_workflow.py", "test_default_model.py", "test_browser_inpaint.py", "test_cli_train_lora.py",
    "test_server.py", "test_sdapi.py", "test_img2img_cli.py", "test_extensions_server.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: every other file keeps its place


class TinyCheckpoint:
    """A checkpoint file and the ground-truth modules it was written from."""

    def __init__(self, path: Path, model: SyntheticModel) -> None:
        self.path = path
        self.model = model


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models") / "Stable-diffusion"


def _make(checkpoint_dir: Path, name: str, family: str, **kwargs) -> TinyCheckpoint:
    path = checkpoint_dir / f"{name}.safetensors"
    model = write_synthetic_checkpoint(path, family, **kwargs)
    return TinyCheckpoint(path, model)


@pytest.fixture(scope="session")
def tiny_sd1(checkpoint_dir: Path) -> TinyCheckpoint:
    return _make(checkpoint_dir, "tiny-sd1", "sd1", seed=1)


@pytest.fixture(scope="session")
def tiny_sd2(checkpoint_dir: Path) -> TinyCheckpoint:
    return _make(checkpoint_dir, "tiny-sd2", "sd2", seed=2)


@pytest.fixture(scope="session")
def tiny_sdxl(checkpoint_dir: Path) -> TinyCheckpoint:
    return _make(checkpoint_dir, "tiny-sdxl", "sdxl", seed=3)


@pytest.fixture(scope="session")
def tiny_sd1_inpaint(checkpoint_dir: Path) -> TinyCheckpoint:
    return _make(checkpoint_dir, "tiny-sd1-inpaint", "sd1", inpaint=True, seed=4)


@pytest.fixture(scope="session")
def tiny_sdxl_inpaint(checkpoint_dir: Path) -> TinyCheckpoint:
    """A 9-channel SDXL inpainting checkpoint (noisy latent + mask + masked-image latent in the U-Net input)."""
    return _make(checkpoint_dir, "tiny-sdxl-inpaint", "sdxl", inpaint=True, seed=5)


class ParityModels:
    """The project's model and diffusers' reference pipeline per checkpoint file, each loaded once per session.

    Loading is not what the parity tests compare, and test_parity.py and test_parity_img2img.py use the same files.
    Tests may replace the reference pipeline's scheduler; derived pipelines (`Cls.from_pipe`) share its modules.
    """

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._loaded: dict[tuple[Path, str], tuple[LoadedModel, object]] = {}

    def get(self, tiny: TinyCheckpoint, prediction: str = "epsilon") -> tuple[LoadedModel, object]:
        from tests.reference import load_reference_pipeline

        key = (tiny.path, prediction)
        if key not in self._loaded:
            ours = load_checkpoint(tiny.path, prediction_override=prediction)
            folder = self._folder / f"{tiny.path.stem}-{prediction}"
            self._loaded[key] = (ours, load_reference_pipeline(tiny.path, tiny.model, folder))
        return self._loaded[key]


@pytest.fixture(scope="session")
def parity_models(tmp_path_factory: pytest.TempPathFactory) -> ParityModels:
    return ParityModels(tmp_path_factory.mktemp("reference-config"))


@pytest.fixture(scope="module")
def single_torch_thread() -> Iterator[None]:
    """One intra-op thread for modules of tiny-model runs, restored afterwards.

    On tiny models a second thread gains little on an idle machine, while on a busy one (parallel test runs) OpenMP
    spin-waiting made the parity modules ~10x slower. Both sides of a parity test run under the same setting.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def browser_app(tmp_path_factory: pytest.TempPathFactory):
    """One real app server (launch.py) for every browser test module: a tiny SD1 checkpoint, a ControlNet, a LoRA and
    an embedding for it.

    Starting the app costs tens of seconds on 2 cores, so the browser modules share it; each test looks only at its
    own outputs.
    """
    from tests.server_process import AppServer
    from webui.engine.synthetic import write_synthetic_controlnet

    root = tmp_path_factory.mktemp("browser-app")
    base = write_synthetic_checkpoint(root / "models" / "Stable-diffusion" / "tiny.safetensors", "sd1", seed=9,
                                      metadata={"modelspec.resolution": "64x64"})
    write_synthetic_controlnet(root / "models" / "ControlNet" / "control_tiny.safetensors", base, "cldm-1.1", seed=3)
    from tests.lora_files import write_kohya_lora

    write_kohya_lora(root / "models" / "Lora" / "tiny_style.safetensors", base, seed=21,
                     metadata={"ss_tag_frequency": '{"5_hexagon": {"hexagon": 9}}'})
    (root / "models" / "embeddings").mkdir(parents=True)
    import torch

    torch.save({"string_to_param": {"*": torch.randn(2, base.text_configs[0].hidden_size)}},
               str(root / "models" / "embeddings" / "tiny_emb.pt"))
    app = AppServer(root / "models", root / "outputs").wait_ready()
    app.root = root
    yield app
    app.stop()


def tiny_service_context(root: Path, checkpoint: TinyCheckpoint, name: str = "tiny"):
    """The app's services over one tiny checkpoint (linked as `models/Stable-diffusion/<name>`), CPU, no extensions."""
    from webui.context import AppPaths, build_context

    checkpoints = root / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    (checkpoints / f"{name}.safetensors").symlink_to(checkpoint.path)
    return build_context(AppPaths(root / "models", root / "outputs", root / "data"), device="cpu",
                         load_extensions=False)


@pytest.fixture(scope="module")
def ui_browser():
    """One headless Chromium per browser-test module (module scope: Playwright's sync API cannot run two at once, and
    some modules drive their own)."""
    from playwright.sync_api import sync_playwright

    from tests.ui_artifacts import launch_chromium

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield browser
        finally:
            browser.close()
