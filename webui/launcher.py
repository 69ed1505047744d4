"""`python launch.py`: parse flags, refuse unsafe exposure, build the services and serve the Gradio app."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Sequence

from webui import offline
from webui.api.routes import mount_extension_routes

UPLOAD_LIMIT = "50mb"


class LaunchError(SystemExit):
    """A start-up problem the user must fix; the message says how."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch.py", description="Latent Studio web UI")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--listen", action="store_true", help="serve on all interfaces (needs --auth or --auth-file)")
    parser.add_argument("--share", action="store_true", help="public Gradio link (needs --auth or --auth-file)")
    parser.add_argument("--auth", help="user:password[,user2:password2]")
    parser.add_argument("--auth-file", type=Path, help="file with one user:password per line")
    parser.add_argument("--models-dir", type=Path)
    parser.add_argument("--outputs-dir", type=Path)
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when present)")
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--ram-cache", type=int, default=1, help="recently used checkpoints kept in RAM (default 1)")
    parser.add_argument("--no-preload", action="store_true", help="do not load the default model at start-up")
    parser.add_argument("--extensions-dir", type=Path, action="append", default=[],
                        help="another folder of extensions (repeatable)")
    parser.add_argument("--enable-insecure-extension-access", action="store_true",
                        help="allow installing extensions even with --listen/--share")
    parser.add_argument("--data-dir", type=Path, help="settings and caches (default: ./cache)")
    return parser


def parse_credentials(auth: str | None, auth_file: Path | None) -> list[tuple[str, str]]:
    """Credentials from --auth and --auth-file; a malformed entry is an error, never silently skipped."""
    entries: list[str] = []
    if auth:
        entries += [e for e in auth.split(",") if e.strip()]
    if auth_file:
        if not auth_file.is_file():
            raise LaunchError(f"error: --auth-file {auth_file} does not exist")
        entries += [line.strip() for line in auth_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    credentials = []
    for entry in entries:
        user, sep, password = entry.strip().partition(":")
        if not sep or not user or not password:
            raise LaunchError("error: credentials must look like user:password")
        credentials.append((user, password))
    return credentials


def check_exposure(args: argparse.Namespace, credentials: list[tuple[str, str]]) -> None:
    if (args.listen or args.share) and not credentials:
        flag = "--share" if args.share else "--listen"
        raise LaunchError(
            f"error: {flag} makes the app reachable by others, so it needs a login. "
            f"Start it with {flag} --auth user:password (or --auth-file FILE with one user:password per line)."
        )


def main(argv: Sequence[str] | None = None) -> None:
    offline.enforce()
    args = build_parser().parse_args(argv)
    credentials = parse_credentials(args.auth, args.auth_file)
    check_exposure(args, credentials)

    from webui.context import AppPaths, build_context
    from webui.ui.app import build_ui

    paths = AppPaths.default(models_dir=args.models_dir, outputs_dir=args.outputs_dir,
                             extension_dirs=tuple(args.extensions_dir), data_dir=args.data_dir)
    try:
        context = build_context(paths, device=args.device, precision=args.precision, ram_cache_size=args.ram_cache)
    except ValueError as exc:
        raise LaunchError(f"error: {exc}") from exc
    if not args.no_preload and context.models.default_checkpoint() is not None:
        threading.Thread(target=_preload, args=(context,), daemon=True).start()
    install_allowed = not (args.listen or args.share) or args.enable_insecure_extension_access
    demo = build_ui(context, install_allowed=install_allowed)
    demo.queue(default_concurrency_limit=1, max_size=64)
    paths.outputs_dir.mkdir(parents=True, exist_ok=True)
    demo.launch(
        server_name="0.0.0.0" if args.listen else "127.0.0.1",
        server_port=args.port,
        share=args.share,
        auth=credentials or None,
        allowed_paths=[str(paths.outputs_dir)],
        blocked_paths=[str(paths.models_dir), str(paths.data_dir)],
        max_file_size=UPLOAD_LIMIT,
        show_error=True,
        footer_links=[],
        prevent_thread_lock=True,
    )
    mount_extension_routes(demo.server_app, context, credentials)
    demo.block_thread()


def _preload(context) -> None:
    """Load the default model in the background so the first Generate is quick; errors surface on first use."""
    try:
        with context.jobs.device_lock:
            context.models.get()
    except Exception as exc:  # reported, and raised again when the user generates
        print(f"warning: could not preload the default model: {exc}", file=sys.stderr)
