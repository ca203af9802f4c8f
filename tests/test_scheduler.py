"""Scheduler tests, driven by a fake model that reads its context back through the block tables.

The fake model writes each computed position's token prefix into a simulated KV cache and, before
sampling, checks that every context position reads back its own prefix. Its "sampled" token is a
deterministic function of the context, so any configuration (chunked or not, tiny cache with
preemption, prefix caching on or off) must produce exactly the same completions.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from openqwen.engine.block_manager import BlockManager
from openqwen.engine.sampling_params import SamplingParams
from openqwen.engine.scheduler import Scheduler, SchedulerOutput
from openqwen.engine.sequence import Sequence, SequenceStatus

EOS = 3


def make_seq(prompt: list[int], max_model_len: int = 1024, **params: Any) -> Sequence:
    return Sequence(prompt, SamplingParams(**params), max_model_len=max_model_len, eos_token_ids=[EOS])


def make_scheduler(
    num_blocks: int = 256,
    max_num_seqs: int = 8,
    budget: int = 64,
    enable_prefix_caching: bool = True,
    enable_chunked_prefill: bool = True,
) -> Scheduler:
    bm = BlockManager(num_blocks, block_size=4, enable_prefix_caching=enable_prefix_caching)
    return Scheduler(bm, max_num_seqs, budget, enable_chunked_prefill)


class FakeModel:
    def __init__(self, scheduler: Scheduler) -> None:
        self.bm = scheduler.block_manager
        self.kv: dict[tuple[int, int], tuple[int, ...]] = {}

    def _slot(self, seq: Sequence, pos: int) -> tuple[int, int]:
        return seq.block_table[pos // self.bm.block_size], pos % self.bm.block_size

    def step(self, out: SchedulerOutput) -> dict[int, int]:
        sampled = {}
        for s in out.scheduled:
            seq = s.seq
            for pos in range(s.start_pos, s.context_len):
                assert self.bm.blocks[self._slot(seq, pos)[0]].ref_count == 1, "wrote a shared block"
                self.kv[self._slot(seq, pos)] = tuple(seq.token_ids[: pos + 1])
            if s.needs_sample:
                context = seq.token_ids[: s.context_len]
                assert all(self.kv[self._slot(seq, p)] == tuple(context[: p + 1]) for p in range(s.context_len))
                sampled[seq.seq_id] = 10 + sum((i + 1) * t for i, t in enumerate(context)) % 50
        return sampled


def drive(scheduler: Scheduler, seqs: list[Sequence], model: FakeModel | None = None) -> list[SchedulerOutput]:
    """Run every sequence to completion, checking the per-step limits; returns the step outputs."""
    for seq in seqs:
        scheduler.add(seq)
    model, outputs = model or FakeModel(scheduler), []
    while scheduler.has_unfinished():
        assert len(outputs) < 2000, "the scheduler stopped making progress"
        out = scheduler.schedule()
        ids = [s.seq.seq_id for s in out.scheduled]
        assert len(ids) == len(set(ids)) and not set(ids) & {p.seq_id for p in out.preempted}
        assert out.num_batched_tokens <= scheduler.max_num_batched_tokens
        assert len(ids) <= scheduler.num_running <= scheduler.max_num_seqs
        scheduler.update(out, model.step(out))
        outputs.append(out)
    assert scheduler.block_manager.num_free_blocks == scheduler.block_manager.num_blocks
    return outputs


def workload() -> list[list[int]]:
    """Prompts of 3 to 20 tokens, half of them continuing an earlier one so prefixes are shared."""
    rng = random.Random(0)
    prompts: list[list[int]] = []
    for _ in range(12):
        tail = [rng.randrange(10, 60) for _ in range(rng.randrange(3, 12))]
        prompts.append((prompts[-1][:8] if prompts and rng.random() < 0.5 else []) + tail)
    return prompts


def completions(scheduler: Scheduler) -> tuple[list[list[int]], list[SchedulerOutput]]:
    seqs = [make_seq(p, max_tokens=12) for p in workload()]
    outputs = drive(scheduler, seqs)
    assert all(s.finish_reason == "length" for s in seqs)
    return [s.completion_token_ids for s in seqs], outputs


def test_every_configuration_gives_the_same_tokens() -> None:
    expected, _ = completions(make_scheduler())
    tiny, tiny_steps = completions(make_scheduler(num_blocks=8, max_num_seqs=4, budget=16))
    assert any(out.preempted for out in tiny_steps), "the tiny cache should force preemption"
    assert tiny == expected
    assert completions(make_scheduler(num_blocks=8, budget=16, enable_prefix_caching=False))[0] == expected
    assert completions(make_scheduler(num_blocks=10, budget=32, enable_chunked_prefill=False))[0] == expected
    assert completions(make_scheduler(budget=5))[0] == expected


def test_prefix_cache_serves_a_shared_prefix() -> None:
    scheduler = make_scheduler()
    model = FakeModel(scheduler)  # one simulated KV cache across both requests
    first, second = make_seq(list(range(10, 30)), max_tokens=1), make_seq(list(range(10, 30)) + [7], max_tokens=1)
    drive(scheduler, [first], model)
    drive(scheduler, [second], model)
    assert second.num_cached_tokens == 20 and scheduler.block_manager.prefix_cache_hits == 20


def test_chunked_prefill_splits_a_long_prompt() -> None:
    scheduler = make_scheduler(budget=16)
    seq = make_seq(list(range(10, 60)), max_tokens=2)
    scheduler.add(seq)
    steps = []
    while scheduler.has_unfinished():
        out = scheduler.schedule()
        [s] = out.scheduled
        steps.append((s.num_new_tokens, s.context_len, s.needs_sample))
        scheduler.update(out, {seq.seq_id: 11} if s.needs_sample else {})
    assert steps == [(16, 16, False), (16, 32, False), (16, 48, False), (2, 50, True), (1, 51, True)]


def test_decodes_share_the_budget_with_a_prefill_chunk() -> None:
    scheduler = make_scheduler(budget=16)
    short, long = make_seq([20, 21], max_tokens=5), make_seq(list(range(10, 50)), max_tokens=5)
    scheduler.add(short)
    scheduler.update(scheduler.schedule(), {short.seq_id: 30})
    scheduler.add(long)
    out = scheduler.schedule()
    assert [(s.seq, s.num_new_tokens) for s in out.scheduled] == [(short, 1), (long, 15)]


def test_without_chunking_a_prompt_waits_for_room() -> None:
    scheduler = make_scheduler(budget=16, enable_chunked_prefill=False)
    a, b = make_seq(list(range(10, 20)), max_tokens=2), make_seq(list(range(20, 30)), max_tokens=2)
    scheduler.add(a)
    scheduler.add(b)
    out = scheduler.schedule()
    assert [(s.seq, s.num_new_tokens) for s in out.scheduled] == [(a, 10)]
    scheduler.update(out, {a.seq_id: 40})
    assert [(s.seq, s.num_new_tokens) for s in scheduler.schedule().scheduled] == [(a, 1), (b, 10)]


def test_fcfs_and_preempted_sequences_go_back_to_the_front() -> None:
    scheduler = make_scheduler(num_blocks=4, max_num_seqs=2)
    seqs = [make_seq(list(range(10, 16)), max_tokens=8) for _ in range(3)]
    admitted, holding = [], set()  # seq ids in the order they got blocks, again after a preemption
    for out in drive(scheduler, seqs):
        for s in out.scheduled:
            if s.seq.seq_id not in holding:
                admitted.append(s.seq.seq_id)
                holding.add(s.seq.seq_id)
        holding -= {p.seq_id for p in out.preempted}
    assert admitted[:2] == [seqs[0].seq_id, seqs[1].seq_id]  # the newest runner is the victim:
    assert admitted[2] == seqs[1].seq_id
    # The preempted sequence resumes before the one that has waited since the start.
    assert admitted.index(seqs[1].seq_id, 2) < admitted.index(seqs[2].seq_id)


@pytest.mark.parametrize("where", ["waiting", "running", "between schedule and update"])
def test_abort_frees_everything(where: str) -> None:
    scheduler = make_scheduler(max_num_seqs=1)
    baseline = scheduler.block_manager.num_free_blocks
    running, waiting = make_seq(list(range(10, 30))), make_seq(list(range(10, 30)))
    scheduler.add(running)
    scheduler.add(waiting)
    out = scheduler.schedule()
    target = waiting if where == "waiting" else running
    assert scheduler.abort(target.seq_id) is target
    assert target.status is SequenceStatus.FINISHED and target.finish_reason == "abort"
    if where == "between schedule and update":
        assert scheduler.update(out, {running.seq_id: 11}) == []
    assert scheduler.abort(target.seq_id) is None
    assert scheduler.abort(waiting.seq_id if target is running else running.seq_id) is not None
    assert not scheduler.has_unfinished() and scheduler.block_manager.num_free_blocks == baseline


def generate(seq: Sequence, tokens: list[int]) -> list[int]:
    """Feed `tokens` as the model's samples until the sequence finishes."""
    scheduler = make_scheduler()
    scheduler.add(seq)
    for token in tokens:
        out = scheduler.schedule()
        if scheduler.update(out, {seq.seq_id: token}):
            break
    return seq.completion_token_ids


