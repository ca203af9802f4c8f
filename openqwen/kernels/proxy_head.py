"""ProxyHead: an exact output head that reads a coarse copy of the vocabulary matrix first.

GGUF files of tied-embedding models (Qwen2.5 0.5B to 3B) often hold the vocabulary matrix twice:
the token embedding in a coarse type (Q5_0 in the default model) and the output head in a finer one
(Q8_0). At batch-1 decode the head is the largest single read, 145 of the 398 MB a token costs the
default model. When only the k most likely tokens matter (greedy decoding, top-k sampling), the
coarse copy finds every token that can be among them, and only those rows of the fine matrix are
read: 95 MB and a few rows instead of 145 MB.

Why this is exact. Row i of the head gives W_i . x (x: the activations as the kernels quantize
them; x' for the coarse type's block size); the coarse copy gives V_i . x'. They differ by at most
    B_i = min(max|W_i - V_i| * |x|_1, |W_i - V_i|_2 * |x|_2) + max|V_i| * |x - x'|_1 + slack_i
(Hoelder, Cauchy-Schwarz; slack_i = 1e-4 (max|W_i| + max|V_i|) |x|_1 covers fp32 rounding in the
kernels and the bound, which is ~1e-6 relative). Let tau be the k-th largest lower bound
V_i . x' - B_i: k tokens have logits >= tau, so a token whose upper bound V_i . x' + B_i is below tau
cannot be among the top k, not even tied. Candidates get their logits from the fine matrix, the very
numbers the full head computes (the kernels work row by row); every other token gets -inf, which
changes neither an argmax nor a top-k draw. Tokens whose logits penalties or bans will move are
always candidates and set no threshold. csrc/proxy_head.cpp does the per-step work in one call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from . import quant
from .huge_pages import HugePageArena
from .quant import DENSE_MIN_ROWS, QuantLinear
from .quant_embedding import QuantEmbedding

MAX_TOP_K = 40  # a larger top-k uses the full head: the candidates grow with k (at 64 no faster)
MAX_CANDIDATE_SHARE = 0.25  # more candidates than this share of the vocabulary: the full head
MAX_RELATIVE_ERROR = 0.1  # a coarse copy further than this from the head (median row, L2) is no proxy
_STATS_ROWS = 16384


class ProxyHead:
    def __init__(self, exact: QuantLinear, coarse: QuantLinear, stats: torch.Tensor) -> None:
        """`stats` [5, V]: proxy_stats' per-row statistics (see csrc/proxy_head.cpp)."""
        self.exact, self.coarse, self.stats = exact, coarse, stats
        self.limits = torch.stack([stats[2].max(), stats[3].max()])  # the largest max|V_i| and slack factor
        self._weights = self._weight_versions()  # the statistics hold for these weights only

    @classmethod
    def build(cls, model: nn.Module, release_pages: Callable[[torch.Tensor], None] | None = None,
              arena: HugePageArena | None = None) -> ProxyHead | None:
        """A proxy head when the model's output head and token embedding are two quantized copies
        of one matrix, the embedding the smaller; else None. `release_pages(t)` drops the resident
        pages of a memory-mapped tensor: afterwards the fine matrix is read only in candidate rows
        and the coarse one from its kernel layout, so neither file copy needs to stay in memory.
        The coarse matrix, read whole every step, goes into `arena` when one is given."""
        head = getattr(model, "lm_head", None)
        embed = getattr(getattr(model, "model", None), "embed_tokens", None)
        if not (quant.native_available() and isinstance(head, QuantLinear) and isinstance(embed, QuantEmbedding)):
            return None
        coarse = embed.table
        if (coarse is head or coarse.out_features != head.out_features or coarse.in_features != head.in_features
                or coarse.qweight.numel() >= head.qweight.numel()):
            return None
        release = release_pages or (lambda t: None)
        vocab = head.out_features
        stats = torch.empty(5, vocab)
        for start in range(0, vocab, _STATS_ROWS):  # a slice at a time, so memory stays flat
            stop = min(start + _STATS_ROWS, vocab)
            quant._native.proxy_stats(head._qtype_id, head.qweight[start].data_ptr(), coarse._qtype_id,
                                      coarse.qweight[start].data_ptr(), stats[0, start:].data_ptr(), vocab,
                                      stop - start, head.in_features)
            release(head.qweight[start:stop])
            release(coarse.qweight[start:stop])
        if stats[1].median() > MAX_RELATIVE_ERROR * stats[4].median():
            return None
        if arena is not None:
            quant.place_native_weights([coarse], arena, release_pages)
        coarse.native_weight()  # the kernel layout now rather than at the first token
        release(coarse.qweight)
        return cls(head, coarse, stats)

    @staticmethod
    def top_k(params: list) -> int | None:
        """The k a batch needs (1 for greedy rows), or None when some row needs every logit:
        sampling without top-k, logprobs, or logits processors."""
        k = 0
        for p in params:
            if p.logprobs is not None or p.logits_processors:
                return None
            row_k = 1 if p.greedy else p.top_k
            if not 0 < row_k <= MAX_TOP_K:
                return None
            k = max(k, row_k)
        return k or None

    def _weight_versions(self) -> tuple:
        return tuple((id(m.qweight), m.qweight._version) for m in (self.exact, self.coarse))

    def __call__(self, hidden: torch.Tensor, k: int, exempt: list[int] = ()) -> torch.Tensor:
        """fp32 logits [T, V]: exact for every token that can be among the top k of its row, and
        for the `exempt` tokens; -inf elsewhere. The full head where that cannot pay off (large
        batches, a wide race) or the weights changed since the statistics were taken."""
        x = hidden.float().contiguous()
        if x.shape[0] >= DENSE_MIN_ROWS or self._weight_versions() != self._weights:
            return self.exact(x)
        vocab, dim = self.exact.out_features, self.exact.in_features
        y = torch.empty(x.shape[0], vocab)
        ids = torch.tensor(exempt, dtype=torch.long)
        coarse_type, coarse_ptr = self.coarse.native_weight()
        exact_type, exact_ptr = self.exact.native_weight()
        found = quant._native.proxy_logits(
            coarse_type, coarse_ptr, exact_type, exact_ptr, self.stats.data_ptr(), self.limits.data_ptr(),
            x.data_ptr(), y.data_ptr(), x.shape[0], vocab, dim, k, ids.data_ptr(), ids.numel(),
            int(MAX_CANDIDATE_SHARE * vocab))
        return y if found > 0 else self.exact(x)
