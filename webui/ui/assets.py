"""The UI's own CSS and JavaScript: every `assets/*.css` and `assets/*.js` file, handed to Gradio at launch.

One file per concern (layout, shortcuts, brush, hints), so features stay separate; Gradio takes one CSS string and a
`<head>` string, so they are joined here in name order.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"


def ui_css() -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in sorted(ASSETS.glob("*.css")))


def ui_head() -> str:
    """Each script runs once the page has loaded; scripts find Gradio's elements by their `elem_id`s."""
    scripts = [f"<script>\n{path.read_text(encoding='utf-8')}\n</script>" for path in sorted(ASSETS.glob("*.js"))]
    return "\n".join(scripts)
