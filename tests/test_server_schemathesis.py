"""Schemathesis against the server's own OpenAPI schema: generated valid and invalid requests to
every operation never get a 5xx. Examples are bounded (and generation lengths capped) so the
run stays well under two minutes."""

from __future__ import annotations

import zlib

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

from test_server_support import MODEL_NAME, server  # noqa: E402,F401

EXAMPLES = {GenerationMode.POSITIVE: 40, GenerationMode.NEGATIVE: 20}


def _cap(body) -> None:
    """Keep generated generations short: the fuzzing is about validation and translation."""
    if not isinstance(body, dict):
        return
    for key, limit in (("max_tokens", 3), ("max_completion_tokens", 3), ("n", 2)):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > limit:
            body[key] = limit
    if "max_tokens" not in body:
        body["max_tokens"] = 3
    if isinstance(body.get("model"), str) and zlib.crc32(body["model"].encode()) % 8:  # mostly the served name
        body["model"] = MODEL_NAME


def test_no_server_errors_on_generated_requests(server):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /v1/chat/completions", "POST /v1/completions", "POST /v1/messages", "POST /v1/messages/count_tokens", "GET /v1/models"}
    failures, statuses = [], {}
    for op in operations:
        for mode, count in EXAMPLES.items():
            @settings(max_examples=count, deadline=None, database=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case):
                _cap(case.body)
                response = case.call(base_url=server.url, timeout=60)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code >= 500:
                    failures.append((case.method, case.path, case.body, response.status_code, response.text[:300]))

            try:
                run()
            except Unsatisfiable:  # e.g. no invalid request exists for a GET without parameters
                pass
    print(f"\nstatus codes of {sum(statuses.values())} generated requests: {dict(sorted(statuses.items()))}")
    assert not failures, failures[:3]
    assert statuses.get(200, 0) >= 10 and sum(n for code, n in statuses.items() if 400 <= code < 500) >= 20
