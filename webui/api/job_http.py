"""Running one queued job for one HTTP call: the error statuses A1111 clients expect, and a job that stops when its
caller goes away. Shared by `/sdapi/v1/txt2img|img2img` and the Extras endpoints."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from fastapi import HTTPException

from webui.services.queue import QueueFullError
from webui.services.requests import RequestError


def unprocessable(exc: Exception) -> HTTPException:
    """422 with the error's first line (the request schema names the field there)."""
    return HTTPException(422, detail=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


async def run_to_completion(submit: Callable[[], Any]) -> Any:
    """The finished job that `submit()` queued: a refused request is 422, a full queue 503 with Retry-After; when the
    client goes away mid-wait the job is interrupted instead of computing for nobody."""
    try:
        job = submit()
    except RequestError as exc:
        raise unprocessable(exc) from exc
    except QueueFullError as exc:
        raise HTTPException(503, detail=str(exc), headers={"Retry-After": "10"}) from exc
    loop, finished = asyncio.get_running_loop(), asyncio.Event()
    job.when_done(lambda: loop.call_soon_threadsafe(finished.set))
    try:
        await finished.wait()
    except asyncio.CancelledError:
        job.interrupt()
        raise
    return job
