"""Sampling: logits of a batch of sequences -> one token each, plus optional logprobs.

Order, as in vLLM: penalties on the raw logits; greedy rows take the argmax; the rest are divided by
their temperature, then top-k, top-p and min-p filter the distribution before a draw. Logprobs are
reported from the raw (unprocessed) logits, vLLM's default. Rows with a seed draw from their own
generator so a seeded request is reproducible whatever else is in the batch.

On a GPU (`sample_on_device`) the same steps run vectorized over the batch with no host sync but
the single transfer of the results: per-row parameters travel in pinned memory without blocking,
and the draw is a Gumbel-max / exponential race (argmax of p / E with E ~ Exp(1), which picks token
i with probability p_i) instead of torch.multinomial: one Triton pass over the logits on CUDA.
Seeded rows key their noise on (seed, number of tokens drawn so far), so they reproduce whatever
else is in the batch. The CPU path draws with torch.multinomial, over the filtered tokens only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..layers.attention import fast_path
from .sampling_params import SamplingParams
from .sequence import TokenHistory


@dataclass
class SampleRequest(TokenHistory):
    """What the sampler needs of one sequence. `token_ids` is the sequence's own list (prompt, then
    output), read and never copied: a request is made for every sequence at every step, and most
    need no more of their history than its length."""

    params: SamplingParams
    token_ids: list[int]
    num_prompt_tokens: int
    generator: torch.Generator | None  # set when the request has a seed
    seed: int | None = None  # the same seed as an integer: the GPU kernel derives its noise from it
    eos_token_ids: frozenset[int] = frozenset()  # banned, with stop_token_ids, until min_tokens


def apply_logits_processors(logits: torch.Tensor, requests: list[SampleRequest]) -> None:
    """In place: user/grammar processors, then the min_tokens ban on EOS and stop tokens."""
    for row, req in enumerate(requests):
        for processor in req.params.logits_processors:
            logits[row] = processor(req.completion_token_ids, logits[row])
        if req.num_completion_tokens < req.params.min_tokens:
            banned = [t for t in (*req.eos_token_ids, *req.params.stop_token_ids) if 0 <= t < logits.shape[-1]]
            if banned:
                logits[row, banned] = float("-inf")


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
            seen = torch.tensor(sorted(set(req.prompt_token_ids) | set(req.completion_token_ids)), dtype=torch.long, device=line.device)
            values = line[seen]
            line[seen] = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
        if req.num_completion_tokens and (p.presence_penalty or p.frequency_penalty):
            ids, counts = torch.tensor(req.completion_token_ids, device=line.device).unique(return_counts=True)
            line[ids] -= p.presence_penalty + p.frequency_penalty * counts.to(line.dtype)


def moved_tokens(requests: list[SampleRequest]) -> list[int]:
    """Token ids whose logits apply_logits_processors' bans or apply_penalties may move, in any row
    (a head that computes only the top candidates must compute these too)."""
    ids: set[int] = set()
    for req in requests:
        p = req.params
        if p.repetition_penalty != 1.0:
            ids.update(req.prompt_token_ids, req.completion_token_ids)
        elif p.presence_penalty or p.frequency_penalty:
            ids.update(req.completion_token_ids)
        if req.num_completion_tokens < p.min_tokens:
            ids.update(req.eos_token_ids, p.stop_token_ids)
    return sorted(ids)


def _filter(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor,
            candidates: int | None = None) -> torch.Tensor:
    """Mask tokens outside top-k / top-p / min-p with -inf; per-row parameters [B]."""
    values, ids = _kept(logits, top_k, top_p, min_p, candidates)
    return torch.full_like(logits, float("-inf")).scatter_(-1, ids, values)


TOP_P_WINDOW = 256  # rows without a top-k: the best this many first, the whole sort only if needed


def _kept(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor,
          candidates: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens top-k / top-p / min-p keep, best first: (logits [B, W], token ids [B, W]), W the
    widest row's count, -inf where a row keeps fewer. Every filter keeps a prefix of the sorted row.

    Sorting a 152k vocabulary costs ~15 ms a step on one CPU core, as long as the decode step
    itself, so the rows' best tokens are found with topk where that suffices: the largest top-k
    (`candidates`) when every row has one; else, on the CPU, a window of TOP_P_WINDOW tokens, kept
    when every row drops the window's last token (then it drops everything after it as well)."""
    vocab = logits.shape[-1]
    if candidates is not None and candidates < vocab:
        return _trim(*_kept_among(logits, candidates, top_k, top_p, min_p, whole_rows=False))
    if logits.device.type == "cpu" and TOP_P_WINDOW < vocab and int(top_k.max()) <= TOP_P_WINDOW:
        values, ids, drop = _kept_among(logits, TOP_P_WINDOW, top_k, top_p, min_p, whole_rows=True)
        if bool(drop[:, -1].all()):
            return _trim(values, ids, drop)
    return _trim(*_kept_among(logits, vocab, top_k, top_p, min_p, whole_rows=False))


