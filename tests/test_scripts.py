"""Selectable scripts: the X/Y/Z plot (its grid's cells are the single images), prompts from file, the API's
`script_name` + `script_args` (positional and named) over real HTTP, and a script registered by an extension.

Expected values come from elsewhere than the code under test: cells are compared with images generated separately as
plain generations; the grid's cell boxes are computed here from the layout (bands above and left, margins between);
value expansions are A1111's documented examples (wiki, "Features: X/Y/Z plot").
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.extension_folders import write_extension
from webui.context import AppPaths, build_context
from webui.services.infotext import parse_infotext
from webui.services.outputs import read_infotext
from webui.services.prompts_from_file import PromptsArgs, PromptsFromFile, parse_line
from webui.services.requests import GenerationRequest, RequestError
from webui.services.scripts import ScriptService
from webui.services.xyz_plot import XYZPlot, expand_floats, expand_ints, split_values

CELL = 64
BASE = dict(prompt="a red circle on a blue background", negative_prompt="blurry", sampler_name="Euler",
            steps=2, cfg_scale=5.0, width=CELL, height=CELL, seed=1234)

SEED_SWEEP = """
    from webui.services.extensions import GenerationRequest, Script, ScriptArgs
    from webui.services.generation import GenerationResult
    from dataclasses import replace
    from pydantic import Field

    class SweepArgs(ScriptArgs):
        count: int = Field(2, ge=1, le=8, title="Images")
        step: int = Field(100, ge=1, title="Seed step")

    class SeedSweep(Script):
        title = "Seed sweep"
        Args = SweepArgs

        def plan(self, request, args, env):
            return [replace(request, seed=request.seed + i * args.step) for i in range(args.count)]

        def run(self, request, args, runner):
            result = GenerationResult()
            for planned in self.plan(request, args, runner.env):
                done = runner.generate(planned)
                result.images += done.images
                result.infotexts += done.infotexts
                result.seeds += done.seeds
            return result

    def register(api):
        api.add_script(SeedSweep())
"""


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory, tiny_sd1):
    """The app's services over tiny SD1 with every built-in extension and one outside extension adding a script."""
    root = tmp_path_factory.mktemp("scripts")
    checkpoints = root / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    (checkpoints / "tiny.safetensors").symlink_to(tiny_sd1.path)
    write_extension(root / "extensions", "seed-sweep", SEED_SWEEP)
    write_extension(root / "extensions", "copycat", SEED_SWEEP.replace('title = "Seed sweep"', 'title = "X/Y/Z Plot"'))
    context = build_context(AppPaths(root / "models", root / "outputs", root / "data", (root / "extensions",)),
                            device="cpu")
    yield context, ScriptService(context.generation, context.extensions.scripts)
    context.queue.shutdown()


def _run_script(context, service: ScriptService, name: str, args, request: GenerationRequest):
    prepared = service.prepare(name, args, request, "txt2img")
    job = service.submit("tester", prepared, request)
    assert context.queue.wait(job, 300) and job.status == "done", job.error
    return job


def _single(context, **fields) -> np.ndarray:
    """A plain generation (no script) with these parameters: the oracle for one cell."""
    job = context.generation.submit("tester", GenerationRequest(**{**BASE, **fields}), save=False)
    assert context.queue.wait(job, 300) and job.status == "done", job.error
    return np.asarray(job.result.images[0].convert("RGB"))


def test_axis_values_follow_a1111s_documented_syntax() -> None:
    assert split_values('1, 2 ,"a, b", c') == ["1", "2", "a, b", "c"]
    assert split_values("one, two\nthree", raw_lines=True) == ["one, two", "three"]
    assert expand_ints(["1-5"]) == [1, 2, 3, 4, 5]
    assert expand_ints(["1-5 (+2)"]) == [1, 3, 5]
    assert expand_ints(["10-5 (-3)"]) == [10, 7]
    assert expand_ints(["1-10 [5]"]) == [1, 3, 5, 7, 10]
    assert expand_ints(["7", "-1", "2-3"]) == [7, -1, 2, 3]
    assert expand_floats(["1-3 (+0.5)"]) == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert expand_floats(["0.0-1.0 [6]"]) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert expand_floats(["7.5", ".25"]) == [7.5, 0.25]
    with pytest.raises(ValueError, match="'abc' is not a whole number"):
        expand_ints(["abc"])


