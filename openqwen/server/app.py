"""The FastAPI app: one ModelService (engine loop in a background thread) behind the OpenAI
and Anthropic routers, plus /health, /metrics and the web chat page at /.

    app = create_app(LLM("qwen2.5-coder-0.5b-instruct"), "qwen2.5-coder")
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..llm import LLM
from . import anthropic_api, openai_api, openai_completions
from .errors import APIError, error_body, validation_message
from .metrics import Metrics
from .middleware import ServerMiddleware
from .service import Limits, ModelService

log = logging.getLogger("openqwen.server")
WEBUI = Path(__file__).parent / "webui"


def create_app(llm: LLM, served_model_name: str | list[str], api_key: str | None = None, limits: Limits | None = None) -> FastAPI:
    """`served_model_name`: the name (or names) clients must send as `model`."""
    names = [served_model_name] if isinstance(served_model_name, str) else list(served_model_name)
    if not names:
        raise ValueError("at least one served model name is needed")
    limits = limits or Limits()
    metrics = Metrics(names[0])
    service = ModelService(llm, names, limits, observer=metrics)
    service.created = int(time.time())
    metrics.bind(service.loop)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        service.loop.start()
        log.info("engine loop started", extra={"model": names[0], "max_model_len": service.max_model_len})
        try:
            yield
        finally:  # uvicorn has drained the open streams by now
            service.loop.stop()
            log.info("engine loop stopped")

    app = FastAPI(title="openqwen", version=__version__, lifespan=lifespan,
                  description="OpenAI- and Anthropic-compatible API for Qwen models running locally.")
    app.state.service, app.state.metrics = service, metrics
    app.add_middleware(ServerMiddleware, api_key=api_key, max_body_bytes=limits.max_body_bytes, metrics=metrics)
    _add_error_handlers(app)
    app.include_router(openai_api.router)
    app.include_router(openai_completions.router)
    app.include_router(anthropic_api.router)

    @app.get("/health")
    async def health() -> JSONResponse:
        stats, alive = service.loop.stats, service.loop.is_alive()
        body = {"status": "ok" if alive else "engine stopped", "model": names[0], "running": stats.num_running,
                "waiting": stats.num_waiting, "in_flight": service.loop.num_in_flight, "kv_usage": round(stats.kv_usage, 4),
                "kv_free_blocks": stats.kv_free_blocks, "kv_total_blocks": stats.kv_total_blocks}
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(WEBUI / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/ui", StaticFiles(directory=WEBUI), name="ui")
    return app


def _add_error_handlers(app: FastAPI) -> None:
    def reply(request: Request, status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
        if status < 500:  # 5xx are logged with their traceback below
            log.info("rejected", extra={"request_id": getattr(request.state, "request_id", None), "status": status, "error": message})
        return JSONResponse(error_body(request.url.path, status, message, param, code), status_code=status)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return reply(request, exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return reply(request, 400, "the request body is not valid JSON")
        if any(tuple(e.get("loc", ())) == ("body",) for e in errors):
            return reply(request, 400, "the request body must be a JSON object (Content-Type: application/json)")
        message, param = validation_message(list(errors))
        return reply(request, 400, f"invalid request: {message}", param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no route for {request.method} {request.url.path}"
        return reply(request, exc.status_code, message)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        return reply(request, 500, f"internal error: {type(exc).__name__}")
