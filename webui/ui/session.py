"""Who is asking: the logged-in user, or the browser session when auth is off."""

from __future__ import annotations

import gradio as gr

from webui.services.users import User, UserStore


def owner_of(request: gr.Request | None) -> str:
    """The logged-in user's name (jobs, per-user outputs); without a login, the browser session, so interrupts stay
    scoped to the tab that started the job."""
    if request is None:
        return "local"
    return getattr(request, "username", None) or getattr(request, "session_hash", None) or "local"


def user_of(users: UserStore, request: gr.Request | None) -> User | None:
    """The logged-in user; without configured logins, the local admin; None if neither."""
    name = getattr(request, "username", None) if request is not None else None
    if name:
        return users.get(name)
    return users.local_user()


def require_admin(users: UserStore, request: gr.Request | None, action: str) -> None:
    """Raise gr.Error (shown in the UI, an error for API clients) unless the caller is an admin."""
    user = user_of(users, request)
    if user is None or not user.is_admin:
        raise gr.Error(f"Only an admin can {action}.")