@pytest.mark.parametrize(
    ("params", "tokens", "completion", "reason"),
    [
        ({}, [11, EOS, 12], [11, EOS], "stop"),
        ({"ignore_eos": True, "max_tokens": 3}, [EOS, EOS, EOS, EOS], [EOS, EOS, EOS], "length"),
        ({"min_tokens": 2}, [EOS, EOS, EOS, 12], [EOS, EOS, EOS], "stop"),
        ({"stop_token_ids": [7], "ignore_eos": True}, [11, EOS, 7, 12], [11, EOS, 7], "stop"),
        ({"max_tokens": 2}, [11, 12, 13], [11, 12], "length"),
        ({"max_tokens": None}, [11] * 10, [11] * 3, "length"),  # max_model_len = 8, prompt = 5
    ],
)
def test_stop_conditions(params: dict[str, Any], tokens: list[int], completion: list[int], reason: str) -> None:
    seq = make_seq([20, 21, 22, 23, 24], max_model_len=8, **params)
    assert generate(seq, tokens) == completion and seq.finish_reason == reason
    assert seq.num_tokens <= seq.max_model_len


def test_a_prompt_that_fills_the_context_still_gets_one_token() -> None:
    seq = make_seq([20, 21, 22, 23], max_model_len=4, max_tokens=None)
    assert generate(seq, [11, 12]) == [11] and seq.finish_reason == "length"