def test_axis_choice_by_a1111_index_or_label_and_clear_errors(scripted) -> None:
    context, service = scripted
    env = service.env("txt2img")
    # A1111's txt2img list (its img2img-only axes left out): 0 Nothing, 1 Seed, 4 Steps, 6 CFG Scale, 7 Prompt S/R,
    # 9 Sampler, 11 Checkpoint name; img2img's has Image CFG Scale at 6 and no hires axes: 5 CFG Scale, 9 Sampler
    assert [XYZPlot.axis(i, "x", env).label for i in (0, 1, 4, 6, 7, 9, 11)] == [
        "Nothing", "Seed", "Steps", "CFG Scale", "Prompt S/R", "Sampler", "Checkpoint name"]
    assert XYZPlot.axis("schedule TYPE", "y", env).label == "Schedule type"
    assert [XYZPlot.axis(i, "x", service.env("img2img")).label for i in (5, 9, 10, 22)] == [
        "CFG Scale", "Sampler", "Checkpoint name", "Denoising"]
    request = GenerationRequest(**BASE)
    lora = GenerationRequest(**{**BASE, "prompt": "a <lora:style:1> cat, <lora:other:0.8:te=1> dog"})
    planned = service.prepare("x/y/z plot", {"x_type": "LoRA weight", "x_values": "0, 0.5",
                                             "y_type": "Prompt order", "y_values": "cat, dog"},
                              lora, "txt2img").requests
    assert [r.prompt for r in planned] == [
        "a <lora:style:0> cat, <lora:other:0:te=1> dog", "a <lora:style:0.5> cat, <lora:other:0.5:te=1> dog",
        "a <lora:style:0> dog, <lora:other:0:te=1> cat", "a <lora:style:0.5> dog, <lora:other:0.5:te=1> cat"]
    bad = {
        ("x_type", "Bogus"): "script_args.x_type: no axis 'Bogus'",
        ("x_values", "2, lots"): "script_args.x_values: Steps: 'lots' is not a whole number",
        ("x_values", "2, 5000"): "script_args.x_values: steps: 5000 is out of range",
        ("margin_size", -3): "script_args.margin_size: -3 is out of range",
    }
    for (name, value), message in bad.items():
        args = {"x_type": "Steps", "x_values": "2"} | {name: value}
        with pytest.raises(RequestError) as caught:
            service.prepare("X/Y/Z plot", args, request, "txt2img")
        assert str(caught.value).startswith(message), str(caught.value)
    with pytest.raises(RequestError, match="script_args.x_values: Prompt S/R did not find 'green'"):
        service.prepare("x/y/z plot", {"x_type": "Prompt S/R", "x_values": "green, red"}, request, "txt2img")
    with pytest.raises(RequestError, match=r"script_args.y_values: .*unknown sampler 'Nope'"):
        service.prepare("x/y/z plot", [4, "2", None, "Sampler", "Euler, Nope", None, 0, ""], request, "txt2img")
    with pytest.raises(RequestError, match="takes at most 16 arguments"):
        service.prepare("x/y/z plot", [0] * 17, request, "txt2img")
    with pytest.raises(RequestError, match="script_name: no selectable txt2img script named 'nope'"):
        service.prepare("nope", [], request, "txt2img")


