"""Selectable scripts (A1111's "Script" dropdown): one script turns one request into several generations.

A `Script` has a title, an argument schema (`ScriptArgs`, a pydantic model whose field order is A1111's positional
order, so `script_args: [...]` from A1111 clients lands on the right fields, while named arguments `{...}` work too),
an optional `plan` that checks the arguments and lists the generations before anything is queued, and `run`, which
submits its generations through a `ScriptRunner` and returns an ordinary `GenerationResult` (images, infotexts, an
optional grid first). Built-in scripts (X/Y/Z plot, prompts from file) and extensions' scripts register the same way:
`ExtensionAPI.add_script`.

A script runs as ONE job of the queue: its generations run one after another inside it, each on a child job whose
progress, preview, interrupt and skip are the script job's, so the UI and `/sdapi/v1/progress` show one bar across
all of them and Interrupt stops the whole script (finished images are kept).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, Iterable, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, ValidationError

from webui.engine.samplers import SamplerRegistry
from webui.services.generation import GenerationResult, GenerationService, ModeRunner
from webui.services.jobs import Job
from webui.services.model_manager import ModelManager
from webui.services.outputs import OutputSaveError
from webui.services.requests import MAX_SEED, GenerationRequest, RequestError, request_error

Mode = Literal["txt2img", "img2img"]
ARGS_FIELD = "script_args"


class ScriptArgs(BaseModel):
    """Base of every script's argument schema. Field order = A1111's positional order; `title` is the UI label;
    `json_schema_extra={"ui": False}` keeps a field out of the UI (API-only), `{"lines": n}` makes a text box taller."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


@dataclass(frozen=True)
class ScriptEnv:
    """What a script may look at while checking its arguments: the mode, the sampler table, the checkpoints."""

    mode: Mode
    samplers: SamplerRegistry
    models: ModelManager
    request_type: type[GenerationRequest] = GenerationRequest  # the mode's request class (Img2ImgRequest, ...)

    def has_field(self, name: str) -> bool:
        """Whether this mode's requests have the field (e.g. `init_image` only in img2img)."""
        return name in getattr(self.request_type, "__pydantic_fields__", {})


class Script:
    """Subclass it, set `title` and `Args`, and write `run`. `modes` says which tabs offer it."""

    title: ClassVar[str] = ""
    modes: ClassVar[tuple[Mode, ...]] = ("txt2img", "img2img")
    Args: ClassVar[type[ScriptArgs]] = ScriptArgs

    @property
    def name(self) -> str:
        """A1111's API name: the title in lower case (what `script_name` matches, case-insensitively)."""
        return self.title.lower()

    def choices(self, field_name: str, env: ScriptEnv) -> list[str] | None:
        """The choices of a field the UI shows as a dropdown (None: a free field)."""
        return None

    def positional(self, values: list[Any]) -> dict[str, Any]:
        """A1111's positional `script_args` as named arguments; override for an older argument order."""
        names = list(self.Args.model_fields)
        if len(values) > len(names):
            raise RequestError(ARGS_FIELD, f"{self.title!r} takes at most {len(names)} arguments "
                                           f"({', '.join(names)}), not {len(values)}")
        return dict(zip(names, values))

    def plan(self, request: GenerationRequest, args: ScriptArgs, env: ScriptEnv) -> list[GenerationRequest]:
        """Check the arguments against the request, before the job is queued (raise `RequestError` naming the
        argument, e.g. `script_args.x_values`), and list the generations `run` will submit (used for limits)."""
        return [request]

    def run(self, request: GenerationRequest, args: ScriptArgs, runner: "ScriptRunner") -> GenerationResult:
        raise NotImplementedError


