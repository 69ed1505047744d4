"""HTTP routes beside the Gradio app: extension routes under /ext/<name>/, behind the same login as the UI."""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, status

from webui.context import AppContext


def login_dependency(app: Any, credentials: list[tuple[str, str]]):
    """Accept Gradio's login cookie (browser) or HTTP Basic (API clients); open only when no login is configured."""

    def check(request: Request) -> None:
        if not credentials:
            return
        cookie_id = getattr(app, "cookie_id", None)
        for name in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"):
            token = request.cookies.get(name)
            if token and getattr(app, "tokens", {}).get(token):
                return
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user, password = "", ""
            for known_user, known_password in credentials:
                if secrets.compare_digest(user, known_user) and secrets.compare_digest(password, known_password):
                    return
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "login required", headers={"WWW-Authenticate": "Basic"})

    return check


def mount_extension_routes(app: FastAPI, context: AppContext, credentials: list[tuple[str, str]]) -> list[str]:
    """Add every active extension's routes; returns the mounted paths."""
    guard = Depends(login_dependency(app, credentials))
    mounted = []
    for record in context.extensions.active():
        for route in record.registrations.routes:
            path = f"/ext/{record.name}/{route.path}".rstrip("/")
            try:
                app.add_api_route(path, route.handler, methods=list(route.methods), dependencies=[guard])
            except Exception as exc:  # a malformed handler disables the extension, not the app
                record.fail(f"adding route {path}", exc)
                continue
            mounted.append(path)
    return mounted
