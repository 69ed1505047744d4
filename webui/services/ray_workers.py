"""Generation workers on Ray: one actor per GPU (or per worker slot on CPU machines), on one machine or many.

Why Ray and not our own process pool: it already starts processes on other machines, places one per GPU, restarts a
crashed one, and tells the caller when a process died; we only decide what runs there (`GenerationWorker`) and what
the queue does about it (`WorkerPool`). Imported only with `--workers` or `--ray-address`: the app without them never
imports Ray, and the README's install command does not install it (`requirements-ray.txt`).

Where workers go:
- GPUs in the cluster: one worker per GPU (`num_gpus=1`; Ray sets each process's CUDA_VISIBLE_DEVICES).
- No GPU: one worker per unit of the custom resource `latent_studio_worker`; `--workers N` on a machine without a GPU
  starts a local Ray that advertises N of them, and a CPU node joins with
  `ray start --address HEAD --resources '{"latent_studio_worker": 1}'`.
A watcher looks every few seconds for units that have no worker yet (a node joined) and starts workers on them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.services.generation_worker import GenerationTask, GenerationWorker, TaskProgress
from webui.services.worker_pool import WorkerLost, WorkerPool

log = logging.getLogger(__name__)

WORKER_RESOURCE = "latent_studio_worker"
DISCOVER_EVERY_SECONDS = 5.0
CALL_TIMEOUT_SECONDS = 120.0
STARTUP_TIMEOUT_SECONDS = 900.0  # a poll or a cancel that takes longer means the worker is gone (or its node is)
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached; the message says what to run."""


@dataclass(frozen=True)
class WorkerSettings:
    """What every worker is built with: the same model folders as the front end, its own data folder."""

    models_dir: Path
    data_dir: Path
    precision: str | None = None
    threads: int = 0  # CPU threads per worker (0: Ray's choice, one per CPU it reserves)


def _lost_errors() -> tuple[type[BaseException], ...]:
    import ray.exceptions as errors

    names = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError",
             "GetTimeoutError", "ObjectLostError")
    return tuple(getattr(errors, name) for name in names if hasattr(errors, name))


class _RayCall:
    def __init__(self, ref: Any, worker: str) -> None:
        self.ref, self.worker = ref, worker

    def wait(self, timeout: float) -> TaskProgress | None:
        import ray

        ready, _ = ray.wait([self.ref], timeout=timeout)
        if not ready:
            return None
        try:
            return ray.get(self.ref)
        except _lost_errors() as exc:
            raise WorkerLost(_why(exc, self.worker)) from exc


def _why(exc: BaseException, worker: str) -> str:
    """One short line: Ray's own messages run to several hundred characters of RPC detail."""
    return f"{worker}'s process stopped or cannot be reached ({type(exc).__name__})"


class RayWorkerHandle:
    """One Ray actor running a `GenerationWorker`; Ray's actor-death errors become WorkerLost."""

    def __init__(self, actor: Any, name: str) -> None:
        self.actor, self.name = actor, name

    def _call(self, method: str, *args: Any, timeout: float = CALL_TIMEOUT_SECONDS) -> Any:
        import ray

        try:
            return ray.get(getattr(self.actor, method).remote(*args), timeout=timeout)
        except _lost_errors() as exc:
            raise WorkerLost(_why(exc, self.name)) from exc

    def describe(self) -> dict[str, Any]:
        """Waits for the worker's process to start (importing torch and building its services takes a while), or
        to come back after Ray restarted it: "temporarily unavailable" is waited out, a dead actor is WorkerLost."""
        import ray
        from ray.exceptions import ActorUnavailableError

        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while True:
            try:
                return ray.get(self.actor.describe.remote(), timeout=max(1.0, deadline - time.monotonic()))
            except ActorUnavailableError as exc:
                if time.monotonic() > deadline:
                    raise WorkerLost(_why(exc, self.name)) from exc
                time.sleep(1.0)
            except _lost_errors() as exc:
                raise WorkerLost(_why(exc, self.name)) from exc

    def start(self, task_id: str, task: GenerationTask) -> _RayCall:
        return _RayCall(self.actor.run.remote(task_id, task), self.name)

    def poll(self, task_id: str, images_seen: int, preview_seen: int) -> TaskProgress:
        return self._call("poll", task_id, images_seen, preview_seen)

    def cancel(self, task_id: str) -> None:
        self._call("cancel", task_id)

    def skip(self, task_id: str) -> None:
        self._call("skip", task_id)

    def stop(self) -> None:
        import ray

        ray.kill(self.actor, no_restart=True)


