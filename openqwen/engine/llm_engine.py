"""LLMEngine: requests in, incremental outputs out, one scheduler step at a time.

The engine owns the tokenizer (prompts, detokenization, stop strings), the scheduler (which
sequences run this step) and the model runner (tensors). `LLM`, the CLI and the server all drive it
through `add_request` / `step` / `abort`.

Overlapped decode (CUDA): when a step qualifies (`ModelRunner.can_overlap`), the engine launches
it and, while the GPU runs it, finishes the previous step on the host: reads its tokens,
detokenizes, checks stops. The sequences carry a PENDING_TOKEN meanwhile (`Scheduler.advance`),
and the launched step takes those input tokens straight from the previous step's samples on the
device. A sequence that stops one step early has its extra token dropped. The host work of a step
(scheduling, input preparation, output handling) then hides behind the GPU instead of adding to it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from ..tokenizer.tokenizer import IncrementalDecoder, Tokenizer
from .block_manager import BlockManager
from .model_runner import ModelRunner, PendingStep
from .sampler import TokenLogprobs
from .sampling_params import SamplingParams
from .scheduler import Scheduler
from .sequence import Sequence, SequenceStatus


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: str | int | None = None  # the stop string or token that ended it
    logprobs: list[TokenLogprobs] | None = None
    reasoning_content: str | None = None  # filled by LLM.chat
    tool_calls: list | None = None  # filled by LLM.chat

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    num_cached_tokens: int = 0


class _Track:
    """Per-sequence text state: incremental detokenization and stop-string matching."""

    def __init__(self, request_id: str, seq: Sequence, output: CompletionOutput, tokenizer: Tokenizer) -> None:
        self.request_id, self.seq, self.output = request_id, seq, output
        self.decoder = IncrementalDecoder(tokenizer, skip_special_tokens=seq.sampling_params.skip_special_tokens)
        self.full_text = ""  # everything decoded so far, before any hold-back

    def add_token(self, token: int, logprobs: TokenLogprobs | None) -> str | None:
        """Record a token; returns the stop string it completed, if any."""
        self.output.token_ids.append(token)
        if logprobs is not None:
            if self.output.logprobs is None:
                self.output.logprobs = []
            self.output.logprobs.append(logprobs)
        new_text = self.decoder.feed(token)
        self.full_text += new_text
        params = self.seq.sampling_params
        if params.stop and new_text:
            window = len(new_text) + max(map(len, params.stop)) - 1
            tail_start = max(0, len(self.full_text) - window)
            for stop in params.stop:
                at = self.full_text.find(stop, tail_start)
                if at != -1:
                    self.full_text = self.full_text[: at + (len(stop) if params.include_stop_str_in_output else 0)]
                    self.output.text = self.full_text
                    return stop
        self.output.text = self.full_text[: len(self.full_text) - self._held_back()]
        return None

    def _held_back(self) -> int:
        """Length of a trailing partial stop string, kept out of streamed text until decided."""
        longest = 0
        for stop in self.seq.sampling_params.stop:
            for n in range(min(len(stop) - 1, len(self.full_text)), longest, -1):
                if self.full_text.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def finish(self, reason: str, stop_reason: str | int | None = None) -> None:
        self.output.finish_reason = reason
        self.output.stop_reason = stop_reason
        self.output.text = self.full_text


class _Request:
    def __init__(self, request_id: str, prompt: str | None, prompt_ids: list[int], tracks: list[_Track]) -> None:
        self.request_id, self.prompt, self.prompt_ids, self.tracks = request_id, prompt, prompt_ids, tracks

    def output(self) -> RequestOutput:
        return RequestOutput(
            self.request_id, self.prompt, self.prompt_ids, [t.output for t in self.tracks],
            finished=all(t.output.finished for t in self.tracks),
            num_cached_tokens=max(t.seq.num_cached_tokens for t in self.tracks),
        )


class LLMEngine:
    def __init__(self, runner: ModelRunner, tokenizer: Tokenizer, eos_token_ids: list[int], max_model_len: int,
                 max_num_seqs: int = 64, max_num_batched_tokens: int = 2048, enable_prefix_caching: bool = True) -> None:
        self.runner, self.tokenizer = runner, tokenizer
        self.eos_token_ids = frozenset(eos_token_ids)
        self.max_model_len = max_model_len
        self.block_manager = BlockManager(runner.num_blocks, runner.block_size, enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, max_num_seqs, max_num_batched_tokens)
        self.requests: dict[str, _Request] = {}
        self._track_of: dict[int, _Track] = {}
        self._ids = itertools.count()
        # The launched, unread step of overlapped decode: its tokens and the placeholders they fill.
        self._in_flight: tuple[PendingStep, list[tuple[Sequence, int]]] | None = None

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None, request_id: str | None = None) -> str:
        params = params or SamplingParams()
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        text = prompt if isinstance(prompt, str) else None
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"the prompt has {len(ids)} tokens; this model's context is {self.max_model_len}")
        bad = [t for t in ids if not 0 <= t < self.runner.model.args.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary")
        tracks = []
        for index in range(params.n):
            seq = Sequence(ids, params, eos_token_ids=self.eos_token_ids, max_model_len=self.max_model_len)
            seq.sample_index = index
            track = _Track(request_id, seq, CompletionOutput(index), self.tokenizer)
            tracks.append(track)
        for track in tracks:
            self.scheduler.add(track.seq)
            self._track_of[track.seq.seq_id] = track
        self.requests[request_id] = _Request(request_id, text, ids, tracks)
        return request_id

    def abort(self, request_id: str) -> None:
        request = self.requests.pop(request_id, None)
        for track in request.tracks if request else []:
            if not track.output.finished:
                self.scheduler.abort(track.seq.seq_id)
                track.finish("abort")
            self._forget(track.seq.seq_id)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def step(self) -> list[RequestOutput]:
        """Run one scheduler step; returns the outputs of every request that advanced (with
        overlapped decode, the tokens of the step launched before this one)."""
        plan = self.scheduler.schedule()
        if plan.scheduled and self.runner.can_overlap(plan.scheduled):
            previous = self._in_flight[0] if self._in_flight else None
            pending = self.runner.launch(plan.scheduled, previous)
            touched = self._finish_in_flight()
            self._in_flight = (pending, self.scheduler.advance(plan))
            return self._outputs(touched)
        touched = self._finish_in_flight()
        # Sequences that stopped on the step just read leave this one (their blocks are freed).
        plan.scheduled = [s for s in plan.scheduled if s.seq.status is SequenceStatus.RUNNING]
        if plan.scheduled:
            results = self.runner.run(plan.scheduled)
            touched.update(self._apply(self.scheduler.advance(plan), results))
        return self._outputs(touched)

    def _finish_in_flight(self) -> dict[str, None]:
        if self._in_flight is None:
            return {}
        pending, placeholders = self._in_flight
        self._in_flight = None
        return self._apply(placeholders, pending.result())

    def _apply(self, placeholders: list[tuple[Sequence, int]],
               results: dict[int, tuple[int, TokenLogprobs | None]]) -> dict[str, None]:
        """Fill in a step's sampled tokens: stops, detokenization, stop strings. Returns the ids of
        the requests that advanced, in order."""
        touched: dict[str, None] = {}
        for seq, index in placeholders:
            track = self._track_of.get(seq.seq_id)
            if track is None:
                continue  # aborted while its step ran
            token, logprobs = results[seq.seq_id]
            ended = self.scheduler.resolve(seq, index, token)
            stop = track.add_token(token, logprobs)
            if stop is not None:  # a stop string wins over EOS or length in the same step: the text was cut there
                if not ended:
                    self.scheduler.finish(seq, "stop")
                track.finish("stop", stop)
            elif ended:
                track.finish(seq.finish_reason, token if seq.finish_reason == "stop" else None)
            touched[track.request_id] = None
        return touched

    def _outputs(self, touched: dict[str, None]) -> list[RequestOutput]:
        outputs = []
        for request_id in touched:
            request = self.requests[request_id]
            out = request.output()
            outputs.append(out)
            if out.finished:
                for track in request.tracks:
                    self._forget(track.seq.seq_id)
                del self.requests[request_id]
        return outputs

    def _forget(self, seq_id: int) -> None:
        self._track_of.pop(seq_id, None)
        self.runner.release(seq_id)
