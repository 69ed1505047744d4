"""Keep users out of each other's images on Gradio's file route, and everyone out of files that a link in the outputs
folder points to.

Gradio checks a requested path against its allowed folders without resolving symlinks, then serves the link's
target: a link inside outputs pointing to /etc/passwd or to a model would be served. In every mode the guard answers
403 for a path named inside outputs whose real path lies outside it (security case 17).

With several users, images are saved under `outputs/<user>/` and the outputs folder is one of Gradio's allowed
paths, so without this guard anyone logged in could fetch `/gradio_api/file=<outputs>/<other user>/...` by guessing
the A1111-style name. The guard resolves the real path first (a symlink is judged by where it points, security case
17) and answers 403 unless the file lies in the caller's own folder. The UI itself never needs such a request:
Gradio serves shown images from copies in its cache.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from webui.api.auth import user_from_request
from webui.services.users import LoginThrottled, UserStore

# Gradio's routes that serve a local file by path (`/gradio_api/file/...` is its deprecated spelling).
FILE_ROUTE_PREFIXES = ("/gradio_api/file=", "/gradio_api/file/", "/file=")


def file_route_target(scope: Scope) -> str | None:
    """The file path a request asks Gradio's file route for, or None for any other request."""
    path = scope.get("path", "")
    root_path = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        path = path[len(root_path):]
    for prefix in FILE_ROUTE_PREFIXES:
        if path.startswith(prefix):
            return path[len(prefix):]
    return None


def _inside(path: str, root: str) -> str | None:
    """`path` relative to `root` when inside it (case-insensitively where the OS is), else None."""
    path_n, root_n = os.path.normcase(path), os.path.normcase(root)
    try:
        if os.path.commonpath([path_n, root_n]) != root_n:
            return None
    except ValueError:  # different drives
        return None
    return os.path.relpath(path, root)


class OutputsFileGuard:
    """ASGI middleware: a link out of the outputs folder is never followed; in multi-user mode, a file under the
    outputs folder is served only to the user it belongs to."""

    def __init__(self, app: ASGIApp, users: UserStore, outputs_root: Path) -> None:
        self.app = app
        self.users = users
        self.root = os.path.abspath(outputs_root)

    def owner_folder(self, target: str) -> str | None:
        """The user folder a requested file really lies in; "" for a file in outputs that belongs to nobody (loose
        files, other folders, or a link out of outputs); None when the file is not in outputs at all."""
        lexical = os.path.abspath(target)  # as Gradio reads it: relative to the working directory
        real = os.path.realpath(lexical)
        relative = _inside(real, os.path.realpath(self.root))
        if relative is not None:
            if relative == os.curdir:
                return None  # the folder itself: Gradio refuses directories
            head, _, rest = relative.partition(os.sep)
            return head if rest else ""
        if _inside(lexical, self.root) is not None:
            return ""  # named inside outputs, but a link leads out of it
        return None

    def leads_out(self, target: str) -> bool:
        """True for a path named inside outputs whose real path (links resolved) lies outside it."""
        lexical = os.path.abspath(target)
        return (_inside(lexical, self.root) is not None
                and _inside(os.path.realpath(lexical), os.path.realpath(self.root)) is None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = file_route_target(scope) if scope["type"] == "http" else None
        if target is not None:
            if self.leads_out(target):
                await JSONResponse({"detail": "File not allowed: a link in the outputs folder points outside it."},
                                   403)(scope, receive, send)
                return
            if self.users.is_multi_user:
                folder = self.owner_folder(target)
                if folder is not None and not await self._is_owner(scope, folder):
                    response = JSONResponse({"detail": "File not allowed: it belongs to another user."}, 403)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _is_owner(self, scope: Scope, folder: str) -> bool:
        if not folder:
            return False
        try:
            user = await run_in_threadpool(user_from_request, Request(scope), self.users)
        except LoginThrottled:
            return False
        except Exception:  # a refused cookie (cross-site) or anything odd: not the owner
            return False
        return user is not None and os.path.normcase(user.name) == os.path.normcase(folder)
