"""The proxy output head (openqwen/kernels/proxy_head.py): exact logits for every token that can be
among the top k, -inf elsewhere, so greedy decoding and top-k sampling see what the full head gives.

The reference is the full quantized head (QuantLinear), whose per-row results the proxy must
reproduce bit for bit; the engine tests compare whole generations with the proxy switched off.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize as gguf_dequantize
from torch import nn

from gguf_fixtures import write_tiny_gguf
from openqwen import LLM, SamplingParams
from openqwen.kernels.proxy_head import MAX_CANDIDATE_SHARE, ProxyHead
from openqwen.kernels.quant import QuantLinear, native_available
from openqwen.kernels.quant_embedding import QuantEmbedding
from openqwen.weights.gguf import GGUFFile

pytestmark = pytest.mark.skipif(not native_available(), reason="the native extension was not built")

VOCAB, DIM = 2048, 512


class HeadModel(nn.Module):
    """The two attributes ProxyHead.build looks at: lm_head and model.embed_tokens."""

    def __init__(self, head: QuantLinear, embed: QuantLinear) -> None:
        super().__init__()
        self.lm_head = head
        self.model = nn.Module()
        self.model.embed_tokens = QuantEmbedding(embed, torch.float32)


def matrix(seed: int = 0) -> torch.Tensor:
    """A random vocabulary matrix in which 50 tokens also share one direction, so that a hidden
    state along it makes them likely, as a language model's hidden states do (for random hidden
    states every token has about the same logit, and no head could skip any)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(VOCAB, DIM, generator=g) * 0.02
    w[torch.randperm(VOCAB, generator=g)[:50]] += torch.linspace(0.1, 0.2, 50)[:, None] * direction()
    return w


def direction() -> torch.Tensor:
    u = torch.randn(DIM, generator=torch.Generator().manual_seed(99))
    return u / u.norm()


def pair(exact: Q, coarse: Q, seed: int = 0) -> tuple[QuantLinear, QuantLinear]:
    """One matrix quantized twice, as the default model's output head and embedding."""
    w = matrix(seed)
    return QuantLinear.from_float(w, exact), QuantLinear.from_float(w, coarse)


def hidden_states(rows: int, seed: int = 1) -> torch.Tensor:
    """Along the likely tokens' direction (logits 10 to 20 for them, about N(0, 2) for the rest),
    plus noise and four large channels, as Qwen's final hidden states have."""
    g = torch.Generator().manual_seed(seed)
    x = 100 * direction() + torch.randn(rows, DIM, generator=g) * 0.5
    x[:, :4] += 30
    return x


# (head, embedding): the default model's pair; a coarser one; a head the kernels read from their own
# layout (Q5_0); activations quantized in blocks of 32 for the head and 256 for the embedding.
PAIRS = [(Q.Q8_0, Q.Q5_0), (Q.Q8_0, Q.Q4_0), (Q.Q5_0, Q.Q4_K), (Q.Q8_0, Q.Q4_K)]


@pytest.mark.parametrize("exact,coarse", PAIRS, ids=[f"{e.name}-{c.name}" for e, c in PAIRS])
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("k", [1, 7, 20])  # 20: the top_k of Qwen's generation configs
def test_top_k_equals_the_full_head(exact, coarse, rows, k):
    head, embed = pair(exact, coarse)
    proxy = ProxyHead.build(HeadModel(head, embed))
    assert proxy is not None
    x = hidden_states(rows)
    full, logits = head(x), proxy(x, k)
    found = torch.isfinite(logits)
    assert torch.equal(logits[found], full[found])  # the same numbers, not merely close ones
    assert found.any(0).sum() < MAX_CANDIDATE_SHARE * VOCAB  # it pruned rather than fell back
    assert torch.equal(logits.topk(k).values, full.topk(k).values)
    assert torch.equal(logits.argmax(1), full.argmax(1))


def test_relaid_head_under_the_portable_kernels():
    """A Q5_0 head is read from its re-laid copy; the portable kernels have no kernel for that layout
    and unpack it, for the candidate rows as for the full head."""
    from openqwen.kernels import quant

    head, embed = pair(Q.Q5_0, Q.Q4_K)
    proxy = ProxyHead.build(HeadModel(head, embed))
    x = hidden_states(2)
    head(x)  # the layout is chosen at the first use, under the SIMD kernels, and sticks
    simd = quant._native.isa()
    try:
        quant._native.set_isa("scalar")
        full, logits = head(x), proxy(x, 7)
    finally:
        quant._native.set_isa(simd)
    found = torch.isfinite(logits)
    assert found.any(0).sum() < MAX_CANDIDATE_SHARE * VOCAB
    assert torch.equal(logits[found], full[found])
    assert torch.equal(logits.topk(7).values, full.topk(7).values)


def test_exempt_tokens_are_always_computed():
    head, embed = pair(Q.Q8_0, Q.Q5_0)
    proxy = ProxyHead.build(HeadModel(head, embed))
    x = hidden_states(2)
    full = head(x)
    lowest = full[0].argsort()[:5].tolist()  # far below any top-k
    logits = proxy(x, 1, lowest)
    assert torch.equal(logits[:, lowest], full[:, lowest])
    assert torch.equal(logits.argmax(1), full.argmax(1))


def test_no_pruning_falls_back_to_the_full_head():
    head, embed = pair(Q.Q8_0, Q.Q5_0)
    proxy = ProxyHead.build(HeadModel(head, embed))
    x = torch.zeros(1, DIM)  # every logit 0: every token is tied for first
    assert torch.equal(proxy(x, 1), head(x))


