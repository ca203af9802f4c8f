"""The `openqwen` command: chat, generate, models, info, bench, serve.

Every user-facing failure ends in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from .engine.sampling_params import SamplingParams
from .registry import DEFAULT_MODEL


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (defaults: the model's recommended settings)")
    g.add_argument("--max-tokens", type=int, default=None, help="most tokens to generate (default 512 for chat, 256 for generate)")
    g.add_argument("--temperature", type=float)
    g.add_argument("--top-p", type=float)
    g.add_argument("--top-k", type=int)
    g.add_argument("--min-p", type=float)
    g.add_argument("--repetition-penalty", type=float)
    g.add_argument("--presence-penalty", type=float)
    g.add_argument("--frequency-penalty", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--greedy", action="store_true", help="temperature 0")


def _thinking_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--think", dest="thinking", action="store_true", default=None, help="thinking on (Qwen3)")
    g.add_argument("--no-think", dest="thinking", action="store_false", help="thinking off (Qwen3)")


def add_model_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The flags that pick and load a model, shared by every command that loads one (serve too)."""
    p.add_argument("--model", "-m", default=DEFAULT_MODEL, help=f"path (HF directory or .gguf) or registry name (default {DEFAULT_MODEL})")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: fp32 on CPU, bf16 on GPU)")
    p.add_argument("--max-model-len", type=int, default=None, help="context length (default: the model's)")
    p.add_argument("--quantize", choices=["none", "q8_0", "q4_k"], default=None,
                   help="CPU weights: none = dequantize all; q8_0/q4_k = quantize dense checkpoints "
                        "(default: GGUF weights stay quantized, dense stay dense)")
    p.add_argument("--kv-cache-dtype", choices=["auto", "fp8"], default="auto",
                   help="KV cache: auto = the model dtype; fp8 = e4m3 with a scale per token and head "
                        "(half of bf16's bytes)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openqwen", description="Run Qwen models locally.")
    sub = parser.add_subparsers(dest="command", required=True)

    chat = sub.add_parser("chat", help="interactive chat (reads piped stdin as one message)")
    add_model_flags(chat)
    _sampling_flags(chat)
    chat.add_argument("--system", help="system prompt")
    _thinking_flags(chat)

    gen = sub.add_parser("generate", help="one prompt, reply to stdout")
    gen.add_argument("prompt", help="the prompt ('-' reads stdin)")
    add_model_flags(gen)
    _sampling_flags(gen)
    gen.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    gen.add_argument("--system", help="system prompt")
    _thinking_flags(gen)
    gen.add_argument("--logprobs", type=int, default=None, help="top-k logprobs per token (with --json)")
    gen.add_argument("--json", action="store_true", help="print a machine-readable result")

    sub.add_parser("models", help="list the registry and local model files")

    info = sub.add_parser("info", help="architecture, parameters, tensor types and memory of a model")
    info.add_argument("model", nargs="?", default=DEFAULT_MODEL)

    bench = sub.add_parser("bench", help="load time, prefill and decode speed, peak memory, next to peers")
    add_model_flags(bench)
    bench.add_argument("--prompt-tokens", type=int, default=128)
    bench.add_argument("--new-tokens", type=int, default=128)
    bench.add_argument("--peers", default="transformers,llama-cpp", help="comma list: transformers, llama-cpp, none")
    bench.add_argument("--json", dest="json_path", help="also write results to this JSON file")

    from .server.cli_serve import add_serve_parser

    add_serve_parser(sub)
    return parser


def sampling_from_args(args: argparse.Namespace, defaults: dict[str, Any], max_tokens: int) -> SamplingParams:
    values = dict(defaults)
    for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "seed"):
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    if getattr(args, "greedy", False):
        values["temperature"] = 0.0
    values["max_tokens"] = max_tokens if args.max_tokens is None else args.max_tokens
    values["stop"] = args.stop
    if getattr(args, "logprobs", None) is not None:
        values["logprobs"] = args.logprobs
    return SamplingParams(**values)


def _load(args: argparse.Namespace):
    from .llm import LLM

    options = {} if args.max_model_len is None else {"max_model_len": args.max_model_len}
    return LLM(args.model, device=args.device, dtype=args.dtype, quantize=args.quantize,
               kv_cache_dtype=args.kv_cache_dtype, **options)


def _template_kwargs(thinking: bool | None) -> dict[str, Any]:
    return {} if thinking is None else {"enable_thinking": thinking}


