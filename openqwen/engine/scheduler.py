"""Scheduler: decides which sequences run in the next step and how many tokens each computes.

One token budget covers prefill and decode alike, as in vLLM v1: a step gives each sequence
`min(num_uncomputed_tokens, budget left)` tokens, so a long prompt is prefilled in chunks while the
sequences already running keep decoding. Running sequences go first (they hold KV blocks, and
finishing them frees memory), then waiting ones are admitted first come, first served. When blocks
run out, the newest running sequence is preempted by recompute: its blocks are released and it
goes back to the front of the queue; the prefix cache usually makes the recompute cheap.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from openqwen.engine.block_manager import BlockManager
from openqwen.engine.sequence import PENDING_TOKEN, Sequence, SequenceStatus


class ScheduledSeq(NamedTuple):
    """One sequence's share of a step: the model runs `seq.token_ids[start_pos:context_len]`.
    A named tuple: immutable like a frozen dataclass, and several times cheaper to build, which
    every running sequence does at every step."""

    seq: Sequence
    num_new_tokens: int
    context_len: int  # seq.num_computed_tokens once this step is done
    needs_sample: bool  # the step computes the seq's last token, so its logits give the next one

    @property
    def start_pos(self) -> int:
        return self.context_len - self.num_new_tokens


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)  # lost their KV this step

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        enable_chunked_prefill: bool = True,
    ) -> None:
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be positive")
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.enable_chunked_prefill = enable_chunked_prefill
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence, refusing one that could never run rather than hang on it."""
        if seq.status is not SequenceStatus.WAITING or seq.block_table:
            raise ValueError(f"sequence {seq.seq_id} is not a new request")
        if seq.num_prompt_tokens > seq.max_model_len:
            raise ValueError(
                f"prompt has {seq.num_prompt_tokens} tokens, more than the model's context "
                f"length of {seq.max_model_len}"
            )
        # After a preemption the whole context is recomputed, so the worst case is the longest
        # context the sequence may reach, not just its prompt.
        max_context = seq.max_num_tokens - 1
        bm = self.block_manager
        if -(-max_context // bm.block_size) > bm.num_blocks:
            raise ValueError(
                f"request may reach {max_context} tokens of context but the KV cache holds only "
                f"{bm.num_blocks * bm.block_size}; lower max_tokens or the context length"
            )
        if not self.enable_chunked_prefill and max_context > self.max_num_batched_tokens:
            raise ValueError(
                f"request may reach {max_context} tokens of context, more than "
                f"max_num_batched_tokens={self.max_num_batched_tokens} can prefill in one step "
                "without chunked prefill; lower max_tokens or enable chunked prefill"
            )
        self.waiting.append(seq)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        bm = self.block_manager
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            num_new = min(seq.num_uncomputed_tokens, budget)
            while not bm.can_append(seq, num_new):
                victim = self.running.pop()  # always after `seq`, so never already scheduled
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            else:
                bm.may_append(seq, num_new)
                out.scheduled.append(self._scheduled(seq, num_new))
                budget -= num_new
                i += 1
                continue
            break
        # After a preemption memory is short; admitting now could also re-admit the victim.
        if out.preempted:
            return out
        while self.waiting and len(self.running) < self.max_num_seqs and budget > 0:
            seq = self.waiting[0]
            num_new = seq.num_tokens - bm.cached_prefix_len(seq)
            if num_new > budget:
                if not self.enable_chunked_prefill:
                    break  # FCFS: later requests wait behind this one
                num_new = budget
            if not bm.can_allocate(seq, num_new):
                break
            bm.allocate(seq, num_new)
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.scheduled.append(self._scheduled(seq, num_new))
            budget -= num_new
        return out

    @staticmethod
    def _scheduled(seq: Sequence, num_new: int) -> ScheduledSeq:
        context_len = seq.num_computed_tokens + num_new
        return ScheduledSeq(seq, num_new, context_len, needs_sample=context_len == seq.num_tokens)

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.deallocate(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)

    def update(self, output: SchedulerOutput, sampled: dict[int, int]) -> list[Sequence]:
        """Apply a finished step: record the computed KV, append the sampled tokens (seq_id ->
        token, for every scheduled seq with needs_sample) and retire sequences that should stop."""
        return [seq for seq, index in self.advance(output) if self.resolve(seq, index, sampled[seq.seq_id])]

    def advance(self, output: SchedulerOutput) -> list[tuple[Sequence, int]]:
        """Book a launched step as done before its tokens are known: its KV counts as computed and
        each sampled sequence gets a PENDING_TOKEN, so the next step can be scheduled (and launched)
        while this one runs. A sequence that reaches its length is retired now; its blocks may be
        reused at once, since a later step runs after this one's last cache write. Returns the
        placeholders (seq, index) that `resolve` must fill in."""
        placeholders = []
        for s in output.scheduled:
            seq = s.seq
            if seq.status is not SequenceStatus.RUNNING:
                continue  # aborted or stopped between schedule() and now
            self.block_manager.mark_computed(seq, s.num_new_tokens)
            if not s.needs_sample:
                continue
            placeholders.append((seq, seq.num_tokens))
            seq.append_token(PENDING_TOKEN)
            if seq.num_tokens >= seq.max_num_tokens:
                self.finish(seq, "length")
        return placeholders

    def resolve(self, seq: Sequence, index: int, token: int) -> bool:
        """Fill in a sampled token and retire the sequence if it stops there. Returns whether the
        token ended it (by a stop token, or as the last one its length allows)."""
        seq.token_ids[index] = token
        if seq.is_finished:  # retired for length by advance(): a stop token still takes precedence
            if seq.finish_reason == "length" and self._stop_reason(seq) == "stop":
                seq.finish_reason = "stop"
            return True
        reason = self._stop_reason(seq)
        if reason is not None:
            self.finish(seq, reason)
        return reason is not None

    @staticmethod
    def _stop_reason(seq: Sequence) -> str | None:
        params = seq.sampling_params
        token = seq.token_ids[-1]
        # Before min_tokens the sampler should mask EOS and stop tokens; this is the backstop.
        if seq.num_completion_tokens > params.min_tokens:
            if token in params.stop_token_ids or (not params.ignore_eos and token in seq.eos_token_ids):
                return "stop"
        if seq.num_tokens >= seq.max_num_tokens:
            return "length"
        return None

    def finish(self, seq: Sequence, reason: str) -> None:
        """Retire `seq` now (the engine calls this when a stop string matches)."""
        if seq.is_finished:
            return
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        self.block_manager.deallocate(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    def abort(self, seq_id: int) -> Sequence | None:
        """Cancel a request wherever it is; None if it is unknown or already finished."""
        seq = next((s for s in (*self.running, *self.waiting) if s.seq_id == seq_id), None)
        if seq is not None:
            self.finish(seq, "abort")
        return seq
