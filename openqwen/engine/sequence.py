"""Sequence: one request's tokens and its place in the engine, as plain Python state.

The scheduler, block manager and model runner all read the same object, so its counters are the
single source of truth: `num_computed_tokens` says how much of the KV cache is valid, and
`token_ids[num_computed_tokens:]` is what the next forward pass still has to run.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum, auto
from itertools import count

from openqwen.engine.sampling_params import SamplingParams


# Stands in `token_ids` for a token that a launched step is still sampling on the GPU (the engine's
# overlapped decode); the step's result replaces it before anything reads its value.
PENDING_TOKEN = -1


class SequenceStatus(Enum):
    WAITING = auto()  # queued, holds no KV blocks (new, or preempted and to be recomputed)
    RUNNING = auto()  # holds KV blocks; part of every step until it finishes
    FINISHED = auto()  # done; finish_reason says why, its blocks are released


class TokenHistory:
    """A prompt and the tokens generated after it, in one list: the first `num_prompt_tokens` of
    `token_ids` are the prompt. Shared by `Sequence` and the sampler's per-row request, which reads
    the sequence's list rather than copying it."""

    token_ids: list[int]
    num_prompt_tokens: int

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def completion_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_completion_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens


class Sequence(TokenHistory):
    """A prompt plus the tokens generated for it so far.

    Block size is a parameter of `num_blocks` rather than a class constant: it belongs to the
    block manager, and a global would leak between engines (and tests) built with different sizes.
    """

    _ids = count()

    def __init__(
        self,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        *,
        max_model_len: int,
        eos_token_ids: Iterable[int] = (),
    ) -> None:
        if not prompt_token_ids:
            raise ValueError("the prompt must contain at least one token")
        self.seq_id: int = next(Sequence._ids)
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens: int = len(prompt_token_ids)
        self.sampling_params = sampling_params
        self.max_model_len = max_model_len
        self.eos_token_ids: frozenset[int] = frozenset(eos_token_ids)
        self.status = SequenceStatus.WAITING
        self.block_table: list[int] = []
        self.num_computed_tokens = 0  # tokens whose KV is in the cache
        self.num_cached_tokens = 0  # of those, supplied by the prefix cache at the last allocation
        self.finish_reason: str | None = None  # "stop", "length" or "abort"
        # Length at which the sequence stops for "length": max_tokens or the context, whichever
        # comes first, but always room for one sampled token (a prompt that fills the context
        # still gets an answer, as in vLLM). The last token is never fed back, so the KV cache
        # never holds more than `max_num_tokens - 1` positions for this sequence. Fixed here, once:
        # the scheduler reads it for every sequence at every step.
        limit = max_model_len if sampling_params.max_tokens is None else min(
            max_model_len, self.num_prompt_tokens + sampling_params.max_tokens)
        self.max_num_tokens: int = max(limit, self.num_prompt_tokens + 1)

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.seq_id}, {self.status.name}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens}, blocks={self.block_table})"
        )

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def num_blocks(self, block_size: int) -> int:
        """Blocks needed to hold every current token."""
        return -(-self.num_tokens // block_size)

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