def test_xyz_grid_cells_are_the_single_images(scripted) -> None:
    context, service = scripted
    margin = 4
    args = {"x_type": "Steps", "x_values": "2-3", "y_type": "Prompt S/R", "y_values": "red, green",
            "z_type": "CFG Scale", "z_values": "3, 7", "margin_size": margin, "include_sub_grids": True,
            "include_lone_images": True}
    job = _run_script(context, service, "X/Y/Z plot", args, GenerationRequest(**BASE))
    result = job.result
    xs, ys, zs = [2, 3], ["red", "green"], [3.0, 7.0]
    assert (job.batches_done, job.batches_total) == (8, 8)  # one progress bar across the script's generations
    assert len(result.images) == 1 + len(zs) + len(xs) * len(ys) * len(zs)  # main grid, sub-grids, singles
    main = np.asarray(result.images[0].convert("RGB"))
    subs = [np.asarray(image.convert("RGB")) for image in result.images[1:3]]

    # the main grid: the Z sub-grids side by side under a band of Z labels
    sub_h, sub_w = subs[0].shape[:2]
    assert main.shape[1] == len(zs) * sub_w
    z_band = main.shape[0] - sub_h
    assert z_band > 0 and (main[:z_band] < 128).any()  # the Z labels were drawn
    # a sub-grid: the X-by-Y cells `margin` px apart, X labels in a band above, Y labels in a band on the left
    pad_left = sub_w - len(xs) * CELL - (len(xs) - 1) * margin
    pad_top = sub_h - len(ys) * CELL - (len(ys) - 1) * margin
    assert pad_left > 0 and pad_top > 0
    assert (subs[0][:pad_top, pad_left:] < 128).any() and (subs[0][pad_top:, :pad_left] < 128).any()
    singles = iter(result.images[3:])
    for iz, cfg in enumerate(zs):
        sub = main[z_band:, iz * sub_w:(iz + 1) * sub_w]
        assert np.array_equal(sub, subs[iz])
        for iy, word in enumerate(ys):
            for ix, steps in enumerate(xs):
                top, left = pad_top + iy * (CELL + margin), pad_left + ix * (CELL + margin)
                cell = sub[top:top + CELL, left:left + CELL]
                assert np.array_equal(cell, np.asarray(next(singles).convert("RGB"))), (steps, word, cfg)
                if iz == 0 or (ix, iy) == (1, 1):  # 5 of the 8 cells against plain generations (test time)
                    expected = _single(context, steps=steps, cfg_scale=cfg, prompt=BASE["prompt"].replace("red", word))
                    assert np.array_equal(cell, expected), (steps, word, cfg)
    # A1111's grid infotext keys, on the returned grid and in the saved grid file
    info = parse_infotext(result.infotexts[0])
    assert (info["Script"], info["X Type"], info["X Values"], info["Y Type"], info["Z Type"], info["Z Values"]) == (
        "X/Y/Z plot", "Steps", "2-3", "Prompt S/R", "CFG Scale", "3, 7")
    assert "Z Type" not in parse_infotext(result.infotexts[1])  # a sub-grid's infotext names X and Y only
    saved = [Path(path) for path in result.grid_paths]
    assert len(saved) == 1 + len(zs) and all(path.is_file() for path in saved)
    assert read_infotext(saved[0]) == result.infotexts[0]
    assert np.array_equal(np.asarray(Image.open(saved[0]).convert("RGB")), main)


