"""Prometheus metrics (names after vLLM's, prefixed `openqwen_`), one registry per app.

Token timings are observed in the engine thread (see EngineLoop's observer); HTTP counts in the
request middleware; queue depth and KV usage are read from the engine loop's published stats at
scrape time.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .generation import ChoiceUpdate

_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_GAP = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        r, label = self.registry, {"model_name": model_name}
        self.requests = Counter("openqwen_http_requests", "HTTP requests by path and status", ["path", "status"], registry=r)
        self.prompt_tokens = Counter("openqwen_prompt_tokens", "Prompt tokens of admitted requests", ["api"], registry=r)
        self.generation_tokens = Counter("openqwen_generation_tokens", "Generated tokens", ["api"], registry=r)
        self.successes = Counter("openqwen_request_success", "Finished generations by finish reason", ["api", "finish_reason"], registry=r)
        self.ttft = Histogram("openqwen_time_to_first_token_seconds", "Time to first token", ["api"], buckets=_LATENCY, registry=r)
        self.itl = Histogram("openqwen_inter_token_latency_seconds", "Time between tokens of a sequence", ["api"], buckets=_TOKEN_GAP, registry=r)
        self.e2e = Histogram("openqwen_e2e_request_latency_seconds", "Time from submission to the last token", ["api"], buckets=_LATENCY, registry=r)
        self.running = Gauge("openqwen_num_requests_running", "Sequences running in the engine", registry=r)
        self.waiting = Gauge("openqwen_num_requests_waiting", "Sequences waiting for a slot", registry=r)
        self.kv_usage = Gauge("openqwen_kv_cache_usage_perc", "Fraction of KV cache blocks in use", registry=r)
        self.in_flight = Gauge("openqwen_num_requests_in_flight", "Sequences admitted by the server (running, queued, or being sent)", registry=r)
        self.info = Gauge("openqwen_model_info", "The served model", list(label), registry=r)
        self.info.labels(**label).set(1)

    def bind(self, loop) -> None:
        """Read queue depth and KV usage from the engine loop at scrape time."""
        self.running.set_function(lambda: loop.stats.num_running)
        self.waiting.set_function(lambda: loop.stats.num_waiting)
        self.kv_usage.set_function(lambda: loop.stats.kv_usage)
        self.in_flight.set_function(lambda: loop.num_in_flight)

    # -- EngineLoop observer (engine thread) -----------------------------------------------------
    def first_token(self, api: str, seconds: float) -> None:
        self.ttft.labels(api).observe(seconds)
        self.generation_tokens.labels(api).inc()

    def next_token(self, api: str, seconds: float) -> None:
        self.itl.labels(api).observe(seconds)
        self.generation_tokens.labels(api).inc()

    def finished(self, api: str, update: ChoiceUpdate, seconds: float) -> None:
        self.e2e.labels(api).observe(seconds)
        self.successes.labels(api, update.finish_reason or "unknown").inc()

    def prompt(self, api: str, tokens: int) -> None:
        self.prompt_tokens.labels(api).inc(tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
