"""CUDA graphs of the decode step: one per padded batch size, replayed with fresh inputs.

A decode step at small batch is a few hundred tiny kernels; launching them one by one from Python
costs far more than running them (ASSETS.md: 22 tok/s eager vs 204 tok/s with one graph for plain
PyTorch). A captured graph replays them all with one launch. Graphs need fixed shapes and fixed
addresses, so every input of the step lives in a static device buffer that each replay refills:

    vec    [4, max_batch] int64: input ids, positions, cache slots, context lengths
    tables [max_batch, max_blocks] int32: block tables (only the columns in use are refreshed)

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
            self.vec = torch.zeros(4, self.max_batch, dtype=torch.long, device=self.device)
            self.tables = torch.zeros(self.max_batch, self.max_blocks, dtype=torch.int32, device=self.device)
        todo = [s for s in self.sizes if s <= self.padded_size(min(upto, self.max_batch)) and s not in self.graphs]
        if not todo:
            return
        self.vec.zero_()
        self.vec[2].fill_(-1)  # no cache writes while warming up and capturing
        for size in reversed(todo):
            self.graphs[size], self.outputs[size] = self._capture_one(size)

    def _capture_one(self, size: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        ids, positions, ctx = self.vec[0, :size], self.vec[1, :size], self._context(size)
        self.forward(ids, positions, ctx)  # warm-up: compiles kernels, picks GEMM algorithms
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.forward(ids, positions, ctx)
        torch.cuda.synchronize(self.device)
        if self.pool is None:
            self.pool = graph.pool()
        return graph, out

    def replay(self, input_ids: Sequence[int], positions: Sequence[int], slots: Sequence[int],
               context_lens: Sequence[int], block_tables: Sequence[Sequence[int]]) -> torch.Tensor:
        """Run the decode step for n sequences; returns logits [n, V] (a view of a static buffer)."""
        n = len(input_ids)
        size = self.padded_size(n)
        if size not in self.graphs:
            self.capture(size)
        pad = size - n
        pinned = self.device.type == "cuda"
        host = torch.tensor(
            [[*input_ids, *[0] * pad], [*positions, *[0] * pad], [*slots, *[-1] * pad], [*context_lens, *[0] * pad]],
            dtype=torch.long, pin_memory=pinned,
        )
        self.vec[:, :size].copy_(host, non_blocking=True)
        lens = np.fromiter(map(len, block_tables), dtype=np.int64, count=n)
        width = int(lens.max())
        tables = torch.zeros(size, width, dtype=torch.int32, pin_memory=pinned)
        flat = np.fromiter(itertools.chain.from_iterable(block_tables), dtype=np.int32, count=int(lens.sum()))
        tables.numpy()[:n][np.arange(width)[None, :] < lens[:, None]] = flat
        self.tables[:size, :width].copy_(tables, non_blocking=True)
        self.graphs[size].replay()
        return self.outputs[size][:n]
