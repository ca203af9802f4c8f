"""Engine behaviour: continuous batching, prefix caching, preemption and abort give the same
tokens as one request alone, and leave the KV cache as they found it."""

from __future__ import annotations

import random

import pytest

from openqwen import LLM, SamplingParams
from tiny_models import make_hf_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("engine")
    make_hf_model("qwen2_tied", path)
    return str(path)


def load(model_dir, **options) -> LLM:
    return LLM(model_dir, device="cpu", dtype="float32", **options)


def prompts(count: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, 150000) for _ in range(rng.randrange(3, 40))] for _ in range(count)]


GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def singles(model_dir):
    llm = load(model_dir, kv_cache_gb=0.05)
    return [llm.generate([p], GREEDY)[0].outputs[0].token_ids for p in prompts(8)]


def test_batched_equals_single(model_dir, singles):
    llm = load(model_dir, kv_cache_gb=0.05)
    outs = llm.generate(prompts(8), GREEDY)
    assert [o.outputs[0].token_ids for o in outs] == singles


def test_enforce_eager_reaches_the_runner(model_dir, singles, monkeypatch):
    """LLM(enforce_eager=True) builds its ModelRunner with CUDA graphs off, and generates as usual."""
    from openqwen import loading

    seen = {}
    runner_class = loading.ModelRunner

    def recording_runner(*args, **kwargs):
        seen.update(kwargs)
        return runner_class(*args, **kwargs)

    monkeypatch.setattr(loading, "ModelRunner", recording_runner)
    llm = load(model_dir, kv_cache_gb=0.05, enforce_eager=True)
    assert seen["use_cuda_graphs"] is False and llm.engine.runner.use_cuda_graphs is False
    assert llm.generate([prompts(8)[0]], GREEDY)[0].outputs[0].token_ids == singles[0]


def test_continuous_batching_equals_single(model_dir, singles):
    """Requests join while others are mid-decode; chunked prefill with a small token budget."""
    llm = load(model_dir, kv_cache_gb=0.05, max_num_batched_tokens=24, max_num_seqs=3)
    engine, done = llm.engine, {}
    pending = list(enumerate(prompts(8)))
    ids = {}
    while pending or engine.has_unfinished():
        if pending:
            index, prompt = pending.pop(0)
            ids[engine.add_request(prompt, GREEDY)] = index
        for out in engine.step():
            if out.finished:
                done[ids[out.request_id]] = out.outputs[0].token_ids
    assert [done[i] for i in range(8)] == singles


def test_prefix_cache_hit_skips_prefill(model_dir):
    llm = load(model_dir, kv_cache_gb=0.05, block_size=16)
    shared = prompts(1, seed=3)[0] * 3  # > 2 blocks
    first = llm.generate([shared + [11, 12]], GREEDY)[0]
    assert first.num_cached_tokens == 0
    fresh = load(model_dir, kv_cache_gb=0.05, block_size=16, enable_prefix_caching=False)
    expected = fresh.generate([shared + [13, 14]], GREEDY)[0].outputs[0].token_ids
    second = llm.generate([shared + [13, 14]], GREEDY)[0]
    assert second.num_cached_tokens == (len(shared) // 16) * 16 > 0
    assert second.outputs[0].token_ids == expected
    assert llm.engine.block_manager.prefix_cache_hits >= second.num_cached_tokens


def test_preemption_under_tiny_kv_budget(model_dir, singles):
    """A KV cache too small for all requests at once forces preemption by recompute."""
    block_bytes = 16 * 2 * 3 * 2 * 16 * 4  # block_size * (k,v) * layers * kv_heads * head_dim * fp32
    llm = load(model_dir, kv_cache_gb=12 * block_bytes / 2**30, max_model_len=160)
    preempted = 0
    original = llm.engine.scheduler.schedule

    def counting_schedule():
        nonlocal preempted
        plan = original()
        preempted += len(plan.preempted)
        return plan

    llm.engine.scheduler.schedule = counting_schedule
    outs = llm.generate(prompts(8), GREEDY)
    assert preempted > 0
    assert [o.outputs[0].token_ids for o in outs] == singles


def test_abort_returns_blocks(model_dir):
    llm = load(model_dir, kv_cache_gb=0.05, enable_prefix_caching=False)
    engine = llm.engine
    baseline = engine.block_manager.num_free_blocks
    ids = [engine.add_request(p, SamplingParams(temperature=0, max_tokens=50, ignore_eos=True)) for p in prompts(4)]
    for _ in range(3):
        engine.step()
    assert engine.block_manager.num_free_blocks < baseline
    for request_id in ids:
        engine.abort(request_id)
    assert engine.block_manager.num_free_blocks == baseline
    assert not engine.has_unfinished()


def test_closing_a_stream_aborts(model_dir):
    llm = load(model_dir, kv_cache_gb=0.05, enable_prefix_caching=False)
    baseline = llm.engine.block_manager.num_free_blocks
    stream = llm.stream(prompts(1)[0], SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    next(stream)
    next(stream)
    stream.close()
    assert llm.engine.block_manager.num_free_blocks == baseline and not llm.engine.has_unfinished()
