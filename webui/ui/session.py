"""Who is asking: the logged-in user, or the browser session when auth is off."""

from __future__ import annotations

import gradio as gr


def owner_of(request: gr.Request | None) -> str:
    if request is None:
        return "local"
    return getattr(request, "username", None) or getattr(request, "session_hash", None) or "local"