class _ChildJob(Job):
    """One generation of a script, run inside the script's job: its progress and preview are forwarded to the
    script's job, and the script job's interrupt and skip act on it."""

    def __init__(self, parent: Job, number: int, offset: int, total: int) -> None:
        super().__init__(id=f"{parent.id}.{number}", owner=parent.owner, kind=parent.kind)
        self.parent, self.offset, self.total = parent, offset, total
        self._forwarded_preview = 0

    @property
    def interrupted(self) -> bool:  # type: ignore[override]
        return self.parent.interrupted or self._cancel.is_set()

    @property
    def skip_requested(self) -> bool:  # type: ignore[override]
        return self.parent.skip_requested

    def clear_skip(self) -> None:
        self.parent.clear_skip()

    def touch(self) -> None:
        super().touch()
        parent = self.parent
        parent.step, parent.total_steps = self.step, self.total_steps
        parent.batches_done = self.offset + self.batches_done
        parent.batches_total = max(self.total, self.offset + self.batches_total)
        if self.sampling_started is not None and parent.sampling_started is None:
            parent.sampling_started = self.sampling_started
        if self.preview_version != self._forwarded_preview:
            self._forwarded_preview = self.preview_version
            parent.preview_latents, parent.preview_factors = self.preview_latents, self.preview_factors
            parent.preview_version += 1
        parent.touch()


class ScriptRunner:
    """What a running script uses: `generate` one request (inline, in the script's job), `save_grid`, `interrupted`."""

    def __init__(self, job: Job, generation: GenerationService, mode_runner: ModeRunner, env: ScriptEnv,
                 save: bool) -> None:
        self.job, self.generation, self.mode_runner, self.env, self.save = job, generation, mode_runner, env, save
        self._planned_batches = 0
        self._batches_done = 0
        self._count = 0
        self.warnings: list[str] = []  # added to the script's result (e.g. a grid that could not be saved)

    @property
    def mode(self) -> Mode:
        return self.env.mode

    @property
    def interrupted(self) -> bool:
        return self.job.interrupted

    def expect(self, requests: Iterable[GenerationRequest]) -> None:
        """Tell the progress bar how many batches the whole script will sample."""
        self._planned_batches = sum(request.n_iter for request in requests)
        self.job.batches_total = self._planned_batches

    def generate(self, request: GenerationRequest, save: bool | None = None) -> GenerationResult:
        """Run one generation to completion (or interruption) and return its result; its images are saved as the
        script says (`save`, default: the script job's setting)."""
        self._count += 1
        child = _ChildJob(self.job, self._count, self._batches_done, self._planned_batches)
        result = self.generation.run(child, request, self.mode_runner, self.save if save is None else save)
        self._batches_done += request.n_iter
        return result

    def random_seed(self) -> int:
        return secrets.randbelow(MAX_SEED)

    def save_grid(self, image: Image.Image, infotext: str, seed: int, prompt: str, kind: str) -> str | None:
        """Save a script's grid in the mode's grid folder with its infotext (when the job saves); returns the path,
        or None (not saving, or saving failed: the grid is still returned and the failure becomes a warning)."""
        if not self.save:
            return None
        fields = {"prompt": prompt, "seed": seed, "seed_first": seed, "seed_last": seed, "script": kind}
        try:
            return str(self.generation.outputs.save_image(image, infotext, self.mode, seed, self.job.owner, fields,
                                                          grid=True))
        except (OutputSaveError, ValueError) as exc:
            self.warnings.append(f"{kind} not saved: {exc}")
            return None


@dataclass
class PreparedScript:
    """A script with checked arguments, ready to submit."""

    script: Script
    args: ScriptArgs
    requests: list[GenerationRequest] = field(default_factory=list)


ScriptSource = Callable[[], Iterable[Script]]


