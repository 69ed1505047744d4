"""The X/Y/Z plot script: one generation per combination of up to three axes' values, drawn as labelled grids.

Behaviour follows A1111's `scripts/xyz_grid.py` (read for behaviour, written anew): the axis list and its order (API
clients send `x_type` as an index into the mode's list, or here also the label), the value syntax (comma lists with
CSV quoting, ranges `1-5`, `1-10 (+2)`, `1-10 [5]`, float ranges, Prompt S/R whose first value is the search text),
the positional argument order, the grid layout (one X-by-Y grid per Z value and a grid of those), the `Script`,
`X Type`, `X Values` infotext keys, "Keep -1 for seeds", "Include Sub Images" and "Include Sub Grids".

An axis acts on a request field; an axis whose field this mode's request does not have (hires fix, refiner, face
restore, ...) is listed for index compatibility but refused with a message, and comes to life when the field does.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal

import numpy as np
from PIL import Image
from pydantic import Field

from webui.engine.grids import labelled_grid
from webui.engine.samplers import SamplerError
from webui.services.generation import GenerationResult
from webui.services.infotext import format_parameter_line
from webui.services.model_manager import ModelError
from webui.services.requests import GenerationRequest, RequestError, Whole
from webui.services.scripts import Mode, Script, ScriptArgs, ScriptEnv, ScriptRunner

TITLE = "X/Y/Z plot"
MAX_CELLS = 1024
Kind = Literal["int", "float", "str", "order"]
Apply = Callable[[GenerationRequest, Any, list[Any], ScriptEnv], GenerationRequest]


@dataclass(frozen=True)
class Axis:
    """One parameter an axis can vary."""

    label: str
    kind: Kind
    modes: tuple[Mode, ...] = ("txt2img", "img2img")
    fields: tuple[str, ...] = ()  # request fields it sets (the first the request has); empty: `apply` does the work
    apply: Apply | None = None
    choices: Callable[[ScriptEnv], list[str]] | None = None
    confirm: Callable[[list[Any], ScriptEnv], list[Any]] | None = None  # checks, and may normalise, the values
    label_values_only: bool = False  # "Euler a" rather than "Sampler: Euler a"
    cost: float = 0.0  # expensive axes (checkpoints) change least often

    def field(self, env: ScriptEnv) -> str | None:
        return next((name for name in self.fields if env.has_field(name)), None)

    def supported(self, env: ScriptEnv) -> bool:
        return self.label == "Nothing" or self.apply is not None or self.field(env) is not None

    def set(self, request: GenerationRequest, value: Any, values: list[Any], env: ScriptEnv) -> GenerationRequest:
        if self.apply is not None:
            return self.apply(request, value, values, env)
        name = self.field(env)
        return request if name is None else replace(request, **{name: value})

    def format(self, value: Any) -> str:
        if self.label == "Nothing":
            return ""
        if self.kind == "order":
            text = ", ".join(value)
        elif isinstance(value, float):
            text = str(round(value, 8))  # A1111's labels: "CFG Scale: 7.0", float noise rounded away
        else:
            text = str(value)
        return text if self.label_values_only else f"{self.label}: {text}"


# ----- how the axes act -----------------------------------------------------------------------------------------

def _prompt_search_replace(request: GenerationRequest, value: str, values: list[str], env: ScriptEnv
                           ) -> GenerationRequest:
    search = values[0]
    return replace(request, prompt=request.prompt.replace(search, value),
                   negative_prompt=request.negative_prompt.replace(search, value))


def _prompt_order(request: GenerationRequest, order: tuple[str, ...], values: list[Any], env: ScriptEnv
                  ) -> GenerationRequest:
    """The tokens (the axis' words, in the prompt) put back into the prompt's slots in the order `order`."""
    prompt = request.prompt
    slots = sorted((prompt.find(token), token) for token in order)
    parts, rest = [], prompt
    for _, token in slots:
        at = rest.find(token)
        parts.append(rest[:at])
        rest = rest[at + len(token):]
    rebuilt = "".join(part + token for part, token in zip(parts, order))
    return replace(request, prompt=rebuilt + rest)


LORA_TAG = re.compile(r"<lora:([^:>]+):([^:>]*)((?::[^>]*)?)>", re.IGNORECASE)


def _lora_weight(request: GenerationRequest, value: float, values: list[Any], env: ScriptEnv) -> GenerationRequest:
    """Every `<lora:name:w>` tag of the prompt gets weight `value` (a Prompt S/R on the weights)."""
    weight = f"{value:g}"
    return replace(request, prompt=LORA_TAG.sub(lambda m: f"<lora:{m.group(1)}:{weight}{m.group(3)}>", request.prompt))


def _checkpoint(request: GenerationRequest, value: str, values: list[Any], env: ScriptEnv) -> GenerationRequest:
    return replace(request, model=value)


# ----- checking the values before anything runs ------------------------------------------------------------------

def _confirm_samplers(values: list[str], env: ScriptEnv) -> list[str]:
    names = []
    for value in values:
        try:
            names.append(env.samplers.resolve(value)[0].name)
        except SamplerError as exc:
            raise ValueError(str(exc)) from None
    return names


def _confirm_schedules(values: list[str], env: ScriptEnv) -> list[str]:
    try:
        return [env.samplers.normalise_schedule(value) for value in values]
    except SamplerError as exc:
        raise ValueError(str(exc)) from None


def _confirm_checkpoints(values: list[str], env: ScriptEnv) -> list[str]:
    try:
        return [env.models.resolve(value).name for value in values]
    except ModelError as exc:
        raise ValueError(str(exc)) from None


def _confirm_vaes(values: list[str], env: ScriptEnv) -> list[str]:
    try:
        return [env.models.check_vae(value) for value in values]
    except (ModelError, ValueError) as exc:
        raise ValueError(str(exc)) from None


def _sampler_names(env: ScriptEnv) -> list[str]:
    return env.samplers.names()


# The list in A1111's order: API clients send `x_type` as an index into the mode's part of it.
AXES: tuple[Axis, ...] = (
    Axis("Nothing", "str"),
    Axis("Seed", "int", fields=("seed",)),
    Axis("Var. seed", "int", fields=("subseed",)),
    Axis("Var. strength", "float", fields=("subseed_strength",)),
    Axis("Steps", "int", fields=("steps",)),
    Axis("Hires steps", "int", ("txt2img",), fields=("hr_second_pass_steps",)),
    Axis("CFG Scale", "float", fields=("cfg_scale",)),
    Axis("Image CFG Scale", "float", ("img2img",), fields=("image_cfg_scale",)),
    Axis("Prompt S/R", "str", apply=_prompt_search_replace, label_values_only=True),
    Axis("Prompt order", "order", apply=_prompt_order, label_values_only=True),
    Axis("Sampler", "str", ("txt2img",), fields=("sampler_name",), choices=_sampler_names, confirm=_confirm_samplers,
         label_values_only=True),
    Axis("Hires sampler", "str", ("txt2img",), fields=("hr_sampler_name",), choices=_sampler_names,
         confirm=_confirm_samplers),
    Axis("Sampler", "str", ("img2img",), fields=("sampler_name",), choices=_sampler_names, confirm=_confirm_samplers,
         label_values_only=True),
    Axis("Checkpoint name", "str", apply=_checkpoint, choices=lambda env: sorted(
        (info.name for info in env.models.checkpoints()), key=str.casefold), confirm=_confirm_checkpoints,
         label_values_only=True, cost=1.0),
    Axis("Negative Guidance minimum sigma", "float", fields=("s_min_uncond",)),
    Axis("Sigma Churn", "float", fields=("s_churn",)),
    Axis("Sigma min", "float", fields=("s_tmin",)),
    Axis("Sigma max", "float", fields=("s_tmax",)),
    Axis("Sigma noise", "float", fields=("s_noise",)),
    Axis("Schedule type", "str", fields=("scheduler",), choices=lambda env: env.samplers.schedule_names(),
         confirm=_confirm_schedules),
    Axis("Schedule min sigma", "float", fields=("sigma_min",)),
    Axis("Schedule max sigma", "float", fields=("sigma_max",)),
    Axis("Schedule rho", "float", fields=("rho",)),
    Axis("Eta", "float", fields=("eta",)),
    Axis("Clip skip", "int", fields=("clip_skip",)),
    Axis("Denoising", "float", fields=("denoising_strength",)),
    Axis("Initial noise multiplier", "float", fields=("initial_noise_multiplier",)),
    Axis("Extra noise", "float", fields=("img2img_extra_noise",)),
    Axis("Hires upscaler", "str", ("txt2img",), fields=("hr_upscaler",)),
    Axis("Cond. Image Mask Weight", "float", ("img2img",), fields=("inpainting_mask_weight",)),
    Axis("VAE", "str", fields=("vae",), choices=lambda env: env.models.vae_names(), confirm=_confirm_vaes, cost=0.7),
    Axis("Styles", "str", fields=("styles",)),
    Axis("UniPC Order", "int", fields=("uni_pc_order",)),
    Axis("Face restore", "str", fields=("restore_faces",)),
    Axis("Token merging ratio", "float", fields=("token_merging_ratio",)),
    Axis("Token merging ratio high-res", "float", fields=("token_merging_ratio_hr",)),
    Axis("Always discard next-to-last sigma", "str", fields=("always_discard_next_to_last_sigma",)),
    Axis("SGM noise multiplier", "str", fields=("sgm_noise_multiplier",)),
    Axis("Refiner checkpoint", "str", fields=("refiner_checkpoint",)),
    Axis("Refiner switch at", "float", fields=("refiner_switch_at",)),
    Axis("RNG source", "str", fields=("randn_source", "rng_source", "rng"), choices=lambda env: ["GPU", "CPU", "NV"]),
    # Ours, after A1111's list so that its indices stay valid.
    Axis("LoRA weight", "float", apply=_lora_weight),
)


def axes_for(mode: Mode) -> list[Axis]:
    """The mode's part of the list, in order: what an `x_type` index counts in."""
    return [axis for axis in AXES if mode in axis.modes]


# ----- the value syntax -----------------------------------------------------------------------------------------

_INT = r"[+-]?\d+"
_FLOAT = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
INT_RANGE = re.compile(rf"({_INT})\s*-\s*({_INT})(?:\s*\(\s*([+-]\d+)\s*\))?")
INT_COUNT = re.compile(rf"({_INT})\s*-\s*({_INT})\s*\[\s*(\d+)\s*\]")
FLOAT_RANGE = re.compile(rf"({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\(\s*([+-](?:\d+(?:\.\d*)?|\.\d+))\s*\))?")
FLOAT_COUNT = re.compile(rf"({_FLOAT})\s*-\s*({_FLOAT})\s*\[\s*(\d+)\s*\]")


def split_values(text: str, raw_lines: bool = False) -> list[str]:
    """Comma-separated values with CSV quoting (`"a, b", c`), each stripped; with `raw_lines`, a multi-line text is
    one value per line instead (A1111's "Use raw text lines")."""
    if raw_lines and "\n" in text.strip():
        return text.strip().split("\n")
    rows = csv.reader(io.StringIO(text))
    return [value.strip() for row in rows for value in row]


def expand_ints(values: list[str]) -> list[int]:
    """`1-5` (inclusive), `1-10 (+2)` (a step), `1-10 [5]` (a count, spread evenly and truncated), or a number."""
    numbers: list[int] = []
    for value in values:
        text = value.strip()
        if match := INT_RANGE.fullmatch(text):
            start, end = int(match[1]), int(match[2])
            step = int(match[3]) if match[3] else 1
            numbers += list(range(start, end + 1, step))
        elif match := INT_COUNT.fullmatch(text):
            start, end, count = int(match[1]), int(match[2]), int(match[3])
            numbers += [int(x) for x in np.linspace(start, end, count).tolist()]
        else:
            try:
                numbers.append(int(text))
            except ValueError:
                raise ValueError(f"{value!r} is not a whole number or a range like 1-5, 1-10 (+2) or 1-10 [5]"
                                 ) from None
    return numbers


def expand_floats(values: list[str]) -> list[float]:
    """`0.5-1.5 (+0.5)` (a step; the end included when reached), `0-1 [5]` (a count), or a number; `1-3` steps by 1."""
    numbers: list[float] = []
    for value in values:
        text = value.strip()
        if match := FLOAT_RANGE.fullmatch(text):
            start, end = float(match[1]), float(match[2])
            step = float(match[3]) if match[3] else 1.0
            numbers += np.arange(start, end + step, step).tolist()
        elif match := FLOAT_COUNT.fullmatch(text):
            start, end, count = float(match[1]), float(match[2]), int(match[3])
            numbers += np.linspace(start, end, count).tolist()
        else:
            try:
                numbers.append(float(text))
            except ValueError:
                raise ValueError(f"{value!r} is not a number or a range like 0.5-1.5 (+0.5) or 0-1 [5]") from None
    return numbers


def parse_axis_values(axis: Axis, text: str, dropdown: list[str] | None, csv_mode: bool, raw_lines: bool,
                      env: ScriptEnv) -> list[Any]:
    """An axis' values from its text (or, for an axis with choices, its dropdown list unless `csv_mode`), expanded,
    typed and checked. Raises ValueError with a message for the user."""
    if axis.label == "Nothing":
        return [0]
    if axis.choices is not None and not csv_mode and dropdown:
        raw = [str(value) for value in dropdown]
    else:
        raw = split_values(text or "", raw_lines)
    raw = [value for value in raw if value != ""] if axis.kind != "str" else raw
    if not raw or raw == [""]:
        raise ValueError(f"no values given for {axis.label!r}")
    if axis.kind == "int":
        values: list[Any] = expand_ints(raw)
    elif axis.kind == "float":
        values = expand_floats(raw)
    elif axis.kind == "order":
        values = list(itertools.permutations(raw))
    else:
        values = raw
    if axis.confirm is not None:
        values = axis.confirm(values, env)
    return values


# ----- the script -----------------------------------------------------------------------------------------------

AxisChoice = Whole | str


class XYZArgs(ScriptArgs):
    """A1111's positional order: x_type, x_values, x_values_dropdown, y_..., z_..., draw_legend, include_lone_images,
    include_sub_grids, no_fixed_seeds, margin_size, csv_mode, raw_mode."""

    x_type: AxisChoice = Field("Seed", title="X type", description="an axis label, or its index in A1111's list")
    x_values: str = Field("", title="X values", description="comma list; ranges 1-5, 1-10 (+2), 1-10 [5]")
    x_values_dropdown: list[str] | None = Field(None, title="X values (list)", json_schema_extra={"ui": False})
    y_type: AxisChoice = Field("Nothing", title="Y type")
    y_values: str = Field("", title="Y values")
    y_values_dropdown: list[str] | None = Field(None, title="Y values (list)", json_schema_extra={"ui": False})
    z_type: AxisChoice = Field("Nothing", title="Z type")
    z_values: str = Field("", title="Z values")
    z_values_dropdown: list[str] | None = Field(None, title="Z values (list)", json_schema_extra={"ui": False})
    draw_legend: bool = Field(True, title="Draw legend")
    include_lone_images: bool = Field(False, title="Include Sub Images")
    include_sub_grids: bool = Field(False, title="Include Sub Grids")
    no_fixed_seeds: bool = Field(False, title="Keep -1 for seeds")
    margin_size: Whole = Field(0, ge=0, le=500, title="Grid margins (px)")
    csv_mode: bool = Field(False, title="Use text inputs instead of dropdowns", json_schema_extra={"ui": False})
    raw_mode: bool = Field(False, title="Use raw text lines")


@dataclass
class AxisPlan:
    letter: str
    axis: Axis
    values: list[Any]
    text: str  # as the user typed it (the infotext's `X Values`)


@dataclass
class XYZPlan:
    axes: list[AxisPlan]  # x, y, z
    base: GenerationRequest  # seeds fixed unless "Keep -1 for seeds"

    def cell_request(self, ix: int, iy: int, iz: int, env: ScriptEnv) -> GenerationRequest:
        request = self.base
        for plan, index in zip(self.axes, (ix, iy, iz)):
            request = plan.axis.set(request, plan.values[index], plan.values, env)
        return request

    def shape(self) -> tuple[int, int, int]:
        return len(self.axes[0].values), len(self.axes[1].values), len(self.axes[2].values)


class XYZPlot(Script):
    title = TITLE
    Args = XYZArgs

    def choices(self, field_name: str, env: ScriptEnv) -> list[str] | None:
        if field_name in ("x_type", "y_type", "z_type"):
            return [axis.label for axis in axes_for(env.mode) if axis.supported(env)]
        return None

    @staticmethod
    def axis(choice: int | str, letter: str, env: ScriptEnv) -> Axis:
        field = f"script_args.{letter}_type"
        listed = axes_for(env.mode)
        if isinstance(choice, str) and choice.strip().isdigit():
            choice = int(choice.strip())
        if isinstance(choice, int):
            if not 0 <= choice < len(listed):
                raise RequestError(field, f"{choice} is not an axis index (0 to {len(listed) - 1} in {env.mode})")
            axis = listed[choice]
        else:
            axis = next((a for a in listed if a.label.lower() == choice.strip().lower()), None)
            if axis is None:
                raise RequestError(field, f"no axis {choice!r} in {env.mode}; choose one of: "
                                          f"{', '.join(a.label for a in listed if a.supported(env))}")
        if not axis.supported(env):
            raise RequestError(field, f"the axis {axis.label!r} is not supported by this app in {env.mode}; choose "
                                      f"one of: {', '.join(a.label for a in listed if a.supported(env))}")
        return axis

    def make_plan(self, request: GenerationRequest, args: XYZArgs, env: ScriptEnv, fix_seed: Callable[[], int]
                  ) -> XYZPlan:
        axes = []
        for letter in "xyz":
            axis = self.axis(getattr(args, f"{letter}_type"), letter, env)
            text = getattr(args, f"{letter}_values")
            try:
                values = parse_axis_values(axis, text, getattr(args, f"{letter}_values_dropdown"), args.csv_mode,
                                           args.raw_mode, env)
            except ValueError as exc:
                raise RequestError(f"script_args.{letter}_values", f"{axis.label}: {exc}") from None
            if axis.label == "Prompt S/R" and values[0] not in request.prompt and values[0] not in \
                    request.negative_prompt:
                raise RequestError(f"script_args.{letter}_values", f"Prompt S/R did not find {values[0]!r} in the "
                                                                   "prompt or the negative prompt")
            if axis.label == "LoRA weight" and not LORA_TAG.search(request.prompt):
                raise RequestError(f"script_args.{letter}_values", "LoRA weight needs a <lora:name:weight> tag in "
                                                                   "the prompt")
            if axis.label in ("Seed", "Var. seed") and not args.no_fixed_seeds:
                values = [fix_seed() if value == -1 else value for value in values]
            if dropdown := getattr(args, f"{letter}_values_dropdown"):
                text = text or ", ".join(map(str, dropdown))
            axes.append(AxisPlan(letter, axis, values, text))
        base = request
        if not args.no_fixed_seeds and request.seed == -1:
            base = replace(request, seed=fix_seed())
        plan = XYZPlan(axes, base)
        nx, ny, nz = plan.shape()
        if nx * ny * nz > MAX_CELLS:
            raise RequestError("script_args", f"{nx}x{ny}x{nz} = {nx * ny * nz} cells; the limit is {MAX_CELLS}")
        return plan

    def plan(self, request: GenerationRequest, args: XYZArgs, env: ScriptEnv) -> list[GenerationRequest]:
        plan = self.make_plan(request, args, env, lambda: 0)
        nx, ny, nz = plan.shape()
        requests = []
        for iz, iy, ix in itertools.product(range(nz), range(ny), range(nx)):
            try:
                requests.append(plan.cell_request(ix, iy, iz, env))
            except RequestError as exc:
                letter = next((p.letter for p in plan.axes if p.axis.field(env) == exc.field_name), "x")
                raise RequestError(f"script_args.{letter}_values", str(exc)) from None
        return requests

    def run(self, request: GenerationRequest, args: XYZArgs, runner: ScriptRunner) -> GenerationResult:
        env = runner.env
        plan = self.make_plan(request, args, env, runner.random_seed)
        nx, ny, nz = plan.shape()
        cells: dict[tuple[int, int, int], GenerationResult] = {}
        for ix, iy, iz in _processing_order(plan):
            if runner.interrupted:
                break
            cells[(ix, iy, iz)] = runner.generate(plan.cell_request(ix, iy, iz, env))
        return self._assemble(plan, cells, args, runner)

    def _assemble(self, plan: XYZPlan, cells: dict[tuple[int, int, int], GenerationResult], args: XYZArgs,
                  runner: ScriptRunner) -> GenerationResult:
        nx, ny, nz = plan.shape()
        done = [cells[key] for key in sorted(cells, key=lambda k: (k[2], k[1], k[0])) if cells[key].images]
        result = GenerationResult(interrupted=runner.interrupted or len(done) < len(cells))
        for cell in cells.values():
            result.warnings += [w for w in cell.warnings if w not in result.warnings]
        if not done:
            return result
        first = done[0]
        size = first.images[0].size

        def image(ix: int, iy: int, iz: int) -> Image.Image:
            cell = cells.get((ix, iy, iz))
            if cell is None or not cell.images:
                return Image.new("RGB", size)  # skipped or not reached: a black cell keeps the others in place
            picture = cell.images[0]
            # a checkpoint axis may mix native sizes; the grid needs one cell size
            return picture if picture.size == size else picture.resize(size, Image.Resampling.LANCZOS)

        x_plan, y_plan, z_plan = plan.axes
        legend = args.draw_legend
        sub_grids = [labelled_grid([image(ix, iy, iz) for iy in range(ny) for ix in range(nx)], nx, ny,
                                   [x_plan.axis.format(v) for v in x_plan.values] if legend else None,
                                   [y_plan.axis.format(v) for v in y_plan.values] if legend else None,
                                   args.margin_size) for iz in range(nz)]
        main = labelled_grid(sub_grids, nz, 1, [z_plan.axis.format(v) for v in z_plan.values] if legend else None)
        keys = {"Script": TITLE}
        for axis_plan in (x_plan, y_plan):
            keys.update(_axis_keys(axis_plan, args.no_fixed_seeds))
        sub_info = _with_keys(first.infotexts[0], keys)
        main_info = _with_keys(first.infotexts[0], {**keys, **_axis_keys(z_plan, args.no_fixed_seeds)})
        seed, prompt = first.seeds[0], first.request.prompt if first.request else ""
        grids = [(main, main_info)] + ([(grid, sub_info) for grid in sub_grids] if args.include_sub_grids else [])
        paths: list[str | None] = []
        for index, (grid, info) in enumerate(grids):
            saved = runner.save_grid(grid, info, seed, prompt, "xyz_grid") if index == 0 or nz > 1 else None
            paths.append(saved)
            if saved:
                result.grid_paths.append(saved)
            result.images.append(grid)
            result.infotexts.append(info)
            result.seeds.append(seed)
        if args.include_lone_images:
            for cell in done:
                result.images.append(cell.images[0])
                result.infotexts.append(cell.infotexts[0])
                result.seeds.append(cell.seeds[0])
                paths.append(cell.paths[0] if cell.paths else None)
        result.paths = [p for p in paths if p] if all(paths) else []
        result.request = first.request
        return result


def _processing_order(plan: XYZPlan) -> list[tuple[int, int, int]]:
    """Cells in an order where the costliest axis (a checkpoint) changes least often; z, y, x otherwise."""
    nx, ny, nz = plan.shape()
    ranked = sorted(zip((2, 1, 0), (plan.axes[2], plan.axes[1], plan.axes[0])), key=lambda item: -item[1].axis.cost)
    order = []
    counts = (nx, ny, nz)
    for combination in itertools.product(*(range(counts[position]) for position, _ in ranked)):
        index = [0, 0, 0]
        for (position, _), value in zip(ranked, combination):
            index[position] = value
        order.append((index[0], index[1], index[2]))
    return order


def _axis_keys(plan: AxisPlan, no_fixed_seeds: bool) -> dict[str, str]:
    if plan.axis.label == "Nothing":
        return {}
    letter = plan.letter.upper()
    keys = {f"{letter} Type": plan.axis.label, f"{letter} Values": plan.text}
    if plan.axis.label in ("Seed", "Var. seed") and not no_fixed_seeds:
        keys[f"Fixed {letter} Values"] = ", ".join(str(value) for value in plan.values)
    return keys


def _with_keys(infotext: str, keys: dict[str, str]) -> str:
    """The cell's infotext with the grid's keys added to its parameter line."""
    return f"{infotext}, {format_parameter_line(keys)}" if keys else infotext
