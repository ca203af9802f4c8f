"""The GPU fast path: the engine on CUDA (Triton kernels, packed GEMMs, CUDA graphs, vectorized
sampler) against transformers and against itself. The GPU tests skip without CUDA; the vectorized
sampler and the graph bookkeeping are device-agnostic and also run on the CPU.
"""

from __future__ import annotations

import pytest
import torch

from openqwen.engine.cuda_graphs import capture_sizes
from openqwen.engine.sampler import SampleRequest, sample, sample_on_device
from openqwen.engine.sampling_params import SamplingParams

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (the engine's fast path)")

PROMPTS = [
    [9707, 11, 1879, 0, 358, 1079, 264, 3460, 1614, 13, 151644, 77091, 198, 1207, 16948, 220, 17, 13, 20, 30],
    [100, 200, 300],
    list(range(1000, 1045)),
    [5] * 33,
]


# -- device-agnostic pieces ---------------------------------------------------------------------
def test_capture_sizes():
    assert capture_sizes(256)[:6] == [1, 2, 4, 8, 16, 32] and capture_sizes(256)[-1] == 256
    assert capture_sizes(3) == [1, 2, 3]
    assert capture_sizes(100)[-1] == 100


def _requests(params: list[SamplingParams], generators=None) -> list[SampleRequest]:
    generators = generators or [None] * len(params)
    return [SampleRequest(p, [1, 2, 3], 2, g) for p, g in zip(params, generators)]


def test_vectorized_sampler_greedy_filters_and_logprobs():
    torch.manual_seed(0)
    logits = torch.randn(5, 50)
    params = [
        SamplingParams(temperature=0, logprobs=3),
        SamplingParams(temperature=0.7, top_k=1),  # top-k 1: always the argmax
        SamplingParams(temperature=1.3, top_p=1e-6),  # only the top token survives top-p
        SamplingParams(temperature=0.9, min_p=1.0),  # only the top token survives min-p
        SamplingParams(temperature=0, logprobs=0),
    ]
    tokens, logprobs = sample_on_device(logits.clone(), _requests(params))
    assert tokens == logits.argmax(-1).tolist()
    ref_tokens, ref_logprobs = sample(logits.clone(), _requests(params))  # the CPU sampler
    assert ref_tokens == tokens
    for got, ref in zip(logprobs, ref_logprobs):
        assert (got is None) == (ref is None)
        if got is not None:
            assert got.token_id == ref.token_id and abs(got.logprob - ref.logprob) < 1e-6
            assert [t for t, _ in got.top] == [t for t, _ in ref.top]


def test_vectorized_sampler_follows_the_distribution():
    """The exponential race draws token i with probability softmax(logits / T)_i."""
    torch.manual_seed(1)
    base = torch.tensor([2.0, 1.0, 0.0, -1.0])
    rows = 20000
    tokens, _ = sample_on_device(base.repeat(rows, 1), _requests([SamplingParams(temperature=0.8)] * rows))
    freq = torch.bincount(torch.tensor(tokens), minlength=4).float() / rows
    expected = (base / 0.8).softmax(-1)
    assert (freq - expected).abs().max() < 0.015, (freq, expected)


def test_vectorized_sampler_seeded_rows_reproducible():
    logits = torch.randn(3, 1000)
    draws = []
    for other_rows in (0, 2):  # the seeded row's draw must not depend on the rest of the batch
        gen = torch.Generator().manual_seed(42)
        params = [SamplingParams(temperature=1.0, seed=42)] + [SamplingParams(temperature=1.0)] * other_rows
        lg = torch.cat([logits[:1]] + [logits[1:2]] * other_rows)
        tokens, _ = sample_on_device(lg, _requests(params, [gen] + [None] * other_rows))
        draws.append(tokens[0])
    assert draws[0] == draws[1]


# -- the engine on a GPU -----------------------------------------------------------------------
@pytest.fixture(scope="module", params=["qwen3", "qwen2_tied"])
def tiny(request, tmp_path_factory):
    if not CUDA:
        pytest.skip("needs a CUDA GPU (the engine's fast path)")
    from tiny_models import make_hf_model

    path = tmp_path_factory.mktemp(request.param)
    hf = make_hf_model(request.param, path).to("cuda")
    return request.param, path, hf


def _hf_greedy(hf, prompt: list[int], n: int) -> list[int]:
    """Greedy continuation from transformers' forward pass (no generate(): the plain argmax loop)."""
    ids = torch.tensor([prompt], device="cuda")
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, hf(ids).logits[:, -1:].argmax(-1)], dim=1)
    return ids[0, len(prompt):].tolist()


def _generate(llm, prompts, n=24, **kw):
    params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, **kw)
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params)]


