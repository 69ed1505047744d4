"""LoRA training as a job: one run at a time, sharing the device with generation one step at a time.

The run trains on its own copy of the base checkpoint (loaded from disk), so cached models that generation uses are
never touched. Progress (steps, ETA, the loss history, the latest sample images) is kept on the run for any interface
to show; when the run completes, the LoRA library rescans so the new file is in the picker at once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from webui.services.jobs import Job
from webui.services.lora import LoraLibrary
from webui.services.model_manager import ModelManager
from webui.services.queue import JobQueue
from webui.services.users import UserStore
from webui.training.lora_dataset import DatasetError, LoraDataset, scan_dataset
from webui.training.lora_network import UNET_LAYER_CHOICES, LoraShapeError  # noqa: F401 (choices re-exported for the tab)
from webui.training.train_lora import (  # noqa: F401 (the choices re-exported for the training tab)
    LR_SCHEDULERS, OPTIMIZERS, PRECISIONS, LoraTrainingSettings, TrainingError, TrainingProgress, TrainingResult,
    check_embedding_slot, train_lora,
)

MAX_LOSS_POINTS = 2000  # the plot keeps every point up to this, then every other one


class TrainingBusyError(RuntimeError):
    """Another training run holds the trainer."""


@dataclass
class TrainingRun:
    job: Job
    settings: LoraTrainingSettings
    started: float = field(default_factory=time.time)
    losses: list[tuple[int, float, float]] = field(default_factory=list)  # (step, loss, smoothed)
    samples: list[tuple[Path, str]] = field(default_factory=list)  # (image file, caption), newest first
    messages: list[str] = field(default_factory=list)
    progress: TrainingProgress | None = None
    total_steps: int = 0
    result: TrainingResult | None = None
    error: str | None = None
    version: int = 0  # bumps on every change, so a poller redraws only when something moved
    dataset: LoraDataset | None = field(default=None, repr=False)  # scanned once, when the run was validated

    def status_line(self) -> str:
        state = self.job.status
        if self.error:
            return f"failed: {self.error}"
        if self.result is not None and self.result.output is not None:
            return (f"done: {self.result.output.name} ({self.result.steps} steps, {self.result.seconds:.0f} s, "
                    f"{self.result.samples_per_second:.1f} samples/s); it is in the LoRA picker now")
        if state == "interrupted":
            return f"interrupted at step {self.result.steps if self.result else 0}: tick Resume and start to continue"
        if self.progress is None:
            return "preparing (loading the model, caching latents)…" if state == "running" else state
        p = self.progress
        eta = "" if p.eta_seconds != p.eta_seconds else f", ETA {_duration(p.eta_seconds)}"
        return (f"step {p.step}/{p.total_steps}, loss {p.smoothed_loss:.4f}, lr {p.learning_rate:.2e}, "
                f"{p.samples_per_second:.1f} samples/s{eta}")


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class _RunObserver:
    def __init__(self, run: TrainingRun) -> None:
        self.run = run

    def started(self, total_steps: int, dataset: LoraDataset, resumed_from: int) -> None:
        self.run.total_steps = total_steps
        self.run.job.total_steps = total_steps
        self.run.job.step = resumed_from
        self.run.messages.extend(dataset.warnings)
        self.run.version += 1

    def stepped(self, progress: TrainingProgress) -> None:
        run = self.run
        run.progress = progress
        run.job.step = progress.step
        run.job.eta_seconds = progress.eta_seconds
        run.losses.append((progress.step, progress.loss, progress.smoothed_loss))
        if len(run.losses) > MAX_LOSS_POINTS:
            run.losses = run.losses[::2]
        run.version += 1

    def sampled(self, step: int, images: list[Image.Image], paths: list[Path]) -> None:
        prompts = self.run.settings.sample_prompts
        fresh = [(path, f"step {step}: {prompts[i] if i < len(prompts) else ''}") for i, path in enumerate(paths)]
        self.run.samples = (fresh + self.run.samples)[:48]
        self.run.version += 1

    def message(self, text: str) -> None:
        self.run.messages.append(text)
        self.run.version += 1


class LoraTrainingService:
    """Starts, tracks and interrupts LoRA training runs."""

    def __init__(self, queue: JobQueue, models: ModelManager, loras: LoraLibrary, lora_dir: Path,
                 runs_dir: Path, users: UserStore | None = None, embeddings_dir: Path | None = None) -> None:
        """With several logins (`users.is_multi_user`) each user sees only their own runs' progress and samples, and
        only admins may start a run: its dataset and regularisation folders are paths on the server, so another
        user could otherwise train on (and see samples of) any folder the server can read."""
        self.users = users or UserStore()
        self.private_runs = self.users.is_multi_user
        self.queue = queue
        self.models = models
        self.loras = loras
        self.lora_dir = Path(lora_dir)
        self.runs_dir = Path(runs_dir)
        self.embeddings_dir = Path(embeddings_dir) if embeddings_dir else self.lora_dir.parent / "embeddings"
        self._lock = threading.Lock()
        self._runs: list[TrainingRun] = []

    def prepare(self, settings: LoraTrainingSettings, base_title: str) -> tuple[LoraTrainingSettings, LoraDataset]:
        """Resolve the base model and folders and check everything that can be checked before a job starts."""
        info = self.models.resolve(base_title)
        settings = replace(settings, base=info.path, output_dir=self.lora_dir, embedding_dir=self.embeddings_dir,
                           run_dir=self.runs_dir / settings.name if settings.name else None)
        settings.check()
        check_embedding_slot(settings)
        dataset = scan_dataset(settings.data, settings.trigger)
        if not settings.sample_prompts and settings.sample_every:
            captions = list(dict.fromkeys(image.caption for image in dataset.images))
            settings = replace(settings, sample_prompts=captions[:2])
        if settings.output_path.exists() and not settings.resume:
            raise TrainingError(f"{settings.output_path.name} already exists in {self.lora_dir}: choose another "
                                "name, or delete the old file first")
        return settings, dataset

    def start(self, owner: str, settings: LoraTrainingSettings, base_title: str) -> TrainingRun:
        """Validate, then train on a worker thread. Raises a ValueError subclass for any bad input."""
        user = self.users.get(owner)
        if self.users.is_multi_user and (user is None or not user.is_admin):
            raise TrainingError("on a server shared by several users only an admin can start LoRA training (the "
                                "dataset folder is a path on the server); ask an admin to run it")
        settings, dataset = self.prepare(settings, base_title)
        with self._lock:
            busy = next((r for r in self._runs if not r.job.finished), None)
            if busy is not None:
                raise TrainingBusyError(f"LoRA {busy.settings.name!r} is training now (one run at a time): wait for "
                                        "it or interrupt it")
            run = TrainingRun(None, settings)  # type: ignore[arg-type]  # the job comes from the queue below
            run.dataset = dataset
            run.job = self.queue.start_stepwise(owner, "train-lora", lambda job: self._work(run, job))
            self._runs.append(run)
            self._runs = self._runs[-20:]
        return run

    def _work(self, run: TrainingRun, job: Job) -> None:
        run.job = job
        try:
            run.result = train_lora(run.settings, _RunObserver(run), should_stop=lambda: run.job.interrupted,
                                    device_guard=lambda: self.queue.jobs.device_lock, dataset=run.dataset)
            run.job.result = run.result
            if run.result.output is not None:
                self.loras.refresh()  # before the status says done: the picker has it when anyone looks
            run.job.status = "interrupted" if run.result.interrupted else "done"
        except (TrainingError, DatasetError, LoraShapeError, ValueError) as exc:
            run.error = str(exc)
            run.job.status, run.job.error = "failed", run.error
        except Exception as exc:  # reported on the run; the app stays up
            run.error = f"{type(exc).__name__}: {exc}"
            run.job.status, run.job.error = "failed", run.error
        finally:
            run.version += 1

    def latest(self, owner: str | None = None) -> TrainingRun | None:
        """The owner's newest run, else (single user) the newest of anyone's; with private runs only the owner's."""
        with self._lock:
            runs = list(self._runs)
        mine = [r for r in runs if owner is not None and r.job.owner == owner]
        if self.private_runs:
            return mine[-1] if mine else None
        return (mine or runs or [None])[-1]

    def interrupt(self, owner: str) -> bool:
        run = self.latest(owner)
        if run is None or run.job.owner != owner or run.job.finished:
            return False
        run.job.interrupt()
        return True

    def wait(self, run: TrainingRun, timeout: float | None = None) -> bool:
        """Block until the run finishes (tests, CLI); True if it did."""
        deadline = None if timeout is None else time.time() + timeout
        while not run.job.finished:
            if deadline is not None and time.time() > deadline:
                return False
            time.sleep(0.05)
        return True