def test_prompts_from_file_runs_a_job_per_line_with_its_options(scripted) -> None:
    context, service = scripted
    lines = "\n".join([
        "a red circle",
        "",
        '--prompt "a blue square" on grey --steps 3 --seed 77 --cfg_scale 4 --sampler_name "Euler a"',
        "--negative_prompt shiny --width 96",
    ])
    request = GenerationRequest(**{**BASE, "prompt": "", "seed": 10})
    result = _run_script(context, service, "Prompts from file or textbox",
                         {"checkbox_iterate": True, "prompt_txt": lines}, request).result
    infos = [parse_infotext(text) for text in result.infotexts]
    assert [i["Prompt"] for i in infos] == ["a red circle", "a blue square on grey", ""]
    assert [i["Seed"] for i in infos] == [10, 77, 12]  # "Iterate seed every line": +1 image per line
    assert [i["Steps"] for i in infos] == [2, 3, 2] and [i["CFG scale"] for i in infos] == [5, 4, 5]
    assert [i["Sampler"] for i in infos] == ["Euler", "Euler a", "Euler"]
    assert infos[2]["Negative prompt"] == "shiny blurry" and result.images[2].size == (96, CELL)  # joined at the start
    expected = _single(context, prompt="a blue square on grey", steps=3, seed=77, cfg_scale=4.0, sampler_name="Euler a")
    assert np.array_equal(np.asarray(result.images[1].convert("RGB")), expected)

    # "Use same random seed for all lines"; a line joined to the tab's prompt; A1111's older 3-argument order
    script, env = PromptsFromFile(), service.env("txt2img")
    args = service.parse_args(script, [False, True, "one\n--prompt two --steps 4"])
    assert args == PromptsArgs(checkbox_iterate_batch=True, prompt_txt="one\n--prompt two --steps 4")
    tab = GenerationRequest(**{**BASE, "prompt": "oil painting", "seed": -1})
    made = script.line_requests(tab, args.model_copy(update={"prompt_position": "end"}), env, lambda: 4242)
    assert [(r.prompt, r.seed, r.steps) for r, _ in made] == [("oil painting one", 4242, 2),
                                                             ("oil painting two", 4242, 4)]
    assert parse_line('--prompt a "b c" --n_iter 2') == {"prompt": "a b c", "n_iter": 2}
    for text, message in (("ok\n--steps many", "line 2: --steps: 'many' is not a whole number"),
                          ("--outpath_samples /etc", "line 1: --outpath_samples is not accepted"),
                          ("--colour red", "line 1: unknown option --colour"),
                          ("--steps 0", "line 1: steps: 0 is out of range")):
        with pytest.raises(RequestError) as caught:
            service.prepare("prompts from file or textbox", {"prompt_txt": text}, request, "txt2img")
        assert str(caught.value).startswith(f"script_args.prompt_txt: {message}"), str(caught.value)


def test_an_extensions_script_runs_like_the_built_ins(scripted) -> None:
    context, service = scripted
    assert [s.title for s in service.scripts("txt2img")] == ["Prompts from file or textbox", "X/Y/Z plot", "Seed sweep"]
    copycat = next(record for record in context.extensions.records if record.name == "copycat")
    assert copycat.status == "failed" and "a script titled 'X/Y/Z Plot' is already registered" in copycat.error
    result = _run_script(context, service, "seed sweep", [2, 5], GenerationRequest(**BASE)).result
    assert result.seeds == [1234, 1239]
    assert np.array_equal(np.asarray(result.images[1].convert("RGB")), _single(context, seed=1239))
    with pytest.raises(RequestError, match=r"script_args.count: 9 is out of range \(1 to 8\)"):
        service.prepare("Seed sweep", {"count": 9}, GenerationRequest(**BASE), "txt2img")
    with pytest.raises(RequestError, match="'Seed sweep' has no argument 'colour'"):
        service.prepare("Seed sweep", {"colour": 1}, GenerationRequest(**BASE), "txt2img")


