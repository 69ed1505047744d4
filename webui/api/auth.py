"""Who is calling: Gradio's login cookie, HTTP Basic, or a bearer token from `POST /api/token`.

`current_user` (401 with `WWW-Authenticate`, 429 while logins are paused) and `require_admin` (403) are FastAPI
dependencies for any route on the app; they find the app's `UserStore` on `app.state` (see `install`).
`GradioLogin` is Gradio's `auth=` callable: Gradio hands it only the user name and password, so an ASGI middleware
notes each request's client address for it, and logins on the Gradio page count against the same per-user and
per-address limits as API logins.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request, status
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from webui.services.users import LoginLimits, LoginThrottled, User, UserStore

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def install(app: Any, users: UserStore) -> None:
    """Give the app's routes (and middleware) the store that `current_user` checks against."""
    app.state.users = users


def users_of(app: Any) -> UserStore:
    users = getattr(getattr(app, "state", None), "users", None)
    if not isinstance(users, UserStore):
        raise RuntimeError("no UserStore on this app: call webui.api.auth.install(app, users) before mounting routes")
    return users


def client_address(request: Request) -> str | None:
    """The peer address (uvicorn already applied X-Forwarded-For from trusted proxies, by default loopback only)."""
    return request.client.host if request.client else None


def basic_credentials(request: Request) -> tuple[str, str] | None:
    """(user, password) from an `Authorization: Basic` header; None when absent or malformed (no colon, bad
    base64 or UTF-8): a malformed header is no login attempt."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    name, sep, password = decoded.partition(":")
    return (name, password) if sep else None


def _bearer_token(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def _cookie_user(request: Request, users: UserStore) -> User | None:
    """The user of Gradio's login cookie (the browser UI), as Gradio itself reads it."""
    app = request.app
    cookie_id = getattr(app, "cookie_id", None)
    tokens = getattr(app, "tokens", None) or {}
    if cookie_id is None:
        return None
    for name in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"):
        token = request.cookies.get(name)
        if token and tokens.get(token):
            return users.get(tokens[token])
    return None


def _same_origin(request: Request) -> bool:
    """A browser sends Origin on every cross-site POST; it must name this host (`Origin: null` never does)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    parts = urlsplit(origin)
    return bool(parts.scheme in ("http", "https") and parts.netloc and parts.netloc.lower() == host.lower())


def user_from_request(request: Request, users: UserStore | None = None) -> User | None:
    """The caller, or None. Order: login cookie, HTTP Basic (a counted login attempt), bearer token.

    Raises LoginThrottled while Basic logins for that name or address are paused. Without configured logins every
    request is the local admin. A cookie login on a state-changing request from another site is refused (CSRF).
    `users` defaults to the app's store (`install`)."""
    users = users or users_of(request.app)
    if not users.auth_enabled:
        return users.local_user()
    user = _cookie_user(request, users)
    if user is not None:
        if request.method not in SAFE_METHODS and not _same_origin(request):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-site request refused")
        return user
    credentials = basic_credentials(request)
    if credentials is not None:
        return users.authenticate(*credentials, client_address(request))
    token = _bearer_token(request)
    return users.user_for_token(token) if token else None


def throttled_error(exc: LoginThrottled) -> HTTPException:
    return HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, str(exc), headers={"Retry-After": str(exc.retry_after)})


def unauthorized() -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, "login required", headers={"WWW-Authenticate": "Basic"})


def current_user(request: Request) -> User:
    """FastAPI dependency: the logged-in user; 401 without a valid login, 429 while logins are paused."""
    try:
        user = user_from_request(request)
    except LoginThrottled as exc:
        raise throttled_error(exc) from exc
    if user is None:
        raise unauthorized()
    return user


def require_admin(user: User = Depends(current_user)) -> User:
    """FastAPI dependency: the user, who must be an admin (403 otherwise)."""
    if not user.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"user {user.name!r} is not an admin; this needs an admin")
    return user


def login_message(limits: LoginLimits) -> str:
    """What the login page says, since Gradio's page shows no server message for a refused login."""
    return (f"After {limits.attempts} failed logins within {limits.window_s:g} s for one user or one address, "
            f"logins for it pause for {limits.cooldown_s:g} s.")


class _RecordAddress:
    """ASGI middleware: puts the client address where `GradioLogin` can read it during the request."""

    def __init__(self, app: ASGIApp, address: ContextVar[str | None]) -> None:
        self.app = app
        self.address = address

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            client = scope.get("client")
            self.address.set(client[0] if client else None)
        await self.app(scope, receive, send)


class GradioLogin:
    """Gradio's `auth=` callable, backed by the UserStore and its rate limits.

    Pass `check` as `auth=` and `middleware()` in `app_kwargs["middleware"]` of `launch()`.
    """

    def __init__(self, users: UserStore) -> None:
        self.users = users
        self._address: ContextVar[str | None] = ContextVar(f"login-address-{id(self)}", default=None)

    def middleware(self) -> Middleware:
        return Middleware(_RecordAddress, address=self._address)

    async def check(self, username: str, password: str) -> bool:
        """True for a right password; a paused login answers 429 with the wait (scrypt runs off the event loop)."""
        address = self._address.get()
        try:
            user = await asyncio.to_thread(self.users.authenticate, username, password, address)
        except LoginThrottled as exc:
            raise throttled_error(exc) from exc
        return user is not None
