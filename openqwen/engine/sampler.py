"""Sampling: logits of a batch of sequences -> one token each, plus optional logprobs.

Order, as in vLLM: penalties on the raw logits; greedy rows take the argmax; the rest are divided by
their temperature, then top-k, top-p and min-p filter the distribution before a draw. Logprobs are
reported from the raw (unprocessed) logits, vLLM's default. Rows with a seed draw from their own
generator so a seeded request is reproducible whatever else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sampling_params import SamplingParams


@dataclass
class SampleRequest:
    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    generator: torch.Generator | None  # set when the request has a seed


@dataclass
class TokenLogprobs:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # the k most likely tokens with their logprobs, best first


def apply_penalties(logits: torch.Tensor, requests: list[SampleRequest]) -> None:
    """In place. Repetition penalty over prompt and output tokens (divide positive logits, multiply
    negative ones); presence and frequency penalties over output tokens only (OpenAI semantics)."""
    for row, req in enumerate(requests):
        p = req.params
        if not p.has_penalties:
            continue
        line = logits[row]
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(req.prompt_token_ids) | set(req.output_token_ids)), dtype=torch.long, device=line.device)
            values = line[seen]
            line[seen] = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
        if req.output_token_ids and (p.presence_penalty or p.frequency_penalty):
            ids, counts = torch.tensor(req.output_token_ids, device=line.device).unique(return_counts=True)
            line[ids] -= p.presence_penalty + p.frequency_penalty * counts.to(line.dtype)


def _filter(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Mask tokens outside top-k / top-p / min-p with -inf; per-row parameters [B]."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    vocab = logits.shape[-1]
    ranks = torch.arange(vocab, device=logits.device)[None, :]
    k = torch.where(top_k > 0, top_k, vocab)[:, None]
    drop = ranks >= k
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
    # top-p: keep the smallest prefix whose mass reaches p (the token that crosses p is kept)
    drop |= (probs.cumsum(dim=-1) - probs) >= top_p[:, None]
    drop |= probs < min_p[:, None] * probs[:, :1]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def sample(logits: torch.Tensor, requests: list[SampleRequest]) -> tuple[list[int], list[TokenLogprobs | None]]:
    """logits [B, V] fp32 -> (token ids, logprobs per row or None)."""
    raw_logprobs = None
    if any(r.params.logprobs is not None for r in requests):
        raw_logprobs = logits.log_softmax(dim=-1)
    apply_penalties(logits, requests)
    tokens = logits.argmax(dim=-1)
    random_rows = [i for i, r in enumerate(requests) if not r.params.greedy]
    if random_rows:
        rows = torch.tensor(random_rows, device=logits.device)
        params = [requests[i].params for i in random_rows]
        temperature = torch.tensor([p.temperature for p in params], device=logits.device)
        scaled = logits[rows] / temperature[:, None]
        needs_filter = any(p.top_k or p.top_p < 1 or p.min_p > 0 for p in params)
        if needs_filter:
            scaled = _filter(
                scaled,
                torch.tensor([p.top_k for p in params], device=logits.device),
                torch.tensor([p.top_p for p in params], device=logits.device),
                torch.tensor([p.min_p for p in params], device=logits.device),
            )
        probs = scaled.softmax(dim=-1)
        drawn = _draw(probs, [requests[i].generator for i in random_rows])
        tokens[rows] = drawn
    token_list = tokens.tolist()
    return token_list, _logprobs(raw_logprobs, token_list, requests)


def _draw(probs: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    if all(g is None for g in generators):
        return torch.multinomial(probs, 1).squeeze(-1)
    return torch.cat([torch.multinomial(probs[i:i + 1], 1, generator=g).squeeze(-1) for i, g in enumerate(generators)])


def _logprobs(raw: torch.Tensor | None, tokens: list[int], requests: list[SampleRequest]) -> list[TokenLogprobs | None]:
    if raw is None:
        return [None] * len(tokens)
    out: list[TokenLogprobs | None] = []
    for row, (token, req) in enumerate(zip(tokens, requests)):
        k = req.params.logprobs
        if k is None:
            out.append(None)
            continue
        top: list[tuple[int, float]] = []
        if k:
            values, ids = raw[row].topk(k)
            top = list(zip(ids.tolist(), values.tolist()))
        out.append(TokenLogprobs(token, raw[row, token].item(), top))
    return out