def test_changed_weights_use_the_full_head():
    """The bounds hold for the weights they were taken from; after a write, every token is computed."""
    head, embed = pair(Q.Q8_0, Q.Q5_0)
    proxy = ProxyHead.build(HeadModel(head, embed))
    x = hidden_states(1)
    assert torch.isinf(proxy(x, 1)).any()
    embed.qweight.copy_(embed.qweight.roll(1, 0))  # other rows, still valid blocks
    assert torch.equal(proxy(x, 1), head(x))


def test_built_only_for_a_smaller_copy_of_the_same_matrix():
    head, embed = pair(Q.Q8_0, Q.Q5_0)
    _, unrelated = pair(Q.Q8_0, Q.Q5_0, seed=5)
    assert ProxyHead.build(HeadModel(head, unrelated)) is None
    assert ProxyHead.build(HeadModel(embed, head)) is None  # the "coarse" copy is the larger one
    assert ProxyHead.build(HeadModel(head, head)) is None  # tied: one matrix


def test_which_batches_need_only_the_top_k():
    greedy, top20 = SamplingParams(temperature=0), SamplingParams(temperature=0.7, top_k=20)
    assert ProxyHead.top_k([greedy]) == 1
    assert ProxyHead.top_k([greedy, top20]) == 20
    assert ProxyHead.top_k([SamplingParams(temperature=0.7)]) is None  # the whole distribution
    assert ProxyHead.top_k([SamplingParams(temperature=0, logprobs=2)]) is None
    assert ProxyHead.top_k([SamplingParams(temperature=0.7, top_k=1000)]) is None


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    path = tmp_path_factory.mktemp("proxy") / "m.gguf"
    write_tiny_gguf(path, arch="qwen2", qtype=Q.Q8_0, embed_qtype=Q.Q5_0)
    return LLM(str(path), device="cpu", block_size=4, max_model_len=128, kv_cache_gb=0.01)


# Small top-k: the tiny random model's logits are flat, where a large k would need every token.
PARAMS = [
    SamplingParams(temperature=0, max_tokens=24, ignore_eos=True),
    SamplingParams(temperature=0.8, top_k=3, top_p=0.9, seed=3, max_tokens=24, ignore_eos=True),
    SamplingParams(temperature=0.7, top_k=2, repetition_penalty=1.3, presence_penalty=0.5, seed=4,
                   max_tokens=24, min_tokens=20),
]


@pytest.mark.parametrize("params", PARAMS, ids=["greedy", "top-k", "penalties"])
def test_generation_is_unchanged(tiny_llm, params):
    runner = tiny_llm.engine.runner
    proxy = runner.proxy_head
    assert proxy is not None
    prompts = [[10, 20, 30, 40, 50], [7, 7, 7], [100 + i for i in range(12)]]
    pruned = []  # per call: whether some tokens were skipped (rather than the full head run)

    def counted(*args):
        logits = proxy(*args)
        pruned.append(bool(torch.isinf(logits).any()))
        return logits

    runner.proxy_head = counted
    try:
        with_proxy = tiny_llm.generate(prompts, params)
    finally:
        runner.proxy_head = None
    try:
        reference = tiny_llm.generate(prompts, params)
    finally:
        runner.proxy_head = proxy
    assert sum(pruned) >= len(pruned) / 4, pruned  # the rest ran the full head
    assert [o.outputs[0].token_ids for o in with_proxy] == [o.outputs[0].token_ids for o in reference]


def test_release_pages_keeps_the_bytes(tmp_path):
    tiny = write_tiny_gguf(tmp_path / "m.gguf", arch="qwen2", qtype=Q.Q8_0)
    f = GGUFFile(tiny.path)
    tensors = {t.name: t for t in f.tensors()}
    view = torch.from_numpy(np.asarray(tensors["lm_head.weight"].raw))
    before = view.clone()
    f.release_pages(view)
    assert torch.equal(view, before)  # paged in again from the file
    written = torch.from_numpy(np.asarray(tensors["model.embed_tokens.weight"].raw))
    written[:] = 7
    f.release_pages(written)  # a written view keeps what was written
    assert bool((written == 7).all())


def test_embedding_reads_the_kernels_copy(tmp_path):
    """The proxy head re-lays the coarse table for the kernels (Q5_0 under AVX2) and releases its
    GGUF pages; lookups (prefill, and the native decode step) then read that copy, not the file."""
    path = tmp_path / "m.gguf"
    write_tiny_gguf(path, arch="qwen2", qtype=Q.Q8_0, embed_qtype=Q.Q5_0)
    llm = LLM(str(path), device="cpu", block_size=4, max_model_len=64, kv_cache_gb=0.01)
    embed = llm.engine.runner.model.model.embed_tokens
    if not embed.table.has_packed_copy():
        pytest.skip("these kernels read Q5_0 as is: there is no copy")
    ids = torch.tensor([0, 3, 77, embed.table.out_features - 1])
    expected = torch.from_numpy(gguf_dequantize(embed.table.qweight[ids].numpy(), Q.Q5_0))
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    before = llm.generate([[10, 20, 30]], params)[0].outputs[0].token_ids
    embed.table.qweight.data.zero_()  # behind the version counter: only a read of the GGUF bytes sees it
    assert torch.equal(embed(ids), expected)
    assert llm.generate([[10, 20, 30]], params)[0].outputs[0].token_ids == before
