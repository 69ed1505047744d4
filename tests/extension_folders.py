"""Write real extension folders (good and broken) for tests."""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_extension(root: Path, name: str, body: str, requires_app: str = ">=0.1", entry: str = "main.py") -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "extension.toml").write_text(
        f'name = "{name}"\nversion = "1.0"\ndescription = "test extension {name}"\nrequires_app = "{requires_app}"\n'
        f'entry = "{entry}"\nrequirements = ["numpy>=1"]\n',
        encoding="utf-8",
    )
    (folder / entry).write_text(textwrap.dedent(body), encoding="utf-8")
    return folder


NEGATE_HOOK = """
    import gradio as gr

    def register(api):
        api.add_setting("strength", 1.0, "How strongly to flip", kind="number")

        def build(mode):
            return {"enabled": gr.Checkbox(label="Flip the prediction", value=False, elem_id=f"{mode}_flip")}

        def flip(state, controls):
            if controls.get("enabled", True):
                state.denoised = -state.denoised * api.setting("strength")

        def tag(params, request, controls):
            if controls.get("enabled", True):
                params["Flipped"] = "yes"

        api.add_section("Flip", build)
        api.on_step(flip)
        api.on_save(tag)
"""

HELLO_TAB = """
    import gradio as gr

    def register(api):
        def build(ui):
            gr.Markdown("hello from a tab", elem_id="hello_markdown")

        api.add_tab("Hello Tab", build)
        api.add_route("ping", lambda: {"pong": api.name})
"""

RAISES_ON_IMPORT = """
    raise ImportError("this extension needs a package that is not installed")
"""

RAISES_IN_REGISTER = """
    def register(api):
        api.add_setting("left_behind", 1, "must be removed again", kind="number")
        raise RuntimeError("registration exploded")
"""

RAISES_IN_HOOK = """
    def register(api):
        def boom(state, controls):
            raise ValueError("per-step hook exploded")

        api.on_step(boom)
"""

RAISES_IN_UI = """
    def register(api):
        def build(ui):
            raise RuntimeError("tab build exploded")

        api.add_tab("Broken Tab", build)
"""
