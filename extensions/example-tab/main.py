"""Example extension: a "Prompt Tools" tab, a persisted setting and an HTTP route under /ext/example-tab/.

It uses only the `api` object it is given (no `webui.engine` import): `api.count_tokens` counts a prompt's tokens the
way the generation does, `api.setting` reads the setting, `api.api_name` names the tab's Gradio endpoint.
"""

from __future__ import annotations


def register(api) -> None:
    api.add_setting("greeting", "Hello from an extension", "Greeting shown by the example tab", kind="text")

    def token_report(prompt: str) -> str:
        used, capacity = api.count_tokens(prompt or "")
        return f"{api.setting('greeting')}: {used}/{capacity} tokens"

    def build(ui) -> None:
        import gradio as gr  # imported when the UI is built, so the CLI, which never builds it, starts faster

        prompt = gr.Textbox(label="Prompt to measure", elem_id="example_tab_prompt")
        report = gr.Markdown(elem_id="example_tab_report")
        gr.Button("Count tokens", elem_id="example_tab_count").click(
            token_report, inputs=[prompt], outputs=[report], api_name=api.api_name("count")  # /example_tab_count
        )

    api.add_tab("Prompt Tools", build)
    api.add_route("tokens", lambda prompt="": {"report": token_report(prompt)})
