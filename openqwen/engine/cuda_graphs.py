"""CUDA graphs of the decode step: one per padded batch size, replayed with fresh inputs.

A decode step at small batch is a few hundred tiny kernels; launching them one by one from Python
costs far more than running them (ASSETS.md: 22 tok/s eager vs 204 tok/s with one graph for plain
PyTorch). A captured graph replays them all with one launch. Graphs need fixed shapes and fixed
addresses, so every input of the step lives in a static device buffer that each replay refills:

    vec    [5, max_batch] int64: input ids, positions, cache slots, context lengths, and source rows
    tables [max_batch, max_blocks] int32: block tables (only the columns in use are refreshed)
    last_tokens [max_batch] int64: the tokens sampled by the previous launched step

A row with a source row s >= 0 takes its input id from last_tokens[s] on the device: overlapped
decode launches a step before the previous step's tokens reach the host (see `llm_engine`).

A batch of n sequences runs the graph of the next captured size >= n; the padding rows get slot -1
(nothing is written to the cache) and context length 0 (the attention kernel reads nothing), so
they cost only their share of the GEMMs. Each graph covers embedding through lm_head: its output
is a static fp32 logits buffer [size, V] that stays valid until the next replay.

Graphs are captured on first use, all sizes up to the one needed at once, largest first, sharing
one memory pool (as nano-vllm does); `capture(max_batch)` warms them ahead of time.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..layers.attention import AttentionContext


def capture_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then every 16 up to max_batch (padding wastes at most 15 rows past 8)."""
    sizes = [s for s in (1, 2, 4, 8) if s < max_batch] + list(range(16, max_batch + 1, 16))
    if not sizes or sizes[-1] < max_batch:
        sizes.append(max_batch)
    return sizes


class DecodeGraphs:
    def __init__(self, forward: Callable[[torch.Tensor, torch.Tensor, AttentionContext], torch.Tensor],
                 device: torch.device, block_size: int, max_blocks: int, max_batch: int,
                 num_splits: Callable[[int], int]) -> None:
        """`forward(input_ids, positions, ctx)` -> logits [B, V]; `num_splits(batch)` -> the
        decode kernel's split-K factor for a graph of that batch size."""
        self.forward, self.device, self.block_size = forward, device, block_size
        self.max_blocks = max_blocks
        self.sizes = capture_sizes(max_batch)
        self.max_batch = self.sizes[-1]
        self.num_splits = num_splits
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool = None
        self.vec: torch.Tensor | None = None
        self.tables: torch.Tensor | None = None
        self.last_tokens: torch.Tensor | None = None
        # Host staging for the inputs, allocated once (pinned on CUDA): a fresh pinned tensor per
        # step cost more host time than the rest of the step's preparation. Two sets, used in
        # turn, so one step's copies may still be pending while the next step fills the other.
        self.staging: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.copied: list[torch.cuda.Event | None] = [None, None]
        self.turn = 0

    def padded_size(self, n: int) -> int:
        return self.sizes[bisect.bisect_left(self.sizes, n)]

    def can_run(self, n: int, widest_table: int) -> bool:
        return 0 < n <= self.max_batch and widest_table <= self.max_blocks

    def _context(self, size: int) -> AttentionContext:
        return AttentionContext(
            slot_mapping=self.vec[2, :size], block_tables=self.tables[:size], context_lens=self.vec[3, :size],
            query_lens=[1] * size, context_lens_host=[1] * size, block_size=self.block_size,
            max_query_len=1, decode_splits=self.num_splits(size),
        )

    def capture(self, upto: int) -> None:
        """Capture every size up to padded_size(upto) that is not captured yet, largest first."""
        if self.vec is None:
            self.vec = torch.zeros(5, self.max_batch, dtype=torch.long, device=self.device)
            self.tables = torch.zeros(self.max_batch, self.max_blocks, dtype=torch.int32, device=self.device)
            self.last_tokens = torch.zeros(self.max_batch, dtype=torch.long, device=self.device)
            pinned = self.device.type == "cuda"
            self.staging = [(torch.zeros(5, self.max_batch, dtype=torch.long, pin_memory=pinned),
                             torch.zeros(self.max_batch * self.max_blocks, dtype=torch.int32, pin_memory=pinned))
                            for _ in range(2)]
        todo = [s for s in self.sizes if s <= self.padded_size(min(upto, self.max_batch)) and s not in self.graphs]
        if not todo:
            return
        self.vec.zero_()
        self.vec[2].fill_(-1)  # no cache writes while warming up and capturing
        self.vec[4].fill_(-1)
        for size in reversed(todo):
            self.graphs[size], self.outputs[size] = self._capture_one(size)

    def _step(self, size: int) -> torch.Tensor:
        """The captured work: input ids (given, or sampled by the previous step), then the model."""
        sources = self.vec[4, :size]
        ids = torch.where(sources >= 0, self.last_tokens[sources.clamp(min=0)], self.vec[0, :size])
        return self.forward(ids, self.vec[1, :size], self._context(size))

    def _capture_one(self, size: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        self._step(size)  # warm-up: compiles kernels, picks GEMM algorithms
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self._step(size)
        torch.cuda.synchronize(self.device)
        if self.pool is None:
            self.pool = graph.pool()
        return graph, out

    def replay(self, input_ids: Sequence[int], positions: Sequence[int], slots: Sequence[int],
               context_lens: Sequence[int], block_tables: Sequence[Sequence[int]],
               sources: Sequence[int] | None = None) -> torch.Tensor:
        """Run the decode step for n sequences; returns logits [n, V] (a view of a static buffer).
        `sources`: per row, the row of `last_tokens` holding its input id, or -1 (default)."""
        n = len(input_ids)
        size = self.padded_size(n)
        if size not in self.graphs:
            self.capture(size)
        self.turn ^= 1
        host_vec, host_tables = self.staging[self.turn]
        if self.copied[self.turn] is not None:
            self.copied[self.turn].synchronize()  # this staging set's last copies are done
        vec = host_vec.numpy()
        vec[0, :n], vec[1, :n], vec[2, :n], vec[3, :n] = input_ids, positions, slots, context_lens
        vec[4, :n] = -1 if sources is None else sources
        vec[:, n:size] = 0
        vec[2, n:size] = -1
        vec[4, n:size] = -1
        self.vec.copy_(host_vec, non_blocking=True)  # whole (10 KiB at most): one contiguous copy
        lens = np.fromiter(map(len, block_tables), dtype=np.int64, count=n)
        width = int(lens.max())
        tables = host_tables[:size * width].view(size, width)
        table_rows = tables.numpy()
        table_rows[:] = 0
        flat = np.fromiter(itertools.chain.from_iterable(block_tables), dtype=np.int32, count=int(lens.sum()))
        table_rows[:n][np.arange(width)[None, :] < lens[:, None]] = flat
        self.tables[:size, :width].copy_(tables, non_blocking=True)
        if self.device.type == "cuda":
            self.copied[self.turn] = self.copied[self.turn] or torch.cuda.Event()
            self.copied[self.turn].record()
        self.graphs[size].replay()
        return self.outputs[size][:n]
