"""The fp8 KV cache (kv_cache_dtype="fp8") on the PyTorch path: the rounding stays inside e4m3's
bounds, the cache holds about half of bf16's bytes per token, and generating through the cache
computes the same function as scoring the whole text at once, batched or not, with or without a
prefix-cache hit. tests/test_triton_attention.py checks the Triton kernels against the same
`quantize_kv`."""

from __future__ import annotations

import pytest
import torch

from openqwen import LLM, SamplingParams
from openqwen.engine.model_runner import kv_bytes_per_token
from openqwen.layers.attention import FP8_MAX, dequantize_kv, quantize_kv


@pytest.fixture(scope="module")
def model_dir(tiny_qwen3_dir):
    return tiny_qwen3_dir


def load(model_dir, **options) -> LLM:
    return LLM(model_dir, device="cpu", dtype="float32", kv_cache_gb=0.02, kv_cache_dtype="fp8", **options)


def test_quantize_kv_rounding_bound():
    """Each row's largest |value| maps to 448; e4m3 has 3 mantissa bits, so every element lands
    within 2^-4 of itself relative, or 2^-10 (half the smallest subnormal step) in scaled units."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, 128, generator=gen) * torch.exp(torch.randn(64, 8, 1, generator=gen) * 4)
    x[0, 0] = 0.0
    q, scales = quantize_kv(x)
    assert q.dtype == torch.float8_e4m3fn and scales.shape == x.shape[:-1]
    assert not torch.isnan(q.float()).any() and q[0, 0].float().abs().max() == 0
    y = x / scales[..., None]
    assert torch.allclose(q.float().abs().amax(-1)[1:], torch.full_like(scales[1:], FP8_MAX))
    bound = torch.maximum(y.abs() * 2**-4, torch.full_like(y, 2**-10)) * (1 + 1e-5)
    assert ((q.float() - y).abs() <= bound).all()
    back = dequantize_kv(q, scales, torch.float32)
    assert ((back - x).abs() <= bound * scales[..., None] + 1e-6 * x.abs()).all()


def test_fp8_cache_holds_twice_the_tokens(model_dir):
    auto = LLM(model_dir, device="cpu", dtype="bfloat16", kv_cache_gb=0.02)
    fp8 = LLM(model_dir, device="cpu", dtype="bfloat16", kv_cache_gb=0.02, kv_cache_dtype="fp8")
    model, d = auto.loaded.model, auto.loaded.args.head_dim
    assert kv_bytes_per_token(model, torch.bfloat16, "fp8") / kv_bytes_per_token(model, torch.bfloat16) == (d + 4) / (2 * d)
    runner = fp8.engine.runner
    assert runner.kv_cache.dtype == torch.float8_e4m3fn and runner.kv_scales.dtype == torch.float32
    ratio = fp8.engine.block_manager.num_blocks / auto.engine.block_manager.num_blocks
    assert abs(ratio - 2 * d / (d + 4)) < 0.01


def test_generation_through_fp8_cache_matches_scoring(model_dir):
    """Tokens generated with chunked prefill (16-token steps) and batched decode, which read keys
    and values back from the fp8 cache, have the logprobs that scoring the prompt plus those
    tokens in one pass gives them (that pass rounds its fresh keys and values the same way)."""
    llm = load(model_dir, max_num_batched_tokens=16)
    prompts = [list(range(1000, 1037)), [9707, 11, 1879, 0], list(range(5000, 5021))]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=1)
    for prompt, out in zip(prompts, llm.generate(prompts, params)):
        tokens = out.outputs[0].token_ids
        scored = llm.engine.runner.score(prompt + tokens[:-1]).log_softmax(-1)[len(prompt) - 1:]
        assert scored.argmax(-1).tolist() == tokens
        expected = scored.gather(1, torch.tensor(tokens)[:, None])[:, 0]
        got = torch.tensor([lp.logprob for lp in out.outputs[0].logprobs])
        assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


def test_fp8_cache_batched_and_prefix_hit_equal_single(model_dir):
    """One request at a time with no prefix cache, then all together after a first request left
    the shared prefix's blocks (fp8 rows and their scales) in the cache: the same tokens."""
    shared = list(range(2000, 2040))  # two whole 16-token blocks, and part of a third
    prompts = [shared + [7, 8, 9], shared + [10, 11], list(range(300, 310))]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    fresh = load(model_dir, enable_prefix_caching=False)
    single = [fresh.generate([p], params)[0].outputs[0].token_ids for p in prompts]
    llm = load(model_dir)
    llm.generate([shared + [1]], params)
    outs = llm.generate(prompts, params)
    assert [o.outputs[0].token_ids for o in outs] == single
    assert outs[0].num_cached_tokens == 32 and outs[1].num_cached_tokens == 32


def test_unknown_kv_cache_dtype_is_one_clear_error(model_dir):
    with pytest.raises(ValueError, match="unknown kv_cache_dtype 'int4'; use one of auto, fp8"):
        LLM(model_dir, device="cpu", kv_cache_dtype="int4")
