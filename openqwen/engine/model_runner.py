"""The model runner: the only engine part that touches tensors.

It owns the paged KV cache, turns a scheduled step into flat input tensors plus one
AttentionContext, runs the model, and samples the rows that need a token.

On CUDA it also sets up the fast path: q/k/v and gate/up weights packed into single GEMMs
(`layers.fused.pack_model`), Triton kernels inside the layers, and decode-only steps replayed from
CUDA graphs (`cuda_graphs.DecodeGraphs`). Host-to-device copies go through pinned memory without
blocking, so the only synchronization of a step is the sampler's one transfer of its tokens. Such a
graphed decode step can also be launched without waiting for it (`launch`, for the engine's
overlapped decode): its input tokens may still be in flight, read on the device from the previous
launched step's samples, and its own tokens come back through a `PendingStep`.

On the CPU, decode-only steps of dense models with quantized weights run all their layers in one
native call (`kernels.native_decode`); other steps run the model's PyTorch modules. Steps that need
only the top-k logits (greedy, top-k sampling) read the output head through `kernels.proxy_head`
where the checkpoint holds a coarse copy of it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..kernels.native_decode import NativeDecoder
from ..kernels.proxy_head import ProxyHead
from ..kernels.huge_pages import HugePageArena
from ..kernels.quant import DENSE_MIN_ROWS, place_native_weights
from ..layers.attention import FP8, Attention, AttentionContext, check_kv_cache_dtype, fast_path
from .sampler import SampleRequest, TokenLogprobs, choose_on_device, moved_tokens, sample
from .scheduler import ScheduledSeq
from .sequence import PENDING_TOKEN


@dataclass
class PendingStep:
    """A launched decode step whose tokens are on their way to pinned host memory."""

    seq_ids: list[int]
    row_of: dict[int, int]  # seq_id -> row of its token in the step's device samples
    host_tokens: torch.Tensor
    copied: torch.cuda.Event | None  # None: the copy was synchronous (CPU tests)

    def result(self) -> dict[int, tuple[int, TokenLogprobs | None]]:
        if self.copied is not None:
            self.copied.synchronize()
        return {seq_id: (token, None) for seq_id, token in zip(self.seq_ids, self.host_tokens.tolist())}


def kv_bytes_per_token(model: nn.Module, dtype: torch.dtype, kv_cache_dtype: str = "auto") -> int:
    """Cache bytes per token: K and V rows of every layer, plus with fp8 one fp32 scale per row."""
    a = model.args
    row = a.head_dim * dtype.itemsize if kv_cache_dtype == "auto" else a.head_dim * FP8.itemsize + 4
    return 2 * a.num_hidden_layers * a.num_key_value_heads * row


def _graph_safe(model: nn.Module) -> bool:
    """Routed MoE layers read expert counts on the host every step, which a graph cannot hold."""
    from ..layers.mlp import SparseMoE

    return not any(isinstance(m, SparseMoE) for m in model.modules())


class ModelRunner:
    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype, block_size: int, num_blocks: int,
                 *, kv_cache_dtype: str = "auto", use_cuda_graphs: bool | None = None, max_graph_batch: int = 512,
                 release_pages: Callable[[torch.Tensor], None] | None = None) -> None:
        """`kv_cache_dtype`: "auto" (the model dtype) or "fp8" (e4m3 with a scale per token and KV
        head; see layers/attention.py). `use_cuda_graphs`: None means on for CUDA unless
        OPENQWEN_ENFORCE_EAGER=1. It can also be switched later through the attribute of the same
        name. `release_pages(t)` drops the resident pages of a memory-mapped weight (see
        ProxyHead.build)."""
        check_kv_cache_dtype(kv_cache_dtype)
        self.model, self.device, self.dtype = model, device, dtype
        self.block_size, self.num_blocks = block_size, num_blocks
        args = model.args
        # One allocation for every layer: [layers, 2, blocks, block_size, Hkv, d]. On the CPU the
        # pages are only committed when written, so an ample cache costs memory only as it fills.
        shape = (args.num_hidden_layers, 2, num_blocks, block_size, args.num_key_value_heads)
        fp8 = kv_cache_dtype == "fp8"
        self.kv_cache = torch.empty(*shape, args.head_dim, dtype=FP8 if fp8 else dtype, device=device)
        self.kv_scales = torch.empty(shape, dtype=torch.float32, device=device) if fp8 else None
        layers = [m for m in model.modules() if isinstance(m, Attention)]
        for i, layer in enumerate(layers):
            layer.k_cache, layer.v_cache = self.kv_cache[i, 0], self.kv_cache[i, 1]
            if fp8:
                layer.k_scale, layer.v_scale = self.kv_scales[i, 0], self.kv_scales[i, 1]
        self.generators: dict[int, torch.Generator] = {}

        self.fast = fast_path(self.kv_cache)
        self.graphs = None
        self._num_sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8
        if self.fast:
            from ..layers import fused

            fused.pack_model(model)
            if use_cuda_graphs is None:
                use_cuda_graphs = os.environ.get("OPENQWEN_ENFORCE_EAGER", "") in ("", "0")
            if device.type == "cuda" and _graph_safe(model):
                from .cuda_graphs import DecodeGraphs

                max_blocks = min(num_blocks, -(-args.max_position_embeddings // block_size))
                self.graphs = DecodeGraphs(self._logits_of, device, block_size, max_blocks, max_graph_batch,
                                           self._decode_splits)
        self.use_cuda_graphs = bool(use_cuda_graphs) and self.graphs is not None
        # Overlapped decode (see llm_engine): graphed decode steps launch before the previous
        # step's tokens are read. A switch for comparisons; on wherever CUDA graphs are.
        self.overlap_decode = device.type == "cuda"
        # CPU with quantized kernels: the matmuls run on the kernels' own thread pool, and PyTorch's
        # OpenMP workers spinning beside it on the same cores made decode ~10x and a short prefill
        # ~9x slower (measured on 2 cores). Small steps therefore run PyTorch's remaining ops
        # (attention, norms) on the calling thread; steps of DENSE_MIN_ROWS tokens or more use
        # PyTorch's sgemm on dequantized weights, with all its threads.
        from ..kernels.quant import QuantLinear, native_available

        self.torch_single_thread = (device.type == "cpu" and native_available()
                                    and any(isinstance(m, QuantLinear) for m in model.modules()))
        # The weights each decode step streams whole go on huge pages (kernels/huge_pages.py), before
        # the native decoder takes their addresses: the layers, then the head the step reads
        # (the proxy head's coarse copy, or the whole head).
        arena = HugePageArena() if self.torch_single_thread else None
        layers = getattr(getattr(model, "model", None), "layers", None)
        if arena is not None and layers is not None:
            place_native_weights(layers.modules(), arena, release_pages)
        self.proxy_head = ProxyHead.build(model, release_pages, arena) if device.type == "cpu" else None
        if arena is not None and self.proxy_head is None:
            place_native_weights([getattr(model, "lm_head", None)], arena, release_pages)
        # Decode-only steps of dense quantized models run all layers in one native call.
        self.native_decoder = NativeDecoder.build(model) if device.type == "cpu" else None
        if fp8 and self.torch_single_thread:
            logging.getLogger(__name__).warning("kv_cache_dtype fp8 on the CPU: decode runs on the PyTorch path, "
                                                "not the native decode step (half the cache memory, slower decode)")

    # -- inputs ----------------------------------------------------------------------------------
    def _tensor(self, values: list, dtype: torch.dtype = torch.long) -> torch.Tensor:
        if self.device.type == "cpu":
            return torch.tensor(values, dtype=dtype)
        return torch.tensor(values, dtype=dtype, pin_memory=True).to(self.device, non_blocking=True)

    def _decode_splits(self, batch: int) -> int:
        if not self.fast:
            return 1
        from ..layers.triton_attention import choose_num_splits

        return choose_num_splits(batch, self.model.args.num_key_value_heads, self._num_sms)

    def _prepare(self, batch: list[ScheduledSeq]) -> tuple[torch.Tensor, torch.Tensor, AttentionContext]:
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_lens, context_lens = [], []
        bs = self.block_size
        for item in batch:
            seq = item.seq
            start, end = item.context_len - item.num_new_tokens, item.context_len
            input_ids += seq.token_ids[start:end]
            positions += range(start, end)
            table = seq.block_table
            slots += [table[p // bs] * bs + p % bs for p in range(start, end)]
            query_lens.append(item.num_new_tokens)
            context_lens.append(end)
        width = max(len(item.seq.block_table) for item in batch)
        tables = [item.seq.block_table + [0] * (width - len(item.seq.block_table)) for item in batch]
        ctx = AttentionContext(
            slot_mapping=self._tensor(slots),
            block_tables=self._tensor(tables, torch.int32 if self.fast else torch.long),
            context_lens=self._tensor(context_lens),
            query_lens=query_lens,
            context_lens_host=context_lens,
            block_size=bs,
        )
        if self.fast:
            cu = [0]
            for n in query_lens:
                cu.append(cu[-1] + n)
            ctx.cu_query_lens = self._tensor(cu, torch.int32)
            ctx.max_query_len = max(query_lens)
            ctx.decode_splits = self._decode_splits(len(batch))
        return self._tensor(input_ids), self._tensor(positions), ctx

    # -- steps -----------------------------------------------------------------------------------
    def _logits_of(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        return self.model.compute_logits(self.model(input_ids, positions, ctx))

    def _use_graph(self, batch: list[ScheduledSeq]) -> bool:
        return (self.use_cuda_graphs and all(item.num_new_tokens == 1 for item in batch)
                and self.graphs.can_run(len(batch), max(len(item.seq.block_table) for item in batch)))

    def _replay_decode(self, batch: list[ScheduledSeq], previous: PendingStep | None = None) -> torch.Tensor:
        """Logits [B, V] of a decode-only step from the CUDA graph of its padded size. An input
        token still pending is read on the device from `previous`'s samples."""
        bs = self.block_size
        ids, sources, positions, slots, lens, tables = [], [], [], [], [], []
        for item in batch:
            seq, pos = item.seq, item.context_len - 1
            table = seq.block_table
            token = seq.token_ids[pos]
            ids.append(max(token, 0))
            sources.append(previous.row_of[seq.seq_id] if token == PENDING_TOKEN else -1)
            positions.append(pos)
            slots.append(table[pos // bs] * bs + pos % bs)
            lens.append(item.context_len)
            tables.append(table)
        return self.graphs.replay(ids, positions, slots, lens, tables, sources)

    def can_overlap(self, batch: list[ScheduledSeq]) -> bool:
        """Whether this step can be launched before the previous one's tokens are read: a graphed
        CUDA decode step whose sampling needs no token history on the host (penalties, logits
        processors) and returns no logprobs."""
        if not self.overlap_decode or self.graphs is None or not self._use_graph(batch):
            return False
        return all(item.needs_sample and not item.seq.sampling_params.has_penalties
                   and not item.seq.sampling_params.logits_processors and item.seq.sampling_params.logprobs is None
                   for item in batch)

    @torch.inference_mode()
    def launch(self, batch: list[ScheduledSeq], previous: PendingStep | None) -> PendingStep:
        """Queue a `can_overlap` step on the GPU and return at once; `result()` waits for its tokens."""
        logits = self._replay_decode(batch, previous)
        seqs = [item.seq for item in batch]
        choice = choose_on_device(logits, [self._sample_request(seq) for seq in seqs])
        self.graphs.last_tokens[:len(seqs)].copy_(choice)  # the next launched step's pending inputs
        cuda = self.device.type == "cuda"
        host = torch.empty(len(seqs), dtype=torch.long, pin_memory=cuda)
        host.copy_(choice, non_blocking=cuda)
        copied = torch.cuda.Event() if cuda else None
        if copied is not None:
            copied.record()
        return PendingStep([seq.seq_id for seq in seqs], {seq.seq_id: row for row, seq in enumerate(seqs)}, host, copied)

    @torch.inference_mode()
    def capture_cuda_graphs(self, max_batch: int) -> None:
        """Capture the decode graphs for batch sizes up to max_batch now rather than on first use."""
        if self.graphs is not None and self.use_cuda_graphs:
            self.graphs.capture(max_batch)

    def run(self, batch: list[ScheduledSeq]) -> dict[int, tuple[int, TokenLogprobs | None]]:
        """Run one step; returns seq_id -> (sampled token, logprobs) for rows that needed a sample."""
        if not self.torch_single_thread or sum(item.num_new_tokens for item in batch) >= DENSE_MIN_ROWS:
            return self._run(batch)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._run(batch)
        finally:
            torch.set_num_threads(threads)

    @torch.inference_mode()
    def _run(self, batch: list[ScheduledSeq]) -> dict[int, tuple[int, TokenLogprobs | None]]:
        if not batch:
            return {}
        rows = [i for i, item in enumerate(batch) if item.needs_sample]
        sampled = [batch[i].seq for i in rows]
        requests = [self._sample_request(seq) for seq in sampled]
        if self.graphs is not None and self._use_graph(batch):
            logits = self._replay_decode(batch)
            if not rows:
                return {}
            if len(rows) < len(batch):
                logits = logits[self._tensor(rows)]
        else:
            input_ids, positions, ctx = self._prepare(batch)
            if self.native_decoder is not None and ctx.decode_only:
                hidden = self.native_decoder(input_ids, positions, ctx)
            else:
                hidden = self.model(input_ids, positions, ctx)
            if not rows:
                return {}
            if len(rows) < hidden.shape[0]:  # prefill chunks, or rows that need no token
                offsets, last_rows = 0, []
                for item in batch:
                    offsets += item.num_new_tokens
                    last_rows.append(offsets - 1)
                hidden = hidden[self._tensor([last_rows[i] for i in rows])]
            logits = self._logits(hidden, requests)
        tokens, logprobs = sample(logits, requests)
        return {seq.seq_id: (tok, lp) for seq, tok, lp in zip(sampled, tokens, logprobs)}

    def _logits(self, hidden: torch.Tensor, requests: list[SampleRequest]) -> torch.Tensor:
        """The rows' logits; through the proxy head when the sampler needs only the top k."""
        k = ProxyHead.top_k([r.params for r in requests]) if self.proxy_head is not None else None
        if k is None:
            return self.model.compute_logits(hidden)
        return self.proxy_head(hidden, k, moved_tokens(requests))

    @torch.inference_mode()
    def score(self, token_ids: list[int]) -> torch.Tensor:
        """fp32 logits [T, V] of every position of one sequence, bypassing the KV cache (tests,
        perplexity)."""
        n = len(token_ids)
        ctx = AttentionContext(None, torch.zeros(1, 1, dtype=torch.long, device=self.device),
                               torch.tensor([n], device=self.device), [n], [n], self.block_size)
        ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)
        return self.model.compute_logits(self.model(ids, torch.arange(n, device=self.device), ctx))

    def _sample_request(self, seq) -> SampleRequest:
        return SampleRequest(seq.sampling_params, seq.token_ids, seq.num_prompt_tokens, self._generator(seq),
                             self._seed(seq), seq.eos_token_ids)

    @staticmethod
    def _seed(seq) -> int | None:
        seed = seq.sampling_params.seed
        if seed is None or seq.sampling_params.greedy:
            return None
        return seed + getattr(seq, "sample_index", 0)

    def _generator(self, seq) -> torch.Generator | None:
        seed = seq.sampling_params.seed
        if seed is None or seq.sampling_params.greedy or (self.fast and self.device.type == "cuda"):
            return None  # greedy, unseeded, or the CUDA sampler, whose noise is keyed on _seed
        if seq.seq_id not in self.generators:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(seed + getattr(seq, "sample_index", 0))
            self.generators[seq.seq_id] = gen
        return self.generators[seq.seq_id]

    def release(self, seq_id: int) -> None:
        self.generators.pop(seq_id, None)
