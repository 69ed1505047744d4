"""A depth-map upload in img2img for SD 2 depth models, registered through the public extension API.

Without an upload, depth models estimate their map with the depth_midas preprocessor (when its weights are
installed); with one, the request carries it as `depth_image`, exactly as the API and `--depth` do.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from webui.services.extensions import ExtensionAPI
from webui.services.img2img import Img2ImgRequest
from webui.services.requests import GenerationRequest
from webui.services.uploads import load_image


def register(api: ExtensionAPI) -> None:
    def build(mode: str) -> dict[str, Any]:
        import gradio as gr  # loaded only when the app builds its UI; the CLI never does

        image = gr.Image(label="Depth map for SD 2 depth models (brighter = nearer; empty: estimated with "
                               "depth_midas)", type="pil", sources=["upload", "clipboard"], elem_id=f"{mode}_depth_map")
        return {"image": image}

    def attach(request: GenerationRequest, controls: dict[str, Any]) -> GenerationRequest | None:
        image = controls.get("image")
        if image is None or not isinstance(request, Img2ImgRequest):
            return None
        return replace(request, depth_image=load_image(image, "depth_image"))

    api.add_section("Depth map", build, modes=("img2img",))
    api.on_before_generate(attach)
