"""`python launch.py`: parse flags, refuse unsafe exposure, build the services and serve the Gradio app."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from webui import offline
from webui.api.request_guard import DEFAULT_MAX_BODY_MB
from webui.api.limits import ApiLimits
from webui.services.queue import DEFAULT_QUEUE_SIZE
from webui.services.supply_chain import (UnsafeTorchError, find_known_malicious, installed_distributions,
                                        require_safe_torch)
from webui.services.users import LoginLimits, UserStore

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
    parser.add_argument("--admin", action="append", default=[], metavar="USER",
                        help="this login may refresh models, change settings, install extensions and stop the "
                             "server (repeatable; a single login is the admin anyway)")
    parser.add_argument("--login-limit", type=int, default=LoginLimits.attempts, metavar="N",
                        help="failed logins allowed per user and per address within 60 s before logins for it "
                             f"pause for 60 s (default {LoginLimits.attempts})")
    parser.add_argument("--models-dir", type=Path)
    parser.add_argument("--outputs-dir", type=Path)
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when present)")
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--ram-cache", type=int, default=1, help="recently used checkpoints kept in RAM (default 1)")
    parser.add_argument("--vram-budget", type=float, default=0.0, metavar="GB",
                        help="keep recently used checkpoints on the device up to this many GB (default 0: only the "
                             "active one)")
    parser.add_argument("--ram-budget", type=float, default=0.0, metavar="GB",
                        help="bytes of checkpoints kept in RAM, in GB (default 0: half of this machine's RAM)")
    parser.add_argument("--workers", type=int, default=0, metavar="N",
                        help="run generation on N Ray worker processes: one per GPU, or CPU processes on a machine "
                             "without one (needs: pip install -r requirements-ray.txt; docs/scaling.md)")
    parser.add_argument("--ray-address", metavar="ADDRESS",
                        help="join a running Ray cluster (e.g. 10.0.0.5:6379) and start one worker per GPU in it; "
                             "nodes that join later get workers too (docs/scaling.md)")
    parser.add_argument("--no-preload", action="store_true", help="do not load the default model at start-up")
    offload = parser.add_mutually_exclusive_group()
    offload.add_argument("--medvram", action="store_const", const="medvram", dest="offload", default="auto",
                         help="keep models in RAM and move the text encoders, U-Net and VAE to the GPU one at a time "
                              "(less VRAM, a little slower; setting: core.offload)")
    offload.add_argument("--lowvram", action="store_const", const="lowvram", dest="offload",
                         help="move one layer at a time to the GPU (least VRAM, much slower). Without either flag a "
                              "model that does not fit the GPU or --vram-budget is offloaded automatically")
    parser.add_argument("--compile", action="store_true",
                        help="compile the U-Net with torch.compile, in the background (setting: core.compile_unet)")
    parser.add_argument("--extensions-dir", type=Path, action="append", default=[],
                        help="another folder of extensions (repeatable)")
    parser.add_argument("--enable-insecure-extension-access", action="store_true",
                        help="allow installing extensions even with --listen/--share")
    parser.add_argument("--data-dir", type=Path, help="settings and caches (default: ./cache)")
    parser.add_argument("--queue-size", type=int, default=DEFAULT_QUEUE_SIZE, metavar="N",
                        help=f"jobs that may wait for the device; more are refused as 'queue full' "
                             f"(default {DEFAULT_QUEUE_SIZE})")
    parser.add_argument("--api", action="store_true",
                        help="A1111's flag, accepted for its scripts: /sdapi/v1 is always on, behind the same login")
    parser.add_argument("--nowebui", action="store_true", help="serve only the HTTP API (/sdapi/v1, /docs), no UI")
    parser.add_argument("--api-max-steps", type=int, default=ApiLimits.max_steps, metavar="N",
                        help=f"most sampling steps one API call may ask for (default {ApiLimits.max_steps})")
    parser.add_argument("--api-max-side", type=int, default=ApiLimits.max_side, metavar="PX",
                        help=f"largest width or height one API call may ask for (default {ApiLimits.max_side})")
    parser.add_argument("--api-max-images", type=int, default=ApiLimits.max_images, metavar="N",
                        help=f"most images (batch size x count) one API call may ask for "
                             f"(default {ApiLimits.max_images})")
    parser.add_argument("--max-body-mb", type=int, default=DEFAULT_MAX_BODY_MB, metavar="MB",
                        help="largest request body (API calls with base64 images, UI calls) in MB; larger ones get "
                             f"413 (default {DEFAULT_MAX_BODY_MB}; uploads have their own {UPLOAD_LIMIT} per file)")
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


def build_users(args: argparse.Namespace) -> UserStore:
    """The UserStore from --auth, --auth-file, --admin and --login-limit; passwords are hashed here and the plain
    --auth text is dropped from `args`."""
    credentials = parse_credentials(args.auth, args.auth_file)
    args.auth = None
    if args.admin and not credentials:
        raise LaunchError("error: --admin names a login, so it needs --auth or --auth-file")
    try:
        return UserStore(credentials, args.admin, limits=LoginLimits(attempts=args.login_limit))
    except ValueError as exc:
        raise LaunchError(f"error: {exc}") from exc


def check_user_folders(users: UserStore, reserved: Sequence[str]) -> None:
    """With several users each gets outputs/<user>/; a name must not take a folder the app itself keeps there."""
    if not users.is_multi_user:
        return
    taken = {name.casefold() for name in reserved}
    for name in users.names:
        if name.casefold() in taken:
            raise LaunchError(f"error: user name {name!r} is the name of a folder the app keeps in outputs/; "
                              "choose another name")


def check_exposure(args: argparse.Namespace, users: UserStore) -> None:
    if (args.listen or args.share) and not users.auth_enabled:
        flag = "--share" if args.share else "--listen"
        raise LaunchError(
            f"error: {flag} makes the app reachable by others, so it needs a login. "
            f"Start it with {flag} --auth user:password (or --auth-file FILE with one user:password per line)."
        )


def check_torch(version: str | None = None) -> None:
    """Refuse to start on torch < 2.6, whose safe loading of .ckpt files can be bypassed (CVE-2025-32434)."""
    try:
        require_safe_torch(version)
    except UnsafeTorchError as exc:
        raise LaunchError(f"error: {exc}") from exc


def check_supply_chain(distributions: Sequence[tuple[str, str]], extension_dirs: Sequence[Path]) -> None:
    """Refuse to start while a package release or extension known to be malicious is installed, saying how to clean
    up: its code may already have run, so starting the app would only run it again."""
    findings = find_known_malicious(distributions, extension_dirs)
    if findings:
        lines = "\n".join(f"  - {finding.describe()}" for finding in findings)
        raise LaunchError(f"error: known-malicious software is installed; the app will not start until it is "
                          f"removed:\n{lines}\nAfter removing it, check for unknown processes and change the "
                          "passwords and tokens this machine holds.")


def main(argv: Sequence[str] | None = None) -> None:
    offline.enforce()
    args = build_parser().parse_args(argv)
    check_torch()
    if args.queue_size < 1:
        raise LaunchError(f"error: --queue-size must be at least 1, not {args.queue_size}")
    if args.workers < 0:
        raise LaunchError(f"error: --workers must be 0 or more, not {args.workers}")
    if args.max_body_mb < 1:
        raise LaunchError(f"error: --max-body-mb must be at least 1, not {args.max_body_mb}")
    users = build_users(args)
    check_exposure(args, users)

    from starlette.middleware import Middleware

    from webui.api.auth import GradioLogin, login_message
    from webui.api.file_guard import OutputsFileGuard
    from webui.api.routes import mount_routes, mount_sdapi  # the API and the engine: imported once the checks pass
    from webui.api.request_guard import RequestGuard
    from webui.context import AppPaths, build_context
    from webui.ui.app import build_ui
    from webui.ui.assets import ui_css, ui_head

    paths = AppPaths.default(models_dir=args.models_dir, outputs_dir=args.outputs_dir,
                             extension_dirs=tuple(args.extensions_dir), data_dir=args.data_dir)
    check_supply_chain(installed_distributions(), paths.extension_dirs)
    check_user_folders(users, [paths.lora_training_dir.name])
    if users.is_multi_user and not users.admins:
        print("note: no --admin named, so nobody may refresh models, change settings, install extensions or stop "
              "the server from the app", file=sys.stderr)
    try:
        context = build_context(paths, device=args.device, precision=args.precision, ram_cache_size=args.ram_cache,
                                users=users, queue_size=args.queue_size, vram_budget_gb=args.vram_budget,
                                ram_budget_gb=args.ram_budget, compile_unet=args.compile,
                                offload=args.offload)
    except ValueError as exc:
        raise LaunchError(f"error: {exc}") from exc
    if args.workers or args.ray_address:
        from webui.services.ray_workers import RayUnavailable

        try:
            workers = context.start_workers(args.workers, args.ray_address, args.precision)
        except RayUnavailable as exc:
            raise LaunchError(f"error: {exc}") from exc
        print(f"generation runs on Ray workers: {workers.pool.description} ({len(workers.pool.report())} now)",
              file=sys.stderr)
    removed = context.outputs.remove_stale_temporaries()
    if removed:
        print(f"removed {len(removed)} unfinished image file(s) left by an earlier run that was killed",
              file=sys.stderr)
    limits = ApiLimits(args.api_max_steps, args.api_max_side, args.api_max_images)
    flags = vars(args).copy()
    flags.update(medvram=args.offload == "medvram", lowvram=args.offload == "lowvram")  # A1111's cmd-flags keys
    if not args.no_preload and context.workers is None and context.models.default_checkpoint() is not None:
        threading.Thread(target=_preload, args=(context,), daemon=True).start()
    if args.nowebui:
        _serve_api_only(args, context, users, flags, limits)
        return
    install_allowed = not (args.listen or args.share) or args.enable_insecure_extension_access
    demo = build_ui(context, install_allowed=install_allowed, local=not (args.listen or args.share))
    demo.queue(default_concurrency_limit=1, max_size=args.queue_size)
    paths.outputs_dir.mkdir(parents=True, exist_ok=True)
    login = GradioLogin(users)
    demo.launch(
        server_name="0.0.0.0" if args.listen else "127.0.0.1",
        server_port=args.port,
        share=args.share,
        auth=login.check if users.auth_enabled else None,
        auth_message=login_message(users.limits) if users.auth_enabled else None,
        app_kwargs={"middleware": [Middleware(RequestGuard, max_body_bytes=args.max_body_mb * 1024 * 1024),
                                   login.middleware(),
                                   Middleware(OutputsFileGuard, users=users, outputs_root=paths.outputs_dir)]},
        allowed_paths=[str(paths.outputs_dir)],
        blocked_paths=[str(paths.models_dir), str(paths.data_dir)],
        max_file_size=UPLOAD_LIMIT,
        show_error=True,
        css=ui_css(),
        head=ui_head(),
        footer_links=[],
        prevent_thread_lock=True,
    )
    stop = threading.Event()
    mount_routes(demo.server_app, context, stop=stop.set)
    mount_sdapi(demo.server_app, context, flags, limits)
    _serve_until_stopped(demo, stop)
    context.shutdown()


def _serve_api_only(args: argparse.Namespace, context: Any, users: UserStore, flags: dict[str, Any],
                    limits: ApiLimits) -> None:
    """`--nowebui`: the same routes and logins on a bare FastAPI app, without Gradio."""
    import uvicorn
    from fastapi import FastAPI
    from starlette.middleware import Middleware

    from webui.api.auth import GradioLogin
    from webui.api.request_guard import RequestGuard
    from webui.api.routes import mount_routes, mount_sdapi

    app = FastAPI(title="Latent Studio API", docs_url=None, redoc_url=None, openapi_url=None,
                  middleware=[Middleware(RequestGuard, max_body_bytes=args.max_body_mb * 1024 * 1024),
                              GradioLogin(users).middleware()])
    config = uvicorn.Config(app, host="0.0.0.0" if args.listen else "127.0.0.1", port=args.port, log_level="warning")
    server = uvicorn.Server(config)
    mount_routes(app, context, stop=lambda: setattr(server, "should_exit", True))
    mount_sdapi(app, context, flags, limits)
    print(f"API only (--nowebui): http://{config.host}:{args.port}/sdapi/v1/ (schema at /docs)", flush=True)
    server.run()
    context.shutdown()


def _serve_until_stopped(demo: Any, stop: threading.Event) -> None:
    """Like Gradio's block_thread, but an admin's `POST /api/server/stop` ends it too."""
    try:
        while demo.is_running and not stop.wait(0.1):
            pass
    except KeyboardInterrupt:
        print("Keyboard interruption in main thread... closing server.")
    else:
        print("Stopping the server (asked by an admin)." if stop.is_set() else "The server stopped.")
    demo.close()


def _preload(context) -> None:
    """Load the default model in the background so the first Generate is quick; errors surface on first use."""
    try:
        with context.jobs.device_lock:
            context.models.get()
    except Exception as exc:  # reported, and raised again when the user generates
        print(f"warning: could not preload the default model: {exc}", file=sys.stderr)
