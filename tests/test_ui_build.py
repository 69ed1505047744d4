"""The whole Gradio UI built in-process (no server): element ids are unique app-wide, extension endpoints carry their
extension's name and cannot collide, and the public `/txt2img` endpoint has the parameters the docs list."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import gradio as gr
import pytest

from tests.extension_folders import write_extension
from webui.context import PROJECT_ROOT, AppContext, AppPaths, build_context
from webui.services.settings import SettingSpec
from webui.ui.app import build_ui

DOCS = PROJECT_ROOT / "docs" / "extensions.md"


def _build(tmp_path: Path, *extension_dirs: Path) -> tuple[AppContext, gr.Blocks]:
    paths = AppPaths(tmp_path / "models", tmp_path / "outputs", tmp_path / "data", extension_dirs)
    context = build_context(paths, device="cpu")
    return context, build_ui(context)


def _elem_ids(demo: gr.Blocks) -> list[str]:
    return [block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)]


def _public_endpoints(demo: gr.Blocks) -> dict[str, object]:
    return {fn.api_name: fn for fn in demo.fns.values() if fn.fn is not None and fn.api_visibility != "private"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> tuple[AppContext, gr.Blocks]:
    """The app with every built-in extension and the examples of `extensions/`."""
    return _build(tmp_path_factory.mktemp("ui"), PROJECT_ROOT / "extensions")


def test_every_element_id_is_unique(app) -> None:
    context, demo = app
    assert {r.name: r.status for r in context.extensions.records if r.status != "active"} == {}
    ids = _elem_ids(demo)
    assert [elem_id for elem_id, count in Counter(ids).items() if count > 1] == []
    # the same section is built for img2img and Inpaint (mode "img2img" in both); the tab's name tells them apart
    for tab in ("txt2img", "img2img", "inpaint"):
        assert {f"{tab}_cfg_rescale_enabled", f"{tab}_controlnet_unit0_enabled", f"{tab}_lora_picker",
                f"{tab}_prompt", f"{tab}_interrupt", f"{tab}_skip"} <= set(ids), tab
    assert "inpaint_depth_map" in ids and "img2img_depth_map" in ids


def test_extension_endpoints_carry_the_extension_name(app, tmp_path: Path) -> None:
    context, demo = app
    paths = AppPaths(tmp_path / "models", tmp_path / "outputs", tmp_path / "data", ())
    bare = build_context(paths, device="cpu", load_extensions=False)
    bare.settings.register(SettingSpec("core.probe", 1, "a setting, so that the Settings tab has its endpoints"))
    core = set(_public_endpoints(build_ui(bare)))
    assert {"txt2img", "img2img", "inpaint", "interrupt", "skip", "refresh_checkpoints", "select_checkpoint",
            "select_vae", "settings_apply", "extensions_set_enabled", "extensions_install"} <= core
    endpoints = set(_public_endpoints(demo))
    assert core <= endpoints  # no extension pushed a core endpoint aside
    prefixes = {record.endpoint_prefix for record in context.extensions.records}
    unprefixed = [name for name in endpoints - core
                  if not any(name == prefix or name.startswith(f"{prefix}_") for prefix in prefixes)]
    assert unprefixed == []
    assert {"example_tab_count", "models_set_prediction", "pnginfo", "controlnet_preprocess", "lora_training_start",
            "lora_training_status", "lora_on_select", "lora_on_select_2"} <= endpoints


# Two extensions that both call their endpoint "count"; one that would take another's final name; one that would
# take the app's; one whose element id is the app's; and a section built in three tabs.
COUNTER = """
    import gradio as gr

    def register(api):
        def build(ui):
            box = gr.Textbox(elem_id=f"{api.name}_box")
            gr.Button().click(lambda t: t + "!", inputs=[box], outputs=[box], api_name=API_NAME)
            gr.Button().click(lambda t: t + "?", inputs=[box], outputs=[box], api_name="x_count")

        def section(mode):
            flag = gr.Checkbox(elem_id=f"{mode}_flag_" + api.name.replace("-", "_"))
            gr.Button().click(lambda f: not f, inputs=[flag], outputs=[flag], api_name="toggle")
            return {"flag": flag}

        api.add_tab(api.name, build)
        api.add_section(api.name, section)