class RayWorkers:
    """Connects to (or starts) Ray, starts the workers, and finds new ones; `pool` is what the queue uses."""

    def __init__(self, settings: WorkerSettings, workers: int = 0, address: str | None = None) -> None:
        try:
            import ray
        except ImportError as exc:
            raise RayUnavailable("--workers and --ray-address need Ray: pip install -r requirements-ray.txt") from exc
        self.settings = settings
        self._ray = ray
        self._lock = threading.Lock()
        self._started = 0
        self._units_seen: int | None = None
        if not ray.is_initialized():
            self._init(workers, address)
        resources = ray.cluster_resources()
        self.gpu = resources.get("GPU", 0) >= 1
        self.wanted = workers  # 0: one per GPU / worker unit in the cluster
        self._actor_class = ray.remote(GenerationWorker)
        self.pool = WorkerPool(self.discover, self._describe_setup(address))
        for handle in self.discover():
            self.pool.add(handle)
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="ray-worker-watcher", daemon=True)
        self._watcher.start()

    def _init(self, workers: int, address: str | None) -> None:
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
               "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        try:
            if address:
                self._ray.init(address=address, runtime_env={"env_vars": env}, logging_level=logging.WARNING)
                return
            import torch

            gpus = torch.cuda.device_count()
            resources = {} if gpus else {WORKER_RESOURCE: float(max(1, workers))}
            self._ray.init(num_cpus=max(os.cpu_count() or 1, workers), num_gpus=gpus, resources=resources,
                           include_dashboard=False, runtime_env={"env_vars": env}, logging_level=logging.WARNING)
        except Exception as exc:  # ConnectionError, a wrong address, a port in use...
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise RayUnavailable(f"could not start {where}: {exc}. Check the address (ray status on the head node "
                                 "prints it) or leave out --ray-address") from exc

    def _describe_setup(self, address: str | None) -> str:
        where = f"cluster {address}" if address else "this machine"
        return f"Ray ({where}), one worker per {'GPU' if self.gpu else WORKER_RESOURCE + ' unit'}"

    def _units(self) -> int:
        """Worker units in the cluster now: GPUs, or `latent_studio_worker` units on CPU clusters."""
        return int(self._ray.cluster_resources().get("GPU" if self.gpu else WORKER_RESOURCE, 0))

    def discover(self) -> list[RayWorkerHandle]:
        """Start workers for units that have none: at start up to `--workers` (all units without it), later one
        per unit that appeared since (a node joined)."""
        with self._lock:
            units = self._units()
            if self._units_seen is None:
                target = min(units, self.wanted) if self.wanted else units
            else:
                target = self._started + max(0, units - self._units_seen)
            self._units_seen = units if self._units_seen is None else max(self._units_seen, units)
            return [self._start_worker() for _ in range(max(0, target - self._started))]

    def _start_worker(self) -> RayWorkerHandle:
        name = f"worker-{self._started + 1}"
        self._started += 1
        needs = {"num_gpus": 1, "num_cpus": 1} if self.gpu else {"num_cpus": 0, "resources": {WORKER_RESOURCE: 1}}
        actor = self._actor_class.options(name=None, max_concurrency=8, max_restarts=MAX_RESTARTS, max_task_retries=0,
                                    **needs).remote(name, self.settings.models_dir, self.settings.data_dir,
                                                    None, self.settings.precision, self.settings.threads)
        return RayWorkerHandle(actor, name)

    def _watch(self) -> None:
        while not self._stop.wait(DISCOVER_EVERY_SECONDS):
            try:
                added = self.pool.refresh()
                if added:
                    log.info("%d new generation worker(s) joined", added)
            except Exception:  # the watcher must survive a cluster hiccup
                log.exception("looking for new Ray workers failed")

    def shutdown(self) -> None:
        """Stop the watcher and the workers, and disconnect from Ray (a cluster we joined keeps running)."""
        self._stop.set()
        self.pool.stop()
        self._ray.shutdown()


# A worker whose process dies is started again by Ray this many times (its model cache starts empty); the pool
# takes it out of rotation sooner if it keeps dying (`worker_pool.MAX_CONSECUTIVE_FAILURES`).
MAX_RESTARTS = 3
