"""PNG Info, registered through the public extension API like any outside extension."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, UploadFile

from webui.services.extensions import ExtensionAPI
from webui.services.infotext import parse_infotext
from webui.services.outputs import read_infotext
from webui.services.uploads import UploadLimits, check_header


def register(api: ExtensionAPI) -> None:
    def tab(ui: Any) -> None:
        from webui.ui.pnginfo import build_pnginfo_tab  # Gradio only when the UI is built, never in the CLI

        build_pnginfo_tab(ui)

    api.add_tab("PNG Info", tab)

    async def read(file: UploadFile) -> dict:
        """POST an image as multipart `file`; returns its raw infotext and the parsed parameters."""
        data = await file.read()
        try:
            check_header(data, "file", UploadLimits.from_env())
            text = read_infotext(data)
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        return {"info": text or "", "parameters": parse_infotext(text) if text else {}}

    api.add_route("read", read, methods=["POST"])
