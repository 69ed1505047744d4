"""The "Prompts from file or textbox" script: one generation per non-empty line.

As A1111's `scripts/prompts_from_file.py` (read for behaviour, written anew): a line is a prompt, or command-line
style options (`--prompt "a cat" --negative_prompt "blurry" --steps 20 --seed 5 --sampler_name "Euler a" ...`,
quoted with shell rules; `--prompt` and `--negative_prompt` take every word up to the next option). With "Insert
prompts at the start/end" a line's prompt is joined to the prompt typed in the tab. "Iterate seed every line" moves
the seed on by the images of each line; "Use same random seed for all lines" draws one seed for every line. Unlike
A1111, a line it cannot read stops the script before anything runs, with the line number (A1111 logs it and uses the
whole line as a prompt), and options that would write outside the outputs folder (`--outpath_samples`) are refused.
"""

from __future__ import annotations

import shlex
from dataclasses import replace
from typing import Any, Callable, Literal

from pydantic import Field

from webui.services.generation import GenerationResult
from webui.services.requests import GenerationRequest, RequestError
from webui.services.scripts import Script, ScriptArgs, ScriptEnv, ScriptRunner

TITLE = "Prompts from file or textbox"
MAX_LINES = 1000


def _text(value: str) -> str:
    return value


def _whole(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a whole number") from None


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None


def _truth(value: str) -> bool:
    return value.strip().lower() == "true"


# option -> (how its value is read, the request field it sets; None: accepted and ignored as in A1111's effect here)
OPTIONS: dict[str, tuple[Callable[[str], Any], str | None]] = {
    "prompt": (_text, "prompt"),
    "negative_prompt": (_text, "negative_prompt"),
    "sd_model": (_text, "model"),
    "seed": (_whole, "seed"),
    "subseed": (_whole, "subseed"),
    "subseed_strength": (_number, "subseed_strength"),
    "seed_resize_from_h": (_whole, "seed_resize_from_h"),
    "seed_resize_from_w": (_whole, "seed_resize_from_w"),
    "sampler_name": (_text, "sampler_name"),
    "sampler_index": (_whole, "sampler_name"),  # an index into the sampler list (old A1111 files)
    "scheduler": (_text, "scheduler"),
    "batch_size": (_whole, "batch_size"),
    "n_iter": (_whole, "n_iter"),
    "steps": (_whole, "steps"),
    "cfg_scale": (_number, "cfg_scale"),
    "width": (_whole, "width"),
    "height": (_whole, "height"),
    "denoising_strength": (_number, "denoising_strength"),
    "styles": (_text, "styles"),
    "restore_faces": (_truth, "restore_faces"),
    "tiling": (_truth, "tiling"),
    "do_not_save_samples": (_truth, None),
    "do_not_save_grid": (_truth, None),
    "prompt_for_display": (_text, None),
}
REFUSED = {"outpath_samples", "outpath_grids"}
PROMPT_OPTIONS = ("prompt", "negative_prompt")


def parse_line(line: str) -> dict[str, Any]:
    """One line's options: `{"prompt": line}` for a plain prompt, else the `--name value` pairs it holds.
    Raises ValueError saying what is wrong."""
    if "--" not in line:
        return {"prompt": line}
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise ValueError(f"cannot split it into options ({exc}); check the quotes") from None
    options: dict[str, Any] = {}
    position = 0
    while position < len(words):
        word = words[position]
        if not word.startswith("--"):
            raise ValueError(f"{word!r} should be an option starting with --")
        name = word[2:]
        if name in REFUSED:
            raise ValueError(f"--{name} is not accepted here (images are saved in the outputs folder)")
        if name not in OPTIONS:
            raise ValueError(f"unknown option --{name}; the options are: "
                             f"{', '.join('--' + key for key in OPTIONS)}")
        if position + 1 >= len(words):
            raise ValueError(f"--{name} needs a value")
        if name in PROMPT_OPTIONS:  # every word up to the next option
            position += 1
            taken = [words[position]]
            position += 1
            while position < len(words) and not words[position].startswith("--"):
                taken.append(words[position])
                position += 1
            options[name] = " ".join(taken)
            continue
        read, _ = OPTIONS[name]
        try:
            options[name] = read(words[position + 1])
        except ValueError as exc:
            raise ValueError(f"--{name}: {exc}") from None
        position += 2
    return options


def prompt_lines(text: str) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


class PromptsArgs(ScriptArgs):
    """A1111 1.10's positional order (an older three-argument list without `prompt_position` is accepted too)."""

    checkbox_iterate: bool = Field(False, title="Iterate seed every line")
    checkbox_iterate_batch: bool = Field(False, title="Use same random seed for all lines")
    prompt_position: Literal["start", "end"] = Field("start", title="Insert prompts at the",
                                                     description="where a line's prompt joins the tab's prompt")
    prompt_txt: str = Field("", title="List of prompt inputs", json_schema_extra={"lines": 7})


class PromptsFromFile(Script):
    title = TITLE
    Args = PromptsArgs

    def choices(self, field_name: str, env: ScriptEnv) -> list[str] | None:
        return ["start", "end"] if field_name == "prompt_position" else None

    def positional(self, values: list[Any]) -> dict[str, Any]:
        if len(values) == 3:  # A1111 before 1.7: iterate, same seed, text
            return {"checkbox_iterate": values[0], "checkbox_iterate_batch": values[1], "prompt_txt": values[2]}
        return super().positional(values)

    def line_requests(self, request: GenerationRequest, args: PromptsArgs, env: ScriptEnv,
                      seed_source: Callable[[], int]) -> list[tuple[GenerationRequest, bool]]:
        """(request, save?) for each line, every value checked by the request schema; the seed moves as chosen."""
        lines = prompt_lines(args.prompt_txt)
        if not lines:
            raise RequestError("script_args.prompt_txt", "no prompts: write one prompt (or one line of --options) "
                                                         "per line")
        if len(lines) > MAX_LINES:
            raise RequestError("script_args.prompt_txt", f"{len(lines)} lines; the limit is {MAX_LINES}")
        seed = request.seed
        if (args.checkbox_iterate or args.checkbox_iterate_batch) and seed == -1:
            seed = seed_source()
        made = []
        for number, line in enumerate(lines, 1):
            try:
                options = parse_line(line)
                fields: dict[str, Any] = {}
                for name, value in options.items():
                    target = OPTIONS[name][1]
                    if target is None:
                        continue
                    if name == "sampler_index":
                        names = env.samplers.names()
                        if not 0 <= value < len(names):
                            raise ValueError(f"--sampler_index {value} is not an index into the {len(names)} samplers")
                        value = names[value]
                    if target in ("restore_faces", "tiling") and not env.has_field(target):
                        if value:
                            raise ValueError(f"--{name} is not supported here; leave it out")
                        continue
                    if not env.has_field(target):
                        raise ValueError(f"--{name} is not supported here ({env.mode}); leave it out")
                    fields[target] = value
                if "seed" not in fields:
                    fields["seed"] = seed
                fields["prompt"] = _joined(request.prompt, options.get("prompt"), args.prompt_position,
                                           fields.get("prompt", request.prompt))
                fields["negative_prompt"] = _joined(request.negative_prompt, options.get("negative_prompt"),
                                                    args.prompt_position,
                                                    fields.get("negative_prompt", request.negative_prompt))
                line_request = replace(request, **fields)
            except (ValueError, RequestError) as exc:
                raise RequestError("script_args.prompt_txt", f"line {number}: {exc}") from None
            made.append((line_request, not options.get("do_not_save_samples", False)))
            if args.checkbox_iterate:
                seed = seed + request.batch_size * request.n_iter
        return made

    def plan(self, request: GenerationRequest, args: PromptsArgs, env: ScriptEnv) -> list[GenerationRequest]:
        return [line for line, _ in self.line_requests(request, args, env, lambda: 0)]

    def run(self, request: GenerationRequest, args: PromptsArgs, runner: ScriptRunner) -> GenerationResult:
        result = GenerationResult()
        lines = self.line_requests(request, args, runner.env, runner.random_seed)
        runner.expect(line for line, _ in lines)
        paths_complete = True
        for line_request, save in lines:
            if runner.interrupted:
                break
            done = runner.generate(line_request, save=runner.save and save)
            result.images += done.images
            result.infotexts += done.infotexts
            result.seeds += done.seeds
            result.grid_paths += done.grid_paths
            result.warnings += [w for w in done.warnings if w not in result.warnings]
            paths_complete = paths_complete and len(done.paths) == len(done.images)
            result.paths += done.paths
            result.request = result.request or done.request
            result.interrupted = result.interrupted or done.interrupted
        if not paths_complete:
            result.paths = []
        return result


def _joined(typed: str, line: str | None, position: str, default: str) -> str:
    """A line's prompt joined to the tab's prompt (A1111 1.10: "Insert prompts at the start/end")."""
    if line and typed:
        return f"{line} {typed}" if position == "start" else f"{typed} {line}"
    return default