@needs_cuda
def test_greedy_matches_transformers_with_and_without_graphs(tiny):
    from openqwen import LLM

    name, path, hf = tiny
    llm = LLM(str(path), device="cuda", dtype="float32", kv_cache_gb=0.1)
    runner = llm.engine.runner
    assert runner.fast and runner.use_cuda_graphs
    expected = _hf_greedy(hf, PROMPTS[0], 24)
    with_graphs = _generate(llm, PROMPTS[:1])[0]
    assert runner.graphs.graphs, "the decode steps should have run from a CUDA graph"
    runner.use_cuda_graphs = False
    eager = _generate(llm, PROMPTS[:1])[0]
    assert with_graphs == eager == expected, name


@needs_cuda
def test_batched_chunked_and_prefix_cached_equal_single(tiny):
    """Batch of different lengths, prompts prefilled in 16-token chunks (varlen kernel with a cached
    prefix, mixed with decode rows), a repeated prompt served from the prefix cache: each output
    equals that prompt run alone, with and without graphs."""
    from openqwen import LLM

    name, path, _ = tiny
    single_llm = LLM(str(path), device="cuda", dtype="float32", kv_cache_gb=0.1, enable_prefix_caching=False)
    single = [_generate(single_llm, [p])[0] for p in PROMPTS]
    llm = LLM(str(path), device="cuda", dtype="float32", kv_cache_gb=0.1, max_num_batched_tokens=16)
    _generate(llm, [PROMPTS[2]])  # fills the prefix cache
    batched = _generate(llm, PROMPTS + [PROMPTS[2]])
    assert batched == single + [single[2]], name
    llm.engine.runner.use_cuda_graphs = False
    assert _generate(llm, PROMPTS) == single, name


@needs_cuda
def test_bf16_graph_equals_eager_at_batch_1(tiny):
    from openqwen import LLM

    name, path, _ = tiny
    llm = LLM(str(path), device="cuda", dtype="bfloat16", kv_cache_gb=0.1)
    with_graphs = _generate(llm, PROMPTS[:1], 32)
    llm.engine.runner.use_cuda_graphs = False
    assert _generate(llm, PROMPTS[:1], 32) == with_graphs, name


@needs_cuda
def test_seeded_sampling_reproducible_on_gpu(tiny):
    from openqwen import LLM

    _, path, _ = tiny
    llm = LLM(str(path), device="cuda", dtype="float32", kv_cache_gb=0.1, enable_prefix_caching=False)
    seeded = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=16, ignore_eos=True, seed=7)
    alone = llm.generate([PROMPTS[0]], seeded)[0].outputs[0].token_ids
    mixed = llm.generate([PROMPTS[1], PROMPTS[0]], [SamplingParams(temperature=1.0, max_tokens=16), seeded])
    assert mixed[1].outputs[0].token_ids == alone


@needs_cuda
def test_overlapped_decode_equals_synchronous(tiny):
    """Decode steps launched before the previous step's tokens are read give the same outputs:
    sequences ending by length at different steps, one by a stop token (its in-flight extra token
    dropped), a seeded sampled row; and the KV blocks all come back."""
    from openqwen import LLM

    _, path, _ = tiny
    llm = LLM(str(path), device="cuda", dtype="float32", kv_cache_gb=0.1, enable_prefix_caching=False)
    runner = llm.engine.runner
    assert runner.overlap_decode
    probe = _generate(llm, PROMPTS[:1], 12)[0]
    stop_at = next(i for i, t in enumerate(probe) if i >= 3 and t not in probe[:i])
    params = [SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[probe[stop_at]]),
              SamplingParams(temperature=0, max_tokens=5, ignore_eos=True),
              SamplingParams(temperature=0.8, max_tokens=9, ignore_eos=True, seed=3),
              SamplingParams(temperature=0, max_tokens=17, ignore_eos=True)]
    free = llm.engine.block_manager.num_free_blocks
    results = {}
    for overlap in (True, False):
        runner.overlap_decode = overlap
        outs = llm.generate(PROMPTS, params)
        results[overlap] = [(o.outputs[0].token_ids, o.outputs[0].finish_reason) for o in outs]
    assert results[True] == results[False]
    assert results[True][0] == (probe[:stop_at + 1], "stop")
    assert [len(t) for t, _ in results[True][1:]] == [5, 9, 17]
    assert llm.engine.block_manager.num_free_blocks == free


@needs_cuda
def test_fp8_kv_cache_on_gpu_matches_cpu(tiny):
    """The fp8 cache through the Triton kernels and CUDA graphs (fp32 model) gives the greedy
    tokens the PyTorch path gives on the CPU, where the same rounding is computed by
    `attention.quantize_kv`; batched with chunked prefill, as in the tests above."""
    from openqwen import LLM

    name, path, _ = tiny
    options = dict(dtype="float32", kv_cache_gb=0.1, max_num_batched_tokens=16, kv_cache_dtype="fp8")
    cpu = _generate(LLM(str(path), device="cpu", **options), PROMPTS)
    gpu_llm = LLM(str(path), device="cuda", **options)
    assert gpu_llm.engine.runner.kv_cache.dtype == torch.float8_e4m3fn
    assert _generate(gpu_llm, PROMPTS) == cpu, name
    gpu_llm.engine.runner.use_cuda_graphs = False
    assert _generate(gpu_llm, PROMPTS) == cpu, name