class ScriptService:
    """Finds scripts by name, checks their arguments, and runs them as one job of the queue."""

    def __init__(self, generation: GenerationService, source: ScriptSource) -> None:
        self.generation = generation
        self.source = source  # every registered script (built-in and extensions'), e.g. ExtensionManager.scripts

    def env(self, mode: Mode) -> ScriptEnv:
        from webui.services.img2img import Img2ImgRequest

        request_type = Img2ImgRequest if mode == "img2img" else GenerationRequest
        return ScriptEnv(mode, self.generation.samplers, self.generation.models, request_type)

    def scripts(self, mode: Mode) -> list[Script]:
        return [script for script in self.source() if mode in script.modes]

    def find(self, name: str, mode: Mode) -> Script:
        folded = name.strip().lower()
        for script in self.scripts(mode):
            if script.name == folded:
                return script
        titles = ", ".join(repr(script.title) for script in self.scripts(mode)) or "none"
        raise RequestError("script_name", f"no selectable {mode} script named {name!r} (available: {titles})")

    def parse_args(self, script: Script, values: list[Any] | dict[str, Any] | None) -> ScriptArgs:
        """A1111's positional list, or named arguments; missing ones take their defaults. A bad value raises
        RequestError naming the argument (`script_args.x_type: ...`)."""
        if values is None:
            named: dict[str, Any] = {}
        elif isinstance(values, dict):
            named = dict(values)
        elif isinstance(values, (list, tuple)):
            named = script.positional(list(values))
        else:
            raise RequestError(ARGS_FIELD, f"must be a list (A1111's positional order) or an object of named "
                                           f"arguments, not {type(values).__name__}")
        try:
            return script.Args.model_validate(named)
        except ValidationError as exc:
            error = request_error(exc, script.Args)
            if error.field_name in script.Args.model_fields:
                raise RequestError(f"{ARGS_FIELD}.{error.field_name}",
                                   str(error).split(": ", 1)[1]) from None
            known = ", ".join(script.Args.model_fields)
            raise RequestError(f"{ARGS_FIELD}.{error.field_name}",
                               f"{script.title!r} has no argument {error.field_name!r} (it takes: {known})") from None

    def prepare(self, name: str, values: list[Any] | dict[str, Any] | None, request: GenerationRequest, mode: Mode
                ) -> PreparedScript:
        """Find, parse and plan: every problem is found here, before anything is queued."""
        script = self.find(name, mode)
        args = self.parse_args(script, values)
        requests = script.plan(request, args, self.env(mode))
        return PreparedScript(script, args, list(requests))

    def submit(self, owner: str, prepared: PreparedScript, request: GenerationRequest,
               mode_runner: ModeRunner | None = None, save: bool = True) -> Job:
        """Queue the script as one job; its result is a `GenerationResult` like a plain generation's."""
        mode_runner = mode_runner or self.generation.txt2img
        mode: Mode = "img2img" if mode_runner.mode != "txt2img" else "txt2img"
        if not request.vae:
            request = replace(request, vae=self.generation.models.vae_choice)
        env = self.env(mode)
        script, args = prepared.script, prepared.args

        def work(job: Job) -> GenerationResult:
            runner = ScriptRunner(job, self.generation, mode_runner, env, save)
            runner.expect(prepared.requests)
            result = script.run(request, args, runner)
            if not isinstance(result, GenerationResult):
                raise TypeError(f"the script {script.title!r} returned {type(result).__name__}, not a "
                                "GenerationResult")
            result.interrupted = result.interrupted or job.interrupted
            result.warnings += [warning for warning in runner.warnings if warning not in result.warnings]
            return result

        return self.generation.queue.submit(owner, mode_runner.mode, work)

    def info(self, mode: Mode) -> list[dict[str, Any]]:
        """A1111's `/sdapi/v1/script-info` entries for this mode's selectable scripts."""
        env = self.env(mode)
        listing = []
        for script in self.scripts(mode):
            arguments = []
            for name, info in script.Args.model_fields.items():
                low = high = step = None
                for item in info.metadata:
                    low = getattr(item, "ge", low)
                    high = getattr(item, "le", high)
                    step = getattr(item, "multiple_of", step)
                default = info.get_default(call_default_factory=True)
                arguments.append({"label": info.title or name, "name": name, "value": default, "minimum": low,
                                  "maximum": high, "step": step, "choices": script.choices(name, env),
                                  "description": info.description})
            listing.append({"name": script.name, "is_alwayson": False, "is_img2img": mode == "img2img",
                            "args": arguments})
        return listing
