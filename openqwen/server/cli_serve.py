"""`openqwen serve`: load a model and serve the OpenAI and Anthropic APIs plus a web chat page.

Kept free of heavy imports at module level so `openqwen --help` stays fast; FastAPI, uvicorn and
the model load only when the command runs. SIGTERM (or Ctrl-C) stops accepting connections, lets
the streams in flight finish (up to --drain-timeout seconds), then exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from pathlib import Path


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    from ..cli import add_model_flags

    p = subparsers.add_parser("serve", help="OpenAI- and Anthropic-compatible HTTP server with a web chat page")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", action="append", default=None,
                   help="name clients send as `model` (repeatable; default: the model's name)")
    p.add_argument("--api-key", default=os.environ.get("OPENQWEN_API_KEY"),
                   help="require this key as `Authorization: Bearer KEY` or `x-api-key` (default: $OPENQWEN_API_KEY, else none)")
    g = p.add_argument_group("limits")
    g.add_argument("--max-body-bytes", type=int, default=8 * 2**20, help="largest request body (default 8 MiB)")
    g.add_argument("--max-prompt-tokens", type=int, default=None, help="longest prompt (default: the context length)")
    g.add_argument("--max-queue", type=int, default=256, help="sequences that may wait for a running slot before 429 (default 256)")
    g.add_argument("--drain-timeout", type=float, default=60.0, help="seconds to let streams finish on SIGTERM (default 60)")
    e = p.add_argument_group("engine")
    add_model_flags(e)
    e.add_argument("--max-num-seqs", type=int, default=None, help="sequences decoded together (default 64)")
    e.add_argument("--kv-cache-gb", type=float, default=None, help="KV cache size on the CPU (default 4)")
    e.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs: every decode step runs eagerly (GPU)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def served_name(model: str) -> str:
    path = Path(model)
    if path.exists():
        return path.stem if path.is_file() else path.resolve().name
    return model


def listen_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before the model loads (as vLLM does): a taken port or an unknown
    host fails at once instead of after the load, and nothing else can take the port meanwhile."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in 0-65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ValueError(f"cannot listen on {host!r}: {exc.strerror}") from exc
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restart over TIME_WAIT
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


def configure_logging(level: str) -> None:
    from .middleware import JsonFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("openqwen", "uvicorn"):  # uvicorn's own lines (startup, errors) as JSON too
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .app import create_app
    except ModuleNotFoundError as exc:  # the server's third-party packages are the [serve] extra
        if (exc.name or "openqwen").split(".")[0] == "openqwen":
            raise
        raise ImportError(f"`openqwen serve` needs {exc.name}: pip install 'openqwen[serve]'") from exc
    configure_logging(args.log_level)
    log = logging.getLogger("openqwen.server")
    for name in ("max_body_bytes", "max_queue", "max_prompt_tokens"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if args.drain_timeout < 0:
        raise ValueError("--drain-timeout must be non-negative")
    if args.served_model_name is not None and not all(name.strip() for name in args.served_model_name):
        raise ValueError("--served-model-name must not be empty")
    with listen_socket(args.host, args.port) as sock:
        _load_and_serve(args, sock, log)
    return 0


def _load_and_serve(args: argparse.Namespace, sock: socket.socket, log: logging.Logger) -> None:
    import uvicorn

    from ..llm import LLM
    from .app import create_app
    from .service import Limits

    options = {k: getattr(args, k) for k in ("max_model_len", "max_num_seqs", "kv_cache_gb", "quantize") if getattr(args, k) is not None}
    log.info("loading model", extra={"model": args.model})
    llm = LLM(args.model, device=args.device, dtype=args.dtype, enforce_eager=args.enforce_eager,
              kv_cache_dtype=args.kv_cache_dtype, **options)
    names = args.served_model_name or [served_name(args.model)]
    limits = Limits(max_body_bytes=args.max_body_bytes, max_prompt_tokens=args.max_prompt_tokens, max_queue=args.max_queue)
    app = create_app(llm, names, api_key=args.api_key, limits=limits)
    url = f"http://{args.host}:{sock.getsockname()[1]}"  # the port the system chose, for --port 0
    log.info("serving", extra={"model": names[0], "url": url, "load_seconds": round(llm.load_seconds, 1), "auth": bool(args.api_key)})
    print(f"openqwen: serving {names[0]} on {url} (web chat at /, OpenAI and Anthropic APIs at /v1)", file=sys.stderr, flush=True)
    # uvicorn drains on SIGTERM, then re-raises the signal under the handler it found: make that
    # one a no-op so a clean drain exits with status 0 instead of "killed by SIGTERM".
    previous = signal.signal(signal.SIGTERM, lambda *_: log.info("drained; exiting"))
    try:
        config = uvicorn.Config(app, log_level=args.log_level, access_log=False, log_config=None,
                                timeout_graceful_shutdown=args.drain_timeout, timeout_keep_alive=5)
        server = uvicorn.Server(config)
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:  # uvicorn logged why (e.g. the app's startup failed)
        raise RuntimeError("the server did not start")


def main(argv: list[str] | None = None) -> int:
    """`python -m openqwen.server.cli_serve ...`: the same command without the `openqwen` CLI."""
    parser = argparse.ArgumentParser(prog="openqwen")
    add_serve_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    return cmd_serve(args)


if __name__ == "__main__":
    sys.exit(main())
