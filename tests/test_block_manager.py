"""BlockManager invariants under random use, checked against a simulated KV cache.

The simulated cache stores, at each (block, offset) the model wrote, the full token prefix that
produced it. A sequence may only read back exactly its own prefixes: that is what a real KV cache
needs, and it catches wrong sharing that a refcount check alone would miss (e.g. a hash collision).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from openqwen.engine import block_manager
from openqwen.engine.block_manager import BlockManager
from openqwen.engine.sampling_params import SamplingParams
from openqwen.engine.sequence import Sequence

BLOCK_SIZE = 2
NUM_BLOCKS = 12
TOKENS = st.integers(0, 1)  # a tiny alphabet, so prompts share prefixes (and whole blocks) often


def make_seq(tokens: list[int]) -> Sequence:
    return Sequence(tokens, SamplingParams(), max_model_len=10_000)


class KVCacheMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.bm = BlockManager(NUM_BLOCKS, BLOCK_SIZE)
        self.waiting: list[Sequence] = []
        self.live: list[Sequence] = []
        self.pending: dict[int, int] = {}  # seq_id -> tokens covered by the table, not yet computed
        self.kv: dict[tuple[int, int], tuple[int, ...]] = {}

    def _slot(self, seq: Sequence, pos: int) -> tuple[int, int]:
        return seq.block_table[pos // BLOCK_SIZE], pos % BLOCK_SIZE

    @rule(prompt=st.lists(TOKENS, min_size=1, max_size=16))
    def add(self, prompt: list[int]) -> None:
        self.waiting.append(make_seq(prompt))

    @precondition(lambda self: self.live)
    @rule(data=st.data(), suffix=st.lists(TOKENS, min_size=1, max_size=4))
    def add_continuation(self, data: st.DataObject, suffix: list[int]) -> None:
        """A prompt that continues a live one, as a chat's next turn would."""
        seq = data.draw(st.sampled_from(self.live))
        self.waiting.append(make_seq(seq.token_ids[: data.draw(st.integers(1, seq.num_tokens))] + suffix))

    @precondition(lambda self: self.waiting)
    @rule(data=st.data())
    def admit(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(self.waiting))
        cached = self.bm.cached_prefix_len(seq)
        assert cached % BLOCK_SIZE == 0 and cached < seq.num_tokens
        num_new = data.draw(st.integers(1, seq.num_tokens - cached))
        if not self.bm.can_allocate(seq, num_new):
            return
        self.bm.allocate(seq, num_new)
        assert seq.num_cached_tokens == seq.num_computed_tokens == cached
        self.waiting.remove(seq)
        self.live.append(seq)
        self.pending[seq.seq_id] = num_new

    @precondition(lambda self: any(self.pending.values()))
    @rule(data=st.data(), sampled=TOKENS)
    def compute(self, data: st.DataObject, sampled: int) -> None:
        seq = data.draw(st.sampled_from([s for s in self.live if self.pending[s.seq_id]]))
        start, num_new = seq.num_computed_tokens, self.pending[seq.seq_id]
        for pos in range(start, start + num_new):
            block_id, offset = self._slot(seq, pos)
            assert self.bm.blocks[block_id].ref_count == 1, "the model must never write a shared block"
            self.kv[block_id, offset] = tuple(seq.token_ids[: pos + 1])
        self.bm.mark_computed(seq, num_new)
        self.pending[seq.seq_id] = 0
        if seq.num_uncomputed_tokens == 0:
            seq.append_token(sampled)

    @precondition(lambda self: any(not self.pending[s.seq_id] for s in self.live))
    @rule(data=st.data())
    def extend(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from([s for s in self.live if not self.pending[s.seq_id]]))
        num_new = data.draw(st.integers(1, seq.num_uncomputed_tokens))
        if self.bm.can_append(seq, num_new):
            self.bm.may_append(seq, num_new)
            self.pending[seq.seq_id] = num_new

    @precondition(lambda self: self.live)
    @rule(data=st.data(), requeue=st.booleans())
    def release(self, data: st.DataObject, requeue: bool) -> None:
        seq = data.draw(st.sampled_from(self.live))
        self.bm.deallocate(seq)
        assert not seq.block_table and seq.num_computed_tokens == 0
        self.live.remove(seq)
        del self.pending[seq.seq_id]
        if requeue:  # like a preemption: the sequence comes back later and is recomputed
            self.waiting.append(seq)

    @invariant()
    def refcounts_match_tables(self) -> None:
        holders = [0] * NUM_BLOCKS
        for seq in self.live:
            assert len(set(seq.block_table)) == len(seq.block_table)
            for block_id in seq.block_table:
                holders[block_id] += 1
        assert [b.ref_count for b in self.bm.blocks] == holders
        free = set(self.bm._free)  # white-box: the free list itself
        assert free == {b.block_id for b in self.bm.blocks if b.ref_count == 0}
        assert self.bm.num_free_blocks + sum(h > 0 for h in holders) == NUM_BLOCKS

    @invariant()
    def tables_cover_exactly_what_is_scheduled(self) -> None:
        for seq in self.live:
            covered = seq.num_computed_tokens + self.pending[seq.seq_id]
            assert len(seq.block_table) == -(-covered // BLOCK_SIZE)

    @invariant()
    def every_computed_position_holds_its_own_prefix(self) -> None:
        for seq in self.live:
            for pos in range(seq.num_computed_tokens):
                assert self.kv.get(self._slot(seq, pos)) == tuple(seq.token_ids[: pos + 1])

    def teardown(self) -> None:
        for seq in self.live:
            self.bm.deallocate(seq)
        assert self.bm.num_free_blocks == NUM_BLOCKS and self.bm.usage == 0.0


STATEFUL = settings(max_examples=60, stateful_step_count=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def test_invariants_under_random_use() -> None:
    run_state_machine_as_test(KVCacheMachine, settings=STATEFUL)


def test_invariants_with_every_hash_colliding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(block_manager, "hash_block", lambda parent, token_ids: 0)
    run_state_machine_as_test(KVCacheMachine, settings=STATEFUL)


def run_prompt(bm: BlockManager, tokens: list[int]) -> Sequence:
    """Allocate and fully compute a prompt, as one prefill step would."""
    seq = make_seq(tokens)
    num_new = seq.num_tokens - bm.cached_prefix_len(seq)
    assert bm.can_allocate(seq, num_new)
    bm.allocate(seq, num_new)
    bm.mark_computed(seq, num_new)
    return seq


def test_shared_prefix_reuses_blocks() -> None:
    bm = BlockManager(16, block_size=4)
    a = run_prompt(bm, list(range(10)))
    b = run_prompt(bm, list(range(8)) + [9, 9, 9])
    assert b.block_table[:2] == a.block_table[:2] and b.block_table[2] not in a.block_table
    assert b.num_cached_tokens == 8
    assert [bm.blocks[i].ref_count for i in a.block_table] == [2, 2, 1]
    assert (bm.prefix_cache_queries, bm.prefix_cache_hits) == (10 + 11, 8)


def test_fully_cached_prompt_still_computes_its_last_token() -> None:
    bm = BlockManager(16, block_size=4)
    run_prompt(bm, list(range(8)))
    again = run_prompt(bm, list(range(8)))
    assert again.num_cached_tokens == 4  # the last block is recomputed to get logits


def test_without_prefix_caching_nothing_is_shared() -> None:
    bm = BlockManager(16, block_size=4, enable_prefix_caching=False)
    a = run_prompt(bm, list(range(10)))
    b = run_prompt(bm, list(range(10)))
    assert b.num_cached_tokens == 0 and not set(a.block_table) & set(b.block_table)


def test_freed_prefix_is_revived_then_evicted_tail_first() -> None:
    bm = BlockManager(5, 2)
    a = run_prompt(bm, [1, 2, 3, 4, 5])  # blocks [0, 1, 2]; block 2 is partial, so unhashed
    bm.deallocate(a)
    assert bm.num_free_blocks == 5
    other = run_prompt(bm, [7, 7, 7])  # reuses the unhashed block 2 first, then the unused 3
    assert other.block_table == [2, 3]
    b = run_prompt(bm, [1, 2, 3, 4, 9])
    assert b.block_table == [0, 1, 4] and b.num_cached_tokens == 4  # revived from the free list
    bm.deallocate(b)
    bm.deallocate(other)
    run_prompt(bm, [8, 8, 8, 8, 8, 8])  # three fresh blocks: the unhashed 3 and 4, then a's tail 1
    assert bm.cached_prefix_len(make_seq([1, 2, 3, 4, 5])) == 2


def test_collision_is_a_miss_not_a_wrong_hit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(block_manager, "hash_block", lambda parent, token_ids: 0)
    bm = BlockManager(16, block_size=4)
    run_prompt(bm, [1, 1, 1, 1, 2, 2, 2, 2, 5])
    # Same tokens as the second block of the first prompt, but a different prefix before them.
    b = run_prompt(bm, [2, 2, 2, 2, 3])
    assert b.num_cached_tokens == 0


def test_allocating_past_the_pool_is_refused() -> None:
    bm = BlockManager(2, block_size=4)
    seq = make_seq(list(range(12)))
    assert not bm.can_allocate(seq, 12) and bm.can_allocate(seq, 8)
    with pytest.raises(RuntimeError, match="out of KV cache blocks"):
        bm.allocate(seq, 12)