def cmd_generate(args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if args.prompt == "-" and not prompt.strip():
        raise ValueError("no input on stdin")
    llm = _load(args)
    params = sampling_from_args(args, llm.loaded.sampling_defaults, 256)
    start = time.perf_counter()
    if args.raw:
        out = llm.generate(prompt, params)[0]
    else:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [{"role": "user", "content": prompt}]
        out = llm.chat(messages, params, chat_template_kwargs=_template_kwargs(args.thinking))[0]
    seconds = time.perf_counter() - start
    completion = out.outputs[0]
    if args.json:
        result = {
            "model": args.model, "text": completion.text, "reasoning_content": completion.reasoning_content,
            "tool_calls": [vars(c) for c in completion.tool_calls or []], "token_ids": completion.token_ids,
            "finish_reason": completion.finish_reason, "prompt_tokens": len(out.prompt_token_ids),
            "completion_tokens": len(completion.token_ids), "seconds": round(seconds, 3),
        }
        if completion.logprobs is not None:
            result["logprobs"] = [{"token_id": lp.token_id, "logprob": lp.logprob, "top": lp.top} for lp in completion.logprobs]
        print(json.dumps(result, ensure_ascii=False))
    else:
        if completion.reasoning_content:
            print(f"<think>\n{completion.reasoning_content}\n</think>\n")
        print(completion.text)
    return 0


TRIPLE_QUOTE = '"' * 3
CHAT_HELP = (
    "Commands: /think, /no_think (Qwen3 thinking), /system TEXT, /reset, /exit.\n"
    f"End a line with \\ to continue it, or wrap several lines in {TRIPLE_QUOTE}."
)


def _read_message(prompt: str = ">>> ") -> str | None:
    """One user message from the terminal: backslash continuation or a triple-quoted block."""
    try:
        line = input(prompt)
    except EOFError:
        return None
    if line.strip().startswith(TRIPLE_QUOTE):
        lines = [line.strip()[3:]]
        while not lines[-1].rstrip().endswith(TRIPLE_QUOTE):
            try:
                lines.append(input("... "))
            except EOFError:
                break
        lines[-1] = lines[-1].rstrip().removesuffix(TRIPLE_QUOTE)
        return "\n".join(lines).strip()
    lines = [line]
    while lines[-1].endswith("\\"):
        lines[-1] = lines[-1][:-1]
        try:
            lines.append(input("... "))
        except EOFError:
            break
    return "\n".join(lines)


def _stream_reply(llm, messages: list[dict], params: SamplingParams, thinking: bool | None, out=sys.stdout) -> str:
    """Stream one reply (thinking included) to `out`, print tokens/s to stderr; returns the reply
    content to keep in the history (templates drop past reasoning anyway)."""
    prompt = llm.apply_chat_template(messages, chat_template_kwargs=_template_kwargs(thinking))
    start = time.perf_counter()
    first_token_at = None
    printed = 0
    final = None
    for final in llm.stream(prompt, params):
        text = final.outputs[0].text
        if len(text) > printed:
            first_token_at = first_token_at or time.perf_counter()
            out.write(text[printed:])
            out.flush()
            printed = len(text)
    out.write("\n")
    completion = final.outputs[0]
    elapsed = time.perf_counter() - (first_token_at or start)
    n = len(completion.token_ids)
    rate = (n - 1) / elapsed if n > 1 and elapsed > 0 else 0.0
    print(f"[{n} tokens, {rate:.1f} tok/s, finish: {completion.finish_reason}]", file=sys.stderr)
    llm.parse_reply(completion, prompt, None)
    return completion.text


def cmd_chat(args: argparse.Namespace) -> int:
    llm = _load(args)
    params = sampling_from_args(args, llm.loaded.sampling_defaults, 512)
    system = [{"role": "system", "content": args.system}] if args.system else []
    thinking = args.thinking
    if not sys.stdin.isatty():  # piped: the whole input is one message
        message = sys.stdin.read().strip()
        if not message:
            raise ValueError("no input on stdin")
        _stream_reply(llm, system + [{"role": "user", "content": message}], params, thinking)
        return 0
    print(f"openqwen chat with {args.model} (loaded in {llm.load_seconds:.1f} s). /help for commands, /exit to quit.", file=sys.stderr)
    history: list[dict] = []
    while True:
        message = _read_message()
        if message is None or message.strip() in ("/exit", "/bye", "/quit"):
            print(file=sys.stderr)
            return 0
        command, _, rest = message.strip().partition(" ")
        if command == "/help":
            print(CHAT_HELP, file=sys.stderr)
        elif command in ("/think", "/no_think"):
            thinking = command == "/think"
            note = "" if "enable_thinking" in (llm.tokenizer.chat_template or "") else " (this model's template has no thinking switch)"
            print(f"thinking {'on' if thinking else 'off'}{note}", file=sys.stderr)
        elif command == "/reset":
            history.clear()
            print("conversation cleared", file=sys.stderr)
        elif command == "/system":
            system = [{"role": "system", "content": rest}] if rest else []
            print("system prompt " + ("set" if rest else "cleared"), file=sys.stderr)
        elif command.startswith("/") and command[1:].isalpha():
            print(f"unknown command {command}; /help lists them", file=sys.stderr)
        elif message.strip():
            history.append({"role": "user", "content": message})
            try:
                reply = _stream_reply(llm, system + history, params, thinking)
            except KeyboardInterrupt:
                print("\n[stopped]", file=sys.stderr)
                history.pop()
                continue
            except ValueError as exc:  # e.g. the conversation outgrew the context: keep the session
                history.pop()
                print(f"openqwen: error: {exc} (/reset starts a new conversation)", file=sys.stderr)
                continue
            history.append({"role": "assistant", "content": reply})


def cmd_models(args: argparse.Namespace) -> int:
    from .registry import list_models, local_model_files

    print(f"{'name':32} {'installed':10} {'cached':7} description")
    for entry in list_models():
        default = " (default)" if entry.name == DEFAULT_MODEL else ""
        print(f"{entry.name:32} {'yes' if entry.installed else 'no':10} {'yes' if entry.cached else 'no':7} {entry.description}{default}")
    files = local_model_files()
    if files:
        print("\nlocal files:")
        for path in files:
            print(f"  {path}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .info import describe_model

    for key, value in describe_model(args.model).items():
        print(f"{key:24} {value}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    run_bench(args)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .server.cli_serve import cmd_serve as serve

    return serve(args)


COMMANDS = {"chat": cmd_chat, "generate": cmd_generate, "models": cmd_models, "info": cmd_info, "bench": cmd_bench,
            "serve": cmd_serve}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError, ImportError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"openqwen: error: {message}", file=sys.stderr)
        if os.environ.get("OPENQWEN_DEBUG"):
            raise
        return 1


if __name__ == "__main__":
    sys.exit(main())
