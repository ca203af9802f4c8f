"""ASGI middleware: request ids, structured access logs, HTTP metrics, API keys and body limits.

One pure-ASGI class (not BaseHTTPMiddleware, which would buffer streaming responses and hide
client disconnects). The body is read up front so an oversized one is refused before any parsing,
then replayed to the app; later `receive()` calls go to the server, so handlers still see the
client's `http.disconnect`.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
import uuid
from typing import Any

from .errors import error_body

log = logging.getLogger("openqwen.server.access")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, plus any `extra` fields."""

    _RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
                                 "msg": record.getMessage()}
        entry.update({k: v for k, v in vars(record).items() if k not in self._RESERVED})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _is_protected(path: str) -> bool:
    return path.startswith("/v1/")


class ServerMiddleware:
    def __init__(self, app, *, api_key: str | None, max_body_bytes: int, metrics=None) -> None:
        self.app, self.max_body_bytes, self.metrics = app, max_body_bytes, metrics
        self._key = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = headers.get("x-request-id", "")
        request_id = given if _SAFE_ID.match(given) else f"req-{uuid.uuid4().hex[:20]}"
        scope.setdefault("state", {})["request_id"] = request_id
        path = scope.get("path", "")
        status = {"code": 0}

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                extra = [(b"x-request-id", request_id.encode())]
                if path.startswith("/v1/messages"):
                    extra.append((b"request-id", request_id.encode()))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            if self._key is not None and _is_protected(path) and not self._authorized(headers):
                await self._error(send_with_id, path, 401, "invalid or missing API key: send `Authorization: Bearer KEY` or `x-api-key: KEY`")
                return
            replay = await self._read_body(scope, receive, headers)
            if replay is None:
                await self._error(send_with_id, path, 400, f"the request body is larger than this server's limit of {self.max_body_bytes} bytes")
                return
            await self.app(scope, replay, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            if self.metrics is not None and path.startswith("/v1/"):
                self.metrics.requests.labels(_route(path), str(status["code"])).inc()
            log.info("request", extra={"request_id": request_id, "method": scope.get("method"), "path": path,
                                       "status": status["code"], "ms": round(seconds * 1000, 1),
                                       "client": (scope.get("client") or ("", 0))[0]})

    def _authorized(self, headers: dict[str, str]) -> bool:
        auth = headers.get("authorization", "")
        candidate = auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get("x-api-key", "")
        return hmac.compare_digest(candidate.encode(), self._key)

    async def _read_body(self, scope, receive, headers: dict[str, str]):
        """The whole body, within the limit, behind a replaying `receive`; None if too large."""
        if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return receive
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return None
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _replay([message], receive)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}], receive)

    @staticmethod
    async def _error(send, path: str, status: int, message: str) -> None:
        body = json.dumps(error_body(path, status, message)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _replay(messages: list[dict], receive):
    pending = list(messages)

    async def replay_receive():
        if pending:
            return pending.pop(0)
        return await receive()

    return replay_receive


def _route(path: str) -> str:
    """Bounded label values for the metrics (no model names or ids from the path)."""
    for known in ("/v1/chat/completions", "/v1/completions", "/v1/messages/count_tokens", "/v1/messages", "/v1/models"):
        if path.startswith(known):
            return known
    return "other"
