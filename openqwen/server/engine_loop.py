"""The engine runs in one background thread; asyncio handlers talk to it through handles.

`LLMEngine` is not thread-safe, so exactly one thread touches it. Handlers `submit()` a
GenerationRequest and get a `RequestHandle`; the thread takes submissions and aborts from an
inbox, calls `add_request` / `abort` / `step()`, and hands each choice's `ChoiceUpdate` to the
handler's asyncio queue with `call_soon_threadsafe`. When there is no work it sleeps on a
condition. A handler that goes away (client disconnect, cancelled task) aborts its request, which
frees its KV blocks at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ..engine.llm_engine import LLMEngine, RequestOutput
from .errors import APIError
from .generation import ChoiceUpdate, GenerationRequest

log = logging.getLogger("openqwen.server")


@dataclass
class EngineStats:
    """Published by the engine thread after every step; read by /health and /metrics."""

    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0
    kv_free_blocks: int = 0
    kv_total_blocks: int = 0
    steps: int = 0


class RequestHandle:
    """The asyncio side of one request: iterate it for ChoiceUpdates (it ends when every choice has
    finished); `close()` releases it, aborting whatever still runs."""

    def __init__(self, loop_thread: EngineLoop, request: GenerationRequest, aloop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.prompt_tokens = len(request.prompt_token_ids)
        self._thread, self._aloop = loop_thread, aloop
        self._queue: asyncio.Queue[ChoiceUpdate | Exception] = asyncio.Queue()
        self._open = request.params.n  # choices not finished yet
        self._closed = False
        self._sent_tokens: dict[int, int] = {}  # choice -> tokens already sent (engine thread)

    # -- engine thread side ------------------------------------------------------------------
    def _post(self, item: Any) -> None:
        self._aloop.call_soon_threadsafe(self._queue.put_nowait, item)

    # -- asyncio side ----------------------------------------------------------------------------
    async def __aiter__(self) -> AsyncIterator[ChoiceUpdate]:
        try:
            while self._open > 0:
                item = await self._queue.get()
                if isinstance(item, Exception):
                    raise item
                if item.finish_reason is not None:
                    self._open -= 1
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Release the request: aborts the choices still running (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._thread._release(self, abort=self._open > 0)


class EngineLoop:
    def __init__(self, engine: LLMEngine, *, max_queue: int = 256, observer: Any = None) -> None:
        """`observer` (metrics) gets prompt(api, tokens), first_token(api, seconds),
        next_token(api, seconds) and finished(api, update, seconds), from the engine thread."""
        self.engine = engine
        self.max_queue = max_queue
        self.capacity = engine.scheduler.max_num_seqs + max_queue  # sequences admitted at once
        self.stats = EngineStats(kv_total_blocks=engine.block_manager.num_blocks, kv_free_blocks=engine.block_manager.num_free_blocks)
        self._observer = observer
        self._cond = threading.Condition()
        self._inbox: list[tuple[str, Any]] = []
        self._routes: dict[str, tuple[RequestHandle, int]] = {}  # engine request id -> (handle, choice)
        self._times: dict[str, list[float]] = {}  # engine request id -> [submitted, last token]
        self._in_flight = 0  # sequences held by open handles (asyncio thread only)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="openqwen-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Abort what is left and end the thread (after uvicorn has drained the streams)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def num_in_flight(self) -> int:
        return self._in_flight

    # -- asyncio side ----------------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> RequestHandle:
        if self._stopping:
            raise APIError(503, "the server is shutting down")
        n = request.params.n
        if self._in_flight + n > self.capacity:
            raise APIError(429, f"the server is busy: {self._in_flight} sequences in flight, queue limit {self.capacity}; retry later")
        handle = RequestHandle(self, request, asyncio.get_running_loop())
        self._in_flight += n
        self._send("submit", handle)
        return handle

    def call(self, fn: Callable[[LLMEngine], Any]) -> asyncio.Future:
        """Run `fn(engine)` in the engine thread (e.g. scoring a prompt); await the result."""
        future = asyncio.get_running_loop().create_future()
        self._send("call", (fn, future))
        return future

    def _release(self, handle: RequestHandle, abort: bool) -> None:
        self._in_flight -= handle.request.params.n
        if abort:
            self._send("abort", handle)

    def _send(self, kind: str, item: Any) -> None:
        with self._cond:
            self._inbox.append((kind, item))
            self._cond.notify()

    # -- engine thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._inbox and not self.engine.has_unfinished() and not self._stopping:
                    self._cond.wait()
                inbox, self._inbox = self._inbox, []
                stopping = self._stopping
            for kind, item in inbox:
                getattr(self, f"_do_{kind}")(item)
            if inbox and not self.engine.has_unfinished():
                self._publish()  # aborts may have emptied the engine: no step will publish that
            if stopping:
                for rid in list(self._routes):
                    self._abort_route(rid, APIError(503, "the server shut down before this request finished"))
                self._publish()
                return
            if self.engine.has_unfinished():
                self._step()

    def _do_submit(self, handle: RequestHandle) -> None:
        request = handle.request
        if handle._closed:
            return
        added = []
        try:
            for i in range(request.params.n):
                rid = f"{request.request_id}-{i}"
                self.engine.add_request(request.prompt_token_ids, request.choice_params(i), rid)
                added.append(rid)
                self._routes[rid] = (handle, i)
                now = time.perf_counter()
                self._times[rid] = [now, now]
            if self._observer is not None:
                self._observer.prompt(request.api, len(request.prompt_token_ids))
        except ValueError as exc:  # the engine refused the prompt or the token budget
            for rid in added:
                self.engine.abort(rid)
                self._forget(rid)
            handle._post(APIError(400, str(exc)))

    def _do_abort(self, handle: RequestHandle) -> None:
        for i in range(handle.request.params.n):
            rid = f"{handle.request.request_id}-{i}"
            if rid in self._routes:
                self.engine.abort(rid)
                self._forget(rid)

    def _do_call(self, item: tuple[Callable[[LLMEngine], Any], asyncio.Future]) -> None:
        fn, future = item
        aloop = future.get_loop()
        try:
            result = fn(self.engine)
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting handler
            aloop.call_soon_threadsafe(lambda error=exc: future.done() or future.set_exception(error))
        else:
            aloop.call_soon_threadsafe(lambda: future.done() or future.set_result(result))

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as exc:  # noqa: BLE001 - a failed step must not kill the server
            log.exception("engine step failed; failing the requests in flight")
            for rid in list(self._routes):
                self._abort_route(rid, APIError(500, f"the engine failed: {type(exc).__name__}: {exc}"))
            self._publish()
            return
        for out in outputs:
            self._route(out)
        self._publish()

    def _route(self, out: RequestOutput) -> None:
        route = self._routes.get(out.request_id)
        if route is None:
            return
        handle, index = route
        completion = out.outputs[0]
        sent = handle._sent_tokens.get(index, 0)
        token_ids = completion.token_ids[sent:]
        handle._sent_tokens[index] = len(completion.token_ids)
        logprobs = completion.logprobs[sent:] if completion.logprobs is not None else None
        update = ChoiceUpdate(index, completion.text, list(token_ids), logprobs, completion.finish_reason,
                              completion.stop_reason, out.num_cached_tokens)
        self._observe(handle.request.api, out.request_id, update, first=sent == 0)
        handle._post(update)
        if completion.finish_reason is not None:
            self._forget(out.request_id)

    def _observe(self, api: str, rid: str, update: ChoiceUpdate, first: bool) -> None:
        times = self._times.get(rid)
        if self._observer is None or times is None or not update.new_token_ids:
            return
        now = time.perf_counter()
        if first:
            self._observer.first_token(api, now - times[0])
        else:
            self._observer.next_token(api, now - times[1])
        times[1] = now
        if update.finish_reason is not None:
            self._observer.finished(api, update, now - times[0])

    def _abort_route(self, rid: str, error: Exception) -> None:
        handle, _ = self._routes[rid]
        self.engine.abort(rid)
        self._forget(rid)
        handle._post(error)

    def _forget(self, rid: str) -> None:
        self._routes.pop(rid, None)
        self._times.pop(rid, None)

    def _publish(self) -> None:
        bm, sched = self.engine.block_manager, self.engine.scheduler
        self.stats = EngineStats(sched.num_running, sched.num_waiting, bm.usage, bm.num_free_blocks, bm.num_blocks, self.stats.steps + 1)
