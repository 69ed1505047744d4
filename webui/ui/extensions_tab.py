"""The Extensions tab: status, errors with tracebacks, enable/disable (next start), and guarded installs."""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from webui.context import AppContext
from webui.services.extensions import ExtensionError
from webui.ui.session import require_admin

RESTART_NOTE = "Changes apply at the next start of the app."


def status_html(context: AppContext) -> str:
    rows = []
    for record in context.extensions.records:
        manifest = record.manifest
        state = {"active": "active", "disabled": "disabled", "failed": "failed"}[record.status]
        details = ""
        if record.error:
            details = (f"<details><summary>{html.escape(record.error)}</summary>"
                       f"<pre>{html.escape(record.traceback or '')}</pre></details>")
        requirements = ", ".join(manifest.requirements) if manifest and manifest.requirements else ""
        rows.append(
            "<tr>"
            f"<td>{html.escape(record.name)}{' (built in)' if record.builtin else ''}</td>"
            f"<td>{html.escape(manifest.version if manifest else '?')}</td>"
            f"<td>{state}{details}</td>"
            f"<td>{html.escape(manifest.description if manifest else '')}</td>"
            f"<td>{html.escape(requirements) or '–'}</td>"
            "</tr>"
        )
    return ("<table id='extensions_table'><tr><th>Extension</th><th>Version</th><th>Status</th><th>Description</th>"
            "<th>Python requirements (install them yourself)</th></tr>" + "".join(rows) + "</table>")


def build_extensions_tab(context: AppContext, install_allowed: bool) -> gr.HTML:
    """The tab's widgets; returns the status table, which the app fills again once the whole UI is built."""
    table = gr.HTML(status_html(context), elem_id="extensions_status")
    names = [r.name for r in context.extensions.records if r.manifest and not r.builtin]
    enabled_now = [r.name for r in context.extensions.records if r.manifest and not r.builtin and r.enabled]
    with gr.Row():
        choice = gr.CheckboxGroup(names, value=enabled_now, label="Enabled extensions", elem_id="extensions_enabled")
        save = gr.Button("Save", elem_id="extensions_save")
    gr.Markdown(RESTART_NOTE)
    message = gr.Markdown(elem_id="extensions_message")

    def on_save(selected: list[str], request: gr.Request) -> str:
        require_admin(context.users, request, "enable or disable extensions")
        for name in names:
            context.extensions.set_enabled(name, name in (selected or []))
        return f"Saved. {RESTART_NOTE}"

    save.click(on_save, inputs=[choice], outputs=[message], api_name="extensions_set_enabled")

    with gr.Accordion("Install an extension", open=False):
        if not install_allowed:
            gr.Markdown("Installing is disabled because the app is reachable from other machines "
                        "(--listen/--share). Start it locally, or add --enable-insecure-extension-access.")
            return table
        gr.Markdown("The files are copied into the extensions folder **disabled**; nothing runs until you enable "
                    "the extension above and restart.")
        url = gr.Textbox(label="Git URL", elem_id="extensions_git_url")
        archive = gr.File(label="or a .zip archive", file_types=[".zip"], type="filepath", elem_id="extensions_zip")
        confirm = gr.Checkbox(label="I trust this code: copy it into my extensions folder", value=False)
        install = gr.Button("Install", elem_id="extensions_install")

        def on_install(git_url: str, zip_path: str | None, trusted: bool, request: gr.Request) -> tuple[str, str]:
            require_admin(context.users, request, "install extensions")
            if not trusted:
                return "Tick the confirmation first.", status_html(context)
            target = context.paths.extension_dirs[0]
            try:
                if zip_path:
                    name = context.extensions.install_archive(Path(zip_path), target)
                elif git_url:
                    name = context.extensions.install_git(git_url.strip(), target)
                else:
                    return "Give a git URL or a .zip file.", status_html(context)
            except (ExtensionError, OSError, ValueError) as exc:
                return f"**Error:** {exc}", status_html(context)
            return f"Installed **{name}** (disabled). Enable it above, then restart.", status_html(context)

        install.click(on_install, inputs=[url, archive, confirm], outputs=[message, table],
                      api_name="extensions_install")
    return table
