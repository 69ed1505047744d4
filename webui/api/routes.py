"""HTTP routes beside the Gradio app: A1111's /sdapi/v1, API tokens, stopping the server (admins), and extension
routes under /ext/<name>/, all behind the same logins as the UI (see `webui.api.auth`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi

from webui.api.auth import (basic_credentials, client_address, current_user, install, require_admin, throttled_error,
                            unauthorized)
from webui.api.limits import ApiLimits
from webui.api.sdapi import SdApi
from webui.context import AppContext
from webui.services.generation import APP_VERSION
from webui.services.users import LoginThrottled, User


def mount_routes(app: FastAPI, context: AppContext, stop: Callable[[], None] | None = None) -> list[str]:
    """Every route of ours: `POST /api/token`, `POST /api/server/stop` (when `stop` is given) and the extensions'.
    Returns the mounted paths."""
    install(app, context.users)
    users = context.users

    def issue_token(request: Request) -> dict[str, Any]:
        """HTTP Basic in, a bearer token out (for clients that should not send the password on every call)."""
        user: User | None = users.local_user()
        if users.auth_enabled:
            credentials = basic_credentials(request)
            if credentials is None:
                raise unauthorized()
            try:
                user = users.authenticate(*credentials, client_address(request))
            except LoginThrottled as exc:
                raise throttled_error(exc) from exc
        if user is None:
            raise unauthorized()
        return {"token": users.issue_token(user), "user": user.name, "admin": user.is_admin}

    app.add_api_route("/api/token", issue_token, methods=["POST"])
    mounted = ["/api/token"]
    if stop is not None:
        def stop_server() -> dict[str, str]:
            """Admins only: the server finishes this answer, then shuts down."""
            stop()
            return {"status": "stopping"}

        app.add_api_route("/api/server/stop", stop_server, methods=["POST"], dependencies=[Depends(require_admin)])
        mounted.append("/api/server/stop")
    return mounted + mount_extension_routes(app, context)


def mount_extension_routes(app: FastAPI, context: AppContext) -> list[str]:
    """Add every active extension's routes behind `current_user` (a handler may also ask for
    `user: User = Depends(current_user)`); returns the mounted paths."""
    install(app, context.users)
    guard = Depends(current_user)
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



def mount_sdapi(app: FastAPI, context: AppContext, flags: dict[str, Any], limits: ApiLimits) -> None:
    """A1111's `/sdapi/v1` (every call as the logged-in user), and its OpenAPI schema at `/openapi.json` and
    `/docs` (Gradio's own app serves no schema, so these describe our routes only)."""
    install(app, context.users)
    api = SdApi(context, current_user, require_admin, flags=flags, limits=limits)
    router = api.router()
    app.include_router(router)
    schema: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not schema:
            # the router's own routes: FastAPI keeps an included router as one entry of the app's routes
            ours = [*(route for route in app.routes
                      if (getattr(route, "path", None) or "").startswith(("/api/", "/ext/"))),
                    *router.routes]
            schema.update(get_openapi(title="Latent Studio API", version=APP_VERSION, routes=ours,
                                      description="A1111-compatible /sdapi/v1, plus tokens and extension routes. "
                                                  "Log in with HTTP Basic or a bearer token from POST /api/token."))
        return schema

    # Gradio's app has its own schema of its internal routes at these paths; ours replace it
    app.router.routes[:] = [route for route in app.router.routes
                            if getattr(route, "path", None) not in ("/openapi.json", "/docs", "/docs/oauth2-redirect")]
    app.add_api_route("/openapi.json", openapi, methods=["GET"], include_in_schema=False)
    app.add_api_route("/docs", lambda: get_swagger_ui_html(openapi_url="/openapi.json", title="Latent Studio API"),
                      methods=["GET"], include_in_schema=False)