def _decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_api_takes_positional_and_named_script_args(browser_app) -> None:
    small = {"prompt": "a red circle", "width": CELL, "height": CELL, "steps": 2, "cfg_scale": 5, "seed": 99,
             "sampler_name": "Euler"}
    with httpx.Client(base_url=browser_app.url + "sdapi/v1/", timeout=300) as http:
        listing = http.get("scripts").json()
        assert {"x/y/z plot", "prompts from file or textbox"} <= set(listing["txt2img"]) & set(listing["img2img"])
        info = {(entry["name"], entry["is_img2img"]): entry for entry in http.get("script-info").json()}
        xyz_args = [arg["name"] for arg in info[("x/y/z plot", False)]["args"]]
        assert xyz_args[:4] == ["x_type", "x_values", "x_values_dropdown", "y_type"] and len(xyz_args) == 16
        assert "Steps" in info[("x/y/z plot", False)]["args"][0]["choices"]

        # A1111's positional list: X = index 4 (Steps) "2, 3", include sub images
        body = {**small, "script_name": "X/Y/Z plot",
                "script_args": [4, "2, 3", [], 0, "", [], 0, "", [], True, True, False, False, 0, False, False]}
        response = http.post("txt2img", json=body)
        assert response.status_code == 200, response.text
        payload = response.json()
        grid, *singles = [_decode(image) for image in payload["images"]]
        assert len(singles) == 2 and grid.width == 2 * CELL and grid.height > CELL
        assert parse_infotext(json.loads(payload["info"])["infotexts"][0])["X Type"] == "Steps"
        assert np.array_equal(np.asarray(grid.convert("RGB"))[-CELL:, CELL:], np.asarray(singles[1].convert("RGB")))

        # named arguments
        body = {**small, "script_name": "prompts from file or textbox",
                "script_args": {"prompt_txt": "a red circle\n--prompt a blue square --seed 5"}}
        payload = http.post("txt2img", json=body).json()
        infotexts = json.loads(payload["info"])["infotexts"]
        assert [parse_infotext(text)["Seed"] for text in infotexts] == [99, 5]

        for body, detail in (
            ({**small, "script_name": "x/y/z plot", "script_args": {"x_type": "Steps", "x_values": "1-x"}},
             "script_args.x_values: Steps: '1-x' is not a whole number"),
            ({**small, "script_name": "x/y/z plot", "script_args": {"draw_legend": "maybe"}},
             "script_args.draw_legend: 'maybe' is not true or false"),
            ({**small, "script_name": "no such"}, "script_name: no selectable txt2img script named 'no such'"),
        ):
            response = http.post("txt2img", json=body)
            assert response.status_code == 422 and response.json()["detail"].startswith(detail), response.text


def test_txt2img_tab_runs_the_chosen_script(browser_app) -> None:
    """The tab's Generate (its Gradio endpoint, as the page calls it) with the Script dropdown on X/Y/Z plot."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(browser_app.url, verbose=False)
    title = client.predict(api_name="/refresh_checkpoints")["value"]
    common = dict(checkpoint=title, prompt="a red circle", negative_prompt="", sampler_name="Euler",
                  scheduler="Automatic", steps=2, cfg_scale=5, width=CELL, height=CELL, seed=9, n_iter=1, batch_size=1,
                  script_name="X/Y/Z plot", script_x_y_z_plot_x_type="Steps")
    gallery, _, infotext, _ = client.predict(**common, script_x_y_z_plot_x_values="2, 3", api_name="/txt2img")
    assert len(gallery) == 1 and Image.open(gallery[0]["image"]).size[0] == 2 * CELL  # the grid alone
    parsed = parse_infotext(infotext)
    assert (parsed["Script"], parsed["X Type"], parsed["X Values"]) == ("X/Y/Z plot", "Steps", "2, 3")
    with pytest.raises(AppError, match="script_args.x_values: Steps: 'two' is not a whole number"):
        client.predict(**common, script_x_y_z_plot_x_values="two", api_name="/txt2img")


def test_interrupt_stops_the_whole_script_and_keeps_what_finished(scripted) -> None:
    context, service = scripted
    request = GenerationRequest(**BASE)
    prepared = service.prepare("x/y/z plot", {"x_type": "Seed", "x_values": "1-4", "include_lone_images": True},
                               request, "txt2img")
    job = service.submit("tester", prepared, request)
    seen = -1
    while job.batches_done < 1 and not job.finished:  # the first cell is done: stop the script
        seen = job.wait_change(seen, 60)
    job.interrupt()
    assert context.queue.wait(job, 300) and job.status == "interrupted"
    result = job.result
    assert result.interrupted and 1 <= len(result.images) - 1 < 4  # the grid, then the cells that finished
    grid = np.asarray(result.images[0].convert("RGB"))
    first = np.asarray(result.images[1].convert("RGB"))
    assert np.array_equal(grid[-CELL:, :CELL], first) and not grid[-CELL:, -CELL:].any()  # unfinished cells: black