"""

TAB_ONLY = """
    import gradio as gr

    def register(api):
        def build(ui):
            box = gr.Textbox(elem_id=ELEM_ID)
            gr.Button().click(lambda t: t, inputs=[box], outputs=[box], api_name=API_NAME)

        api.add_tab(api.name, build)
"""


def test_same_endpoint_names_in_two_extensions_and_clashes(tmp_path: Path) -> None:
    root = tmp_path / "ext"
    write_extension(root, "alpha", COUNTER.replace("API_NAME", '"count"'))  # raw name, renamed by the app
    write_extension(root, "beta", COUNTER.replace("API_NAME", 'api.api_name("count")'))  # the helper
    write_extension(root, "alpha-x", TAB_ONLY.replace("API_NAME", '"count"').replace("ELEM_ID", '"alpha_x_box"'))
    write_extension(root, "settings", TAB_ONLY.replace("API_NAME", '"apply"').replace("ELEM_ID", '"settings_box"'))
    write_extension(root, "dupe-id", TAB_ONLY.replace("API_NAME", '"go"').replace("ELEM_ID", '"txt2img_gallery"'))
    context, demo = _build(tmp_path, root)
    records = {record.name: record for record in context.extensions.records}
    endpoints = _public_endpoints(demo)

    assert records["alpha"].status == records["beta"].status == "active"
    assert {"alpha_count", "beta_count", "alpha_x_count", "beta_x_count"} <= set(endpoints)
    assert {"alpha_toggle", "alpha_toggle_1", "alpha_toggle_2", "beta_toggle_2"} <= set(endpoints)  # three tabs

    # "alpha" holds /alpha_x_count, so "alpha-x"'s "count" cannot have it: alpha-x fails, alpha keeps its endpoint
    assert records["alpha-x"].status == "failed"
    assert records["alpha-x"].error == ("building its UI: ExtensionError: its Gradio endpoint /alpha_x_count "
                                        "is already the extension 'alpha''s; rename the endpoint (api_name=...) "
                                        "or the extension")
    assert endpoints["alpha_x_count"].fn("a") == "a?"
    # "settings" + "apply" is the app's /settings_apply, created after the extension tabs: the app keeps it
    assert (records["settings"].status == "failed"
            and "/settings_apply is already the app's" in records["settings"].error)
    assert endpoints["settings_apply"].fn.__name__ == "on_save"
    assert not any(name.startswith("settings_apply_") for name in endpoints)  # the failed one is hidden
    # an element id of the app's fails the extension, which loses the id
    assert records["dupe-id"].status == "failed"
    assert "element id 'txt2img_gallery' is already used by the app" in records["dupe-id"].error
    assert "dupe_id_go" not in endpoints
    ids = _elem_ids(demo)
    assert [elem_id for elem_id, count in Counter(ids).items() if count > 1] == []
    assert {"txt2img_flag_alpha", "inpaint_flag_alpha", "img2img_flag_beta", "inpaint_flag_beta"} <= set(ids)
    # the Extensions tab shows the failures found once the whole UI was built
    status = next(block.value for block in demo.blocks.values()
                  if getattr(block, "elem_id", None) == "extensions_status")
    assert "/alpha_x_count is already" in status and "txt2img_gallery" in status


def _documented_parameters() -> list[str]:
    text = DOCS.read_text(encoding="utf-8")
    table = text.split("<!-- txt2img-parameters", 1)[1].split("<!-- /txt2img-parameters -->", 1)[0]
    return re.findall(r"^\| `(\w+)` \|", table, flags=re.MULTILINE)


def test_txt2img_endpoint_matches_the_docs(app) -> None:
    _, demo = app
    endpoint = demo.get_api_info()["named_endpoints"]["/txt2img"]
    names = [p["parameter_name"] for p in endpoint["parameters"]]
    documented = _documented_parameters()
    assert names[:len(documented)] == documented
    assert all(re.fullmatch(r"(controlnet|cfg_rescale|script)_\w+", name) for name in names[len(documented):])
    extension_defaults = {p["parameter_name"]: p["parameter_default"] for p in endpoint["parameters"][len(documented):]}
    assert extension_defaults["cfg_rescale_enabled"] is False
    assert [r["component"] for r in endpoint["returns"]] == ["Gallery", "Image", "Textbox", "Html"]