def test_engine_can_finish_a_sequence_for_a_stop_string() -> None:
    scheduler = make_scheduler()
    seq = make_seq([20, 21, 22])
    scheduler.add(seq)
    scheduler.update(scheduler.schedule(), {seq.seq_id: 11})
    scheduler.finish(seq, "stop")
    assert seq.finish_reason == "stop" and not scheduler.has_unfinished()
    assert scheduler.block_manager.num_free_blocks == scheduler.block_manager.num_blocks


@pytest.mark.parametrize(
    ("seq", "kwargs", "message"),
    [
        (lambda: make_seq([11] * 9, max_model_len=8), {}, "context length"),
        (lambda: make_seq([11] * 30, max_tokens=10), {"num_blocks": 8}, "KV cache holds only 32"),
        (lambda: make_seq([11] * 10, max_tokens=None), {"num_blocks": 8}, "KV cache holds only 32"),
        (lambda: make_seq([11] * 10, max_tokens=8), {"budget": 16, "enable_chunked_prefill": False}, "chunked"),
    ],
)
def test_requests_that_could_never_run_are_rejected(
    seq: Callable[[], Sequence], kwargs: dict[str, Any], message: str
) -> None:
    scheduler = make_scheduler(**kwargs)
    with pytest.raises(ValueError, match=message):
        scheduler.add(seq())
    assert not scheduler.has_unfinished()
