"""The model runner: the only engine part that touches tensors.

It owns the paged KV cache, turns a scheduled step into flat input tensors plus one
AttentionContext, runs the model, and samples the rows that need a token.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers.attention import Attention, AttentionContext
from .sampler import SampleRequest, TokenLogprobs, sample
from .scheduler import ScheduledSeq


def kv_bytes_per_token(model: nn.Module, dtype: torch.dtype) -> int:
    a = model.args
    return 2 * a.num_hidden_layers * a.num_key_value_heads * a.head_dim * torch.empty(0, dtype=dtype).element_size()


class ModelRunner:
    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype, block_size: int, num_blocks: int) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        self.block_size, self.num_blocks = block_size, num_blocks
        args = model.args
        # One allocation for every layer: [layers, 2, blocks, block_size, Hkv, d]. On the CPU the
        # pages are only committed when written, so an ample cache costs memory only as it fills.
        self.kv_cache = torch.empty(
            args.num_hidden_layers, 2, num_blocks, block_size, args.num_key_value_heads, args.head_dim,
            dtype=dtype, device=device,
        )
        layers = [m for m in model.modules() if isinstance(m, Attention)]
        for i, layer in enumerate(layers):
            layer.k_cache, layer.v_cache = self.kv_cache[i, 0], self.kv_cache[i, 1]
        self.generators: dict[int, torch.Generator] = {}

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
        as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=self.device)  # noqa: E731
        ctx = AttentionContext(
            slot_mapping=as_tensor(slots),
            block_tables=as_tensor(tables),
            context_lens=as_tensor(context_lens),
            query_lens=query_lens,
            context_lens_host=context_lens,
            block_size=bs,
        )
        return as_tensor(input_ids), as_tensor(positions), ctx

    @torch.inference_mode()
    def run(self, batch: list[ScheduledSeq]) -> dict[int, tuple[int, TokenLogprobs | None]]:
        """Run one step; returns seq_id -> (sampled token, logprobs) for rows that needed a sample."""
        if not batch:
            return {}
        input_ids, positions, ctx = self._prepare(batch)
        hidden = self.model(input_ids, positions, ctx)
        last_rows, sampled = [], []
        offset = 0
        for item in batch:
            offset += item.num_new_tokens
            if item.needs_sample:
                last_rows.append(offset - 1)
                sampled.append(item.seq)
        if not sampled:
            return {}
        logits = self.model.compute_logits(hidden[torch.tensor(last_rows, device=hidden.device)])
        requests = [
            SampleRequest(seq.sampling_params, seq.prompt_token_ids, seq.completion_token_ids, self._generator(seq))
            for seq in sampled
        ]
        tokens, logprobs = sample(logits, requests)
        return {seq.seq_id: (tok, lp) for seq, tok, lp in zip(sampled, tokens, logprobs)}

    @torch.inference_mode()
    def score(self, token_ids: list[int]) -> torch.Tensor:
        """fp32 logits [T, V] of every position of one sequence, bypassing the KV cache (tests,
        perplexity)."""
        n = len(token_ids)
        ctx = AttentionContext(None, torch.zeros(1, 1, dtype=torch.long, device=self.device),
                               torch.tensor([n], device=self.device), [n], [n], self.block_size)
        ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)
        return self.model.compute_logits(self.model(ids, torch.arange(n, device=self.device), ctx))

    def _generator(self, seq) -> torch.Generator | None:
        seed = seq.sampling_params.seed
        if seed is None or seq.sampling_params.greedy:
            return None
        if seq.seq_id not in self.generators:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(seed + getattr(seq, "sample_index", 0))
            self.generators[seq.seq_id] = gen
        return self.generators[seq.seq_id]

    def release(self, seq_id: int) -> None:
        self.generators.pop(seq_id, None)
