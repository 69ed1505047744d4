"""One ASGI middleware in front of every route (Gradio's and ours) for what no single route can check on its own.

- Cross-site requests (security case 21): a browser names the page that sent a request in `Origin`. A request whose
  Origin is another site, another port of this host, or `null` (sandboxed frames, local files) is refused with 403,
  whatever its method or content type, before any route sees it: Gradio's own routes do not check Origin (its CORS
  middleware even lets any localhost page read the answers), and a login cookie rides along with such requests.
  Clients that are not browsers send no Origin and are not affected.
- Body size (case 15): request bodies are capped (413); Gradio's upload route keeps its own per-file and file-count
  limits (`max_file_size`, 1000 files).
- File URLs in Gradio calls (case 19): a component value such as `{"path": "https://...", "meta": {"_type":
  "gradio.FileData"}}` would make Gradio download the URL. The app never makes outgoing requests for a client, so
  such a value is refused (422) before Gradio sees it.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_MAX_BODY_MB = 200
UPLOAD_PATHS = ("/gradio_api/upload", "/upload")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+:")  # http:, https:, file:, ftp:, data:...; not a drive letter (C:)


def origin_matches(origin: str, host: str, forwarded_host: str | None = None) -> bool:
    """True when `origin` names this server: its host[:port] equals the Host header (or, behind a proxy that rewrites
    Host, X-Forwarded-Host). `null` and anything that is not an http(s) origin never match."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    netloc = parts.netloc.lower()
    return netloc == host.strip().lower() or (forwarded_host is not None
                                              and netloc == forwarded_host.split(",")[0].strip().lower())


def file_url_in(value: Any) -> str | None:
    """The first Gradio file value (a dict with `path`) whose path is a URL, anywhere in a JSON document."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            path = item.get("path")
            if isinstance(path, str) and _URL.match(path.strip()):
                return path
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


class RequestGuard:
    """The checks above, as ASGI middleware: pass it in `launch(app_kwargs={"middleware": [...]})`."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = DEFAULT_MAX_BODY_MB * 1024 * 1024) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is not None and not origin_matches(origin, headers.get("host", ""), headers.get("x-forwarded-host")):
            await self._refuse(scope, receive, send, 403, "cross-site request refused: the Origin "
                               f"{origin[:100]!r} is not this server")
            return
        path = scope.get("path", "")
        if scope["method"] in ("GET", "HEAD", "OPTIONS") or path.endswith(UPLOAD_PATHS):
            await self.app(scope, receive, send)
            return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._refuse(scope, receive, send, 413, self._too_large())
            return
        body = await self._read_body(receive)
        if body is None:
            await self._refuse(scope, receive, send, 413, self._too_large())
            return
        if path.startswith("/gradio_api/") and "json" in headers.get("content-type", ""):
            url = _file_url_of(body)
            if url is not None:
                await self._refuse(scope, receive, send, 422, f"file and image URLs are not fetched ({url[:100]!r}); "
                                   "upload the file itself")
                return
        await self.app(scope, _replay(body, receive), send)

    def _too_large(self) -> str:
        return f"request body too large: the limit is {self.max_body_bytes // (1024 * 1024)} MB (--max-body-mb)"

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or None once it passes the limit (chunked bodies declare no length)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away; the route will see an empty body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
        await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)


def _file_url_of(body: bytes) -> str | None:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None  # not JSON: the route answers that itself
    return file_url_in(document)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the already-read body to the app once, then defers to the real one (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
