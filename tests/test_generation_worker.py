"""The worker side of a pool job (`GenerationWorker`, what each Ray actor runs), in this process: a task that went
through pickling, as Ray sends it, gives the images, infotexts and file-name fields of the in-process path, for
every mode a worker runs (txt2img with hires fix, img2img, inpaint, outpaint). The Ray transport itself is tested
in test_ray_workers.py."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from webui.context import AppPaths, build_context
from webui.services.generation_worker import GenerationTask, GenerationWorker
from webui.services.img2img import Img2ImgRequest, Img2ImgRunner, OutpaintRunner
from webui.services.jobs import Job
from webui.services.requests import GenerationRequest


@pytest.fixture(scope="module")
def worker_and_front(tiny_sd1, tmp_path_factory: pytest.TempPathFactory):
    models = tiny_sd1.path.parent.parent
    root = tmp_path_factory.mktemp("worker")
    worker = GenerationWorker("worker-1", models, root / "worker-data", device="cpu")
    front = build_context(AppPaths(models, root / "outputs", root / "front-data"), device="cpu")
    return worker, front


def _init_image() -> Image.Image:
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[16:48, 8:40] = (220, 30, 30)
    return Image.fromarray(pixels)


def _mask() -> Image.Image:
    mask = np.zeros((64, 64), np.uint8)
    mask[20:44, 20:44] = 255
    return Image.fromarray(mask)


CASES = {
    "txt2img": ("txt2img", GenerationRequest(prompt="a red circle", steps=3, seed=3, width=64, height=64,
                                             batch_size=2, sampler_name="Euler a")),
    "hires": ("txt2img", GenerationRequest(prompt="a red circle", steps=3, seed=4, width=64, height=64,
                                           enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", denoising_strength=0.6)),
    "img2img": ("img2img", Img2ImgRequest(prompt="a blue square", steps=4, seed=5, width=64, height=64,
                                          init_image=_init_image(), denoising_strength=0.5)),
    "inpaint": ("img2img", Img2ImgRequest(prompt="a blue square", steps=4, seed=6, width=64, height=64,
                                          init_image=_init_image(), mask=_mask(), denoising_strength=0.8)),
    "outpaint": ("outpaint", Img2ImgRequest(prompt="a blue square", steps=4, seed=7, width=64, height=64,
                                            init_image=_init_image(), outpaint_right=16, denoising_strength=0.8)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_pickled_task_on_a_worker_gives_the_in_process_result(case: str, worker_and_front, tiny_sd1) -> None:
    worker, front = worker_and_front
    kind, request = CASES[case]
    request = replace(request, model="tiny-sd1", vae=front.models.vae_choice)
    runners = {"txt2img": front.generation.txt2img,
               "img2img": Img2ImgRunner(front.samplers),
               "outpaint": OutpaintRunner(front.samplers)}
    expected = front.generation.run(Job("job-local", "alice", kind), request, runners[kind], save=False)

    task = GenerationTask("alice", request, kind, runners[kind].mode, front.generation.options(),
                          front.settings.stored())
    final = worker.run("job-remote", pickle.loads(pickle.dumps(task)))  # what Ray's transport does to it
    final = pickle.loads(pickle.dumps(final))
    assert final.exception is None and final.finished and not final.interrupted
    assert len(final.images) == len(expected.images) >= 1
    for sent, image, infotext, fields in zip(final.images, expected.images, expected.infotexts, expected.fields):
        assert np.array_equal(np.asarray(sent.image), np.asarray(image))
        assert sent.infotext == infotext
        assert {k: v for k, v in sent.fields.items() if k != "job_timestamp"} == \
            {k: v for k, v in fields.items() if k != "job_timestamp"}
    assert final.holds == ["tiny-sd1"]


def test_a_refused_task_comes_back_as_the_same_error(worker_and_front) -> None:
    from webui.services.requests import RequestError

    worker, front = worker_and_front
    request = GenerationRequest(prompt="(unclosed:1.2.3)", steps=2, seed=1, width=64, height=64, model="tiny-sd1")
    task = GenerationTask("alice", request, "txt2img", "txt2img", front.generation.options(), {})
    final = pickle.loads(pickle.dumps(worker.run("job-bad", task)))
    assert isinstance(final.exception, RequestError) and final.exception.field_name == "prompt"
    assert final.images == []


def test_models_dir_is_shared_but_settings_and_caches_are_the_workers_own(worker_and_front) -> None:
    worker, front = worker_and_front
    assert worker.context.paths.models_dir == front.paths.models_dir
    assert worker.context.paths.data_dir != front.paths.data_dir and worker.context.paths.data_dir.name == "worker-1"
    assert worker.describe()["device"] == "cpu"
