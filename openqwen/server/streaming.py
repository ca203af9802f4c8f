"""Shared plumbing between handlers and the engine loop: SSE framing, collecting a whole reply,
merging several requests' updates, and noticing a client that hung up.

A streaming response is cancelled by Starlette when its client disconnects; the generator's
`finally` then closes the handle, which aborts the generation. A non-streaming handler is not
cancelled by anyone, so `collect` races the generation against the client's `http.disconnect`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from .engine_loop import RequestHandle
from .generation import ChoiceState, ChoiceUpdate

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ClientGone(Exception):
    """The client disconnected before the reply was ready."""


def sse_data(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, allow_nan=False)}\n\n"


def sse_event(event: str, payload: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(payload, ensure_ascii=False, allow_nan=False)}\n\n"


def sse_response(body: AsyncIterator[str], handles: list[RequestHandle]) -> StreamingResponse:
    """`body` closes the handles when it ends; if the client is gone before it even starts, the
    generator never runs, so the response's background task closes them too (close is idempotent)."""

    async def release() -> None:
        for handle in handles:
            handle.close()

    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS, background=BackgroundTask(release))


async def wait_disconnect(request: Request) -> None:
    """Returns once the client has gone (the body was already read, so only disconnect arrives)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def merged(handles: list[RequestHandle]) -> AsyncIterator[tuple[int, ChoiceUpdate]]:
    """(handle index, update) from several handles as they come; closes them all at the end."""
    if len(handles) == 1:
        try:
            async for update in handles[0]:
                yield 0, update
        finally:
            handles[0].close()
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int, handle: RequestHandle) -> None:
        try:
            async for update in handle:
                queue.put_nowait((i, update))
        except Exception as exc:  # noqa: BLE001 - re-raised in the consumer
            queue.put_nowait((i, exc))
        finally:
            queue.put_nowait((i, done))

    tasks = [asyncio.ensure_future(pump(i, h)) for i, h in enumerate(handles)]
    try:
        remaining = len(handles)
        while remaining:
            i, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        for handle in handles:
            handle.close()


async def with_heartbeat(source: AsyncIterator[Any], seconds: float) -> AsyncIterator[Any]:
    """Items of `source`, with None whenever `seconds` pass without one (keep-alive pings during a
    long prefill). Closing this generator closes `source`."""
    pending: asyncio.Future | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(source.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=seconds)
            if not done:
                yield None
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield item
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            try:
                await pending
            except BaseException:  # noqa: BLE001 - only waiting for the cancel to land
                pass
        await source.aclose()


async def collect(handles: list[RequestHandle], request: Request) -> list[list[ChoiceState]]:
    """Run requests to the end; per handle, its choices' final states. Raises ClientGone if the
    client disconnects first (the generations are aborted)."""
    states = [[ChoiceState(i, h.request.parse) for i in range(h.request.params.n)] for h in handles]

    async def consume() -> None:
        async for which, update in merged(handles):
            states[which][update.index].apply(update)

    work = asyncio.ensure_future(consume())
    watcher = asyncio.ensure_future(wait_disconnect(request))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            raise ClientGone()
        work.result()
        return states
    finally:
        watcher.cancel()
        work.cancel()
        for handle in handles:
            handle.close()