def _kept_among(logits: torch.Tensor, width: int, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor,
                whole_rows: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's `width` best tokens, sorted: (logits, token ids, which of them the filters drop).
    `whole_rows`: the top-p masses of rows without a top-k are shares of the whole row, not of the
    `width` tokens."""
    vocab = logits.shape[-1]
    if width < vocab:
        sorted_logits, order = logits.topk(width, dim=-1)
    else:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(sorted_logits.shape[-1], device=logits.device)[None, :]
    k = torch.where(top_k > 0, top_k, vocab)[:, None]
    drop = ranks >= k
    kept = sorted_logits.masked_fill(drop, float("-inf"))
    if whole_rows:
        total = torch.where(top_k[:, None] > 0, kept.logsumexp(dim=-1, keepdim=True), logits.logsumexp(dim=-1, keepdim=True))
        probs = (kept - total).exp()
    else:
        probs = kept.softmax(dim=-1)
    # top-p: keep the smallest prefix whose mass reaches p (the token that crosses p is kept); a
    # top-p of 1 is off (rounded cumulative sums reach 1.0 before the last token)
    drop |= ((probs.cumsum(dim=-1) - probs) >= top_p[:, None]) & (top_p[:, None] < 1)
    drop |= probs < min_p[:, None] * probs[:, :1]
    drop[:, 0] = False  # the most likely token always survives (a top_p that rounds to 0 in fp32)
    return sorted_logits, order, drop


def _trim(sorted_logits: torch.Tensor, order: torch.Tensor, drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept prefixes, as wide as the widest (the CPU only: the width costs a host sync)."""
    width = int((~drop).sum(dim=-1).max()) if drop.device.type == "cpu" else drop.shape[-1]
    return sorted_logits[:, :width].masked_fill(drop[:, :width], float("-inf")), order[:, :width]


def _candidates(params: list[SamplingParams]) -> int | None:
    """The largest top-k when every row has one (see _filter), else None."""
    return max(p.top_k for p in params) if all(p.top_k > 0 for p in params) else None


def sample(logits: torch.Tensor, requests: list[SampleRequest]) -> tuple[list[int], list[TokenLogprobs | None]]:
    """logits [B, V] fp32 -> (token ids, logprobs per row or None)."""
    if logits.is_cuda:
        return sample_on_device(logits, requests)
    raw_logprobs = None
    if any(r.params.logprobs is not None for r in requests):
        raw_logprobs = logits.log_softmax(dim=-1)
    apply_logits_processors(logits, requests)
    apply_penalties(logits, requests)
    tokens = torch.from_numpy(logits.numpy().argmax(axis=-1))  # NumPy's is ~10x faster on one thread
    random_rows = [i for i, r in enumerate(requests) if not r.params.greedy]
    if random_rows:
        rows = torch.tensor(random_rows, device=logits.device)
        params = [requests[i].params for i in random_rows]
        temperature = torch.tensor([p.temperature for p in params], device=logits.device)
        scaled = logits[rows] / temperature[:, None]
        generators = [requests[i].generator for i in random_rows]
        if any(p.top_k or p.top_p < 1 or p.min_p > 0 for p in params):
            # Drawn among the kept tokens only: a multinomial over all 152k costs ~4 ms a row.
            values, ids = _kept(
                scaled,
                torch.tensor([p.top_k for p in params], device=logits.device),
                torch.tensor([p.top_p for p in params], device=logits.device),
                torch.tensor([p.min_p for p in params], device=logits.device),
                _candidates(params),
            )
            drawn = ids.gather(1, _draw(values.softmax(dim=-1), generators)[:, None]).squeeze(1)
        else:
            drawn = _draw(scaled.softmax(dim=-1), generators)
        tokens[rows] = drawn
    token_list = tokens.tolist()
    return token_list, _logprobs(raw_logprobs, token_list, requests)


def _to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small host list -> device tensor without a blocking copy."""
    if device.type == "cpu":
        return torch.tensor(values, dtype=dtype)
    return torch.tensor(values, dtype=dtype, pin_memory=True).to(device, non_blocking=True)


_noise_seeds = random.Random()  # keys for unseeded rows (private: never touches the global RNG)


def _row_key(seed: int, draw: int) -> int:
    """A Philox key for draw number `draw` of a seeded sequence: reproducible, whatever the batch."""
    return (seed * 0x9E3779B97F4A7C15 + draw * 0xBF58476D1CE4E5B9 + 1) % (1 << 63)


def sample_on_device(logits: torch.Tensor, requests: list[SampleRequest]) -> tuple[list[int], list[TokenLogprobs | None]]:
    """The vectorized sampler: same order and semantics as `sample`, one device-to-host transfer.
    On CUDA the draw is one Triton pass over the vocabulary (temperature + Gumbel-max, greedy rows
    included); elsewhere (the tests) the same race in PyTorch ops."""
    params = [r.params for r in requests]
    want_logprobs = any(p.logprobs is not None for p in params)
    raw_logprobs = logits.log_softmax(dim=-1) if want_logprobs else None
    choice = choose_on_device(logits, requests)
    if raw_logprobs is None:
        return choice.tolist(), [None] * len(requests)
    # Tokens, their logprobs and the top-k, packed into one float64 transfer (ids < 2**53 are exact).
    k = max(p.logprobs or 0 for p in params)
    columns = [choice[:, None].double(), raw_logprobs.gather(1, choice[:, None]).double()]
    if k:
        values, ids = raw_logprobs.topk(k, dim=-1)
        columns += [values.double(), ids.double()]
    rows = torch.cat(columns, dim=1).tolist()
    tokens, out = [], []
    for row, p in zip(rows, params):
        token = int(row[0])
        tokens.append(token)
        if p.logprobs is None:
            out.append(None)
            continue
        top = [(int(row[2 + k + j]), row[2 + j]) for j in range(p.logprobs)]
        out.append(TokenLogprobs(token, row[1], top))
    return tokens, out


def choose_on_device(logits: torch.Tensor, requests: list[SampleRequest]) -> torch.Tensor:
    """The sampled token of each row, left on the device: processors, penalties, greedy or
    temperature/filters and the draw. Modifies `logits` in place."""
    device = logits.device
    params = [r.params for r in requests]
    apply_logits_processors(logits, requests)
    apply_penalties(logits, requests)
    greedy = [p.greedy for p in params]
    if all(greedy):
        return logits.argmax(dim=-1)
    temps = [1.0 if g else p.temperature for p, g in zip(params, greedy)]
    scaled = logits
    if any(p.top_k or p.top_p < 1 or p.min_p > 0 for p, g in zip(params, greedy) if not g):
        scaled = _filter(logits / _to_device(temps, logits.dtype, device)[:, None],
                         _to_device([p.top_k for p in params], torch.long, device),
                         _to_device([p.top_p for p in params], logits.dtype, device),
                         _to_device([p.min_p for p in params], logits.dtype, device), _candidates(params))
        temps = [1.0] * len(params)
    if fast_path(logits) and logits.is_cuda:
        return _draw_triton(scaled, requests, greedy, temps)
    return _draw_torch(scaled, requests, greedy, temps)


def _draw_triton(scaled: torch.Tensor, requests: list[SampleRequest], greedy: list[bool], temps: list[float]) -> torch.Tensor:
    from .triton_sampler import gumbel_argmax

    base = _noise_seeds.getrandbits(62)
    seeds = [
        _row_key(r.seed, r.num_completion_tokens) if r.seed is not None else base + row
        for row, r in enumerate(requests)
    ]
    temperatures = [0.0 if g else t for g, t in zip(greedy, temps)]
    return gumbel_argmax(scaled, _to_device(temperatures, torch.float32, scaled.device),
                         _to_device(seeds, torch.long, scaled.device))


def _draw_torch(scaled: torch.Tensor, requests: list[SampleRequest], greedy: list[bool], temps: list[float]) -> torch.Tensor:
    """The exponential race in PyTorch ops: argmax_i p_i / E_i == argmax_i (x_i / T - log E_i)."""
    device = scaled.device
    if len(set(t for t, g in zip(temps, greedy) if not g)) == 1:  # one temperature: no transfer
        x = scaled / next(t for t, g in zip(temps, greedy) if not g)
    else:
        x = scaled / _to_device(temps, scaled.dtype, device)[:, None]
    noise = torch.empty_like(x).exponential_()
    for row, req in enumerate(requests):
        if req.generator is not None and not greedy[row]:
            noise[row].exponential_(generator=req.generator)
    drawn = (x - noise.clamp_(min=torch.finfo(noise.dtype).tiny).log_()).argmax(dim=-1)
    if not any(greedy):
        return drawn
    return torch.where(_to_device(greedy, torch.bool, device), scaled.argmax(dim=-1), drawn)


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
