"""The Triton kernels of the CUDA path against dense PyTorch references.

Without a GPU they run in Triton's interpreter (TRITON_INTERPRET=1, small shapes); with one, on the
device, in fp32 and bf16. Each output buffer is poisoned first so an unwritten element fails.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("needs Triton (pip install triton; runs in its interpreter without a GPU)", allow_module_level=True)
CUDA = torch.cuda.is_available()
if not CUDA:
    # Must precede every Triton import: @triton.jit reads it when a kernel (tl.cdiv too) is defined.
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton was imported before TRITON_INTERPRET=1 could be set; run this file on its own",
                    allow_module_level=True)
    os.environ["TRITON_INTERPRET"] = "1"
    import numpy as np
    import triton.runtime.interpreter as _interp

    # Triton 3.6's interpreter turns a loaded scalar into a 1-element array, and NumPy >= 2.3
    # refuses int() of those, so a loop bounded by a loaded value (`range(start, end)`) fails to
    # run; read the element instead (compiled kernels are unaffected).
    _patch = _interp._patch_lang_tensor

    def _patch_lang_tensor(tensor, scope):
        _patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    _interp._patch_lang_tensor = _patch_lang_tensor

    # Triton 3.6's interpreter rounds fp32 -> fp8 wrongly: ties away from zero, and a mantissa that
    # rounds up past its top loses the carry (124.8 -> 64 instead of 128). Upstream: triton-lang/
    # triton#8322, fix pending in #11897. Compiled kernels use the GPU's conversion (nearest even,
    # saturating); here the interpreter gets PyTorch's, which rounds the same way.
    _convert_float = _interp._convert_float

    def _convert_float_fp8_fixed(data, src_type, dst_type, rounding_mode):
        if dst_type.is_fp8e4nv() and src_type.is_fp32():
            return torch.from_numpy(np.ascontiguousarray(data)).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
        return _convert_float(data, src_type, dst_type, rounding_mode)

    _interp._convert_float = _convert_float_fp8_fixed

from openqwen.engine.triton_sampler import gumbel_argmax  # noqa: E402
from openqwen.layers.attention import dequantize_kv, quantize_kv  # noqa: E402
from openqwen.layers import fused, fused_ops  # noqa: E402
from openqwen.layers import triton_attention as ta  # noqa: E402
from openqwen.layers.norm import RMSNorm  # noqa: E402
from openqwen.layers.rope import apply_rotary  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.bfloat16] if CUDA else [torch.float32]
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}  # attention: relative L2 error vs float64
# Elementwise kernels round at the same points as the eager code; in bf16 a few elements may still
# land one unit in the last place away (the device's exp/rsqrt differ from PyTorch's).
FUSED_TOL = {torch.float32: 1e-6, torch.bfloat16: 4e-3}


def paged_cache(context_lens, page, hkv, d, dtype, gen, spare=3):
    """A cache whose blocks are handed out in random order; returns (k_cache, v_cache, tables)."""
    need = [-(-c // page) for c in context_lens]
    num_blocks = sum(need) + spare
    order = torch.randperm(num_blocks, generator=gen)
    tables = torch.zeros(len(context_lens), max(max(need), 1) + 2, dtype=torch.int32)
    start = 0
    for i, n in enumerate(need):
        tables[i, :n] = order[start:start + n]
        start += n
    k = torch.randn(num_blocks, page, hkv, d, generator=gen).to(dtype)
    v = torch.randn(num_blocks, page, hkv, d, generator=gen).to(dtype)
    return k.to(DEVICE), v.to(DEVICE), tables.to(DEVICE)


def dense_attention(q, k_cache, v_cache, table, context_len, query_len):
    """float64 reference for one sequence: q [L, H, d] are the last L of context_len positions."""
    page, hkv, d = k_cache.shape[1:]
    group = q.shape[1] // hkv
    k = k_cache[table.long()].flatten(0, 1)[:context_len].double().repeat_interleave(group, 1)
    v = v_cache[table.long()].flatten(0, 1)[:context_len].double().repeat_interleave(group, 1)
    s = torch.einsum("lhd,shd->hls", q.double(), k) / math.sqrt(d)
    visible = torch.arange(context_len, device=q.device)[None, :] <= (context_len - query_len + torch.arange(query_len, device=q.device))[:, None]
    s = s.masked_fill(~visible, float("-inf"))
    return torch.einsum("hls,shd->lhd", s.softmax(-1), v)


def rel_err(got, ref):
    got, ref = got.double().cpu(), ref.double().cpu()
    return ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype", DTYPES)
def test_store_kv(dtype):
    gen = torch.Generator().manual_seed(1)
    blocks, page, hkv, d, T = 6, 4, 2, 16, 5
    k_cache = torch.full((blocks, page, hkv, d), 7.0, dtype=dtype, device=DEVICE)
    v_cache = k_cache.clone()
    qkv = torch.randn(T, (4 + 2 * hkv) * d, generator=gen).to(dtype).to(DEVICE)  # packed rows: strided k/v views
    k = qkv[:, 4 * d:(4 + hkv) * d].view(T, hkv, d)
    v = qkv[:, (4 + hkv) * d:].view(T, hkv, d)
    slots = torch.tensor([3, 17, -1, 0, 22], device=DEVICE)
    ta.store_kv(k, v, k_cache, v_cache, slots)
    flat_k, flat_v = k_cache.view(-1, hkv, d), v_cache.view(-1, hkv, d)
    for t, slot in enumerate(slots.tolist()):
        if slot >= 0:
            assert torch.equal(flat_k[slot], k[t]) and torch.equal(flat_v[slot], v[t])
    untouched = [s for s in range(blocks * page) if s not in slots.tolist()]
    assert (flat_k[untouched] == 7).all() and (flat_v[untouched] == 7).all()


def fp8_paged_cache(context_lens, page, hkv, d, gen):
    """paged_cache's layout in fp8 with per-row scales: ((k, v, k_scale, v_scale), tables), from
    rows of different magnitudes so the scales matter."""
    k, v, tables = paged_cache(context_lens, page, hkv, d, torch.float32, gen)
    magnitude = torch.exp(torch.randn(*k.shape[:3], 1, generator=gen) * 2).to(DEVICE)
    (kq, ks), (vq, vs) = quantize_kv(k * magnitude), quantize_kv(v * magnitude.flip(0))
    return (kq, vq, ks, vs), tables


@pytest.mark.parametrize("store", ["store_kv", "qk_norm_rope"])
def test_fp8_cache_store_matches_quantize_kv(store):
    """Both cache writers quantize each head row as `attention.quantize_kv` does, bit for bit,
    and leave other slots alone."""
    gen = torch.Generator().manual_seed(11)
    blocks, page, hkv, H, d, T = 3, 4, 2, 4, 32, 4
    qkv = torch.randn(T, (H + 2 * hkv) * d, generator=gen).to(DEVICE) * torch.tensor([1e-3, 1.0, 300.0, 0.0], device=DEVICE)[:, None]
    q, k, v = qkv[:, :H * d].view(T, H, d), qkv[:, H * d:(H + hkv) * d].view(T, hkv, d), qkv[:, (H + hkv) * d:].view(T, hkv, d)
    caches = [torch.full((blocks, page, hkv, d), 1.0, device=DEVICE).to(torch.float8_e4m3fn) for _ in range(2)]
    scales = [torch.full((blocks, page, hkv), 7.0, device=DEVICE) for _ in range(2)]
    slots = torch.tensor([5, -1, 0, 11], device=DEVICE)
    if store == "store_kv":
        ta.store_kv(k, v, *caches, slots, tuple(scales))
    else:
        cos, sin = torch.ones(T, d, device=DEVICE), torch.zeros(T, d, device=DEVICE)  # rotation by 0: k stays
        fused_ops.qk_norm_rope(q, k, cos, sin, kv_cache=(v, *caches, slots), kv_scales=tuple(scales))
    for x, cache, scale in ((k, caches[0], scales[0]), (v, caches[1], scales[1])):
        ref_q, ref_s = quantize_kv(x)
        flat, flat_s = cache.view(torch.uint8).view(-1, hkv, d), scale.view(-1, hkv)
        for t, slot in enumerate(slots.tolist()):
            if slot >= 0:
                assert torch.equal(flat[slot], ref_q[t].view(torch.uint8)) and torch.equal(flat_s[slot], ref_s[t])
        untouched = [s for s in range(blocks * page) if s not in slots.tolist()]
        assert (flat_s[untouched] == 7).all() and (flat[untouched] == torch.tensor(1.0).to(torch.float8_e4m3fn).view(torch.uint8)).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("splits", [1, 3])
def test_decode_attention_fp8_cache(dtype, splits):
    """fp8 rows times their scales, against float64 attention over the dequantized cache."""
    gen = torch.Generator().manual_seed(12 + splits)
    heads, kv_heads, page, d = 4, 2, 4, 32
    context_lens = [1, 17, 70, 0]
    (kq, vq, ks, vs), tables = fp8_paged_cache(context_lens, page, kv_heads, d, gen)
    k_ref, v_ref = dequantize_kv(kq, ks, torch.float64), dequantize_kv(vq, vs, torch.float64)
    q = torch.randn(len(context_lens), heads, d, generator=gen).to(dtype).to(DEVICE)
    out = ta.decode_attention(q, kq, vq, tables, torch.tensor(context_lens, device=DEVICE), d ** -0.5, splits,
                              kv_scales=(ks, vs))
    assert torch.equal(out[3], torch.zeros_like(out[3]))
    for i, c in enumerate(context_lens[:3]):
        ref = dense_attention(q[i:i + 1], k_ref, v_ref, tables[i], c, 1)[0]
        assert rel_err(out[i], ref) < TOL[dtype], (i, c)


@pytest.mark.parametrize("dtype", DTYPES)
def test_prefill_attention_fp8_cache(dtype):
    gen = torch.Generator().manual_seed(13)
    heads, kv_heads, page, d = 4, 2, 4, 32
    shapes = [(7, 7), (5, 12), (1, 9), (40, 45)]
    context_lens = [c for _, c in shapes]
    (kq, vq, ks, vs), tables = fp8_paged_cache(context_lens, page, kv_heads, d, gen)
    k_ref, v_ref = dequantize_kv(kq, ks, torch.float64), dequantize_kv(vq, vs, torch.float64)
    cu = torch.tensor([0] + [n for n, _ in shapes], device=DEVICE).cumsum(0).to(torch.int32)
    q = torch.randn(int(cu[-1]), heads, d, generator=gen).to(dtype).to(DEVICE)
    out = ta.prefill_attention(q, kq, vq, tables, cu, torch.tensor(context_lens, device=DEVICE), 40, d ** -0.5,
                               kv_scales=(ks, vs))
    for j, (n, c) in enumerate(shapes):
        ref = dense_attention(q[cu[j]:cu[j + 1]], k_ref, v_ref, tables[j], c, n)
        assert rel_err(out[cu[j]:cu[j + 1]], ref) < TOL[dtype], (n, c)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads,page,splits", [(4, 2, 4, 1), (4, 2, 4, 3), (4, 4, 16, 8), (8, 1, 8, 2)])
def test_decode_attention(dtype, heads, kv_heads, page, splits):
    gen = torch.Generator().manual_seed(heads * 100 + page + splits)
    d = 32
    context_lens = [1, 17, 70, 0]  # the last is a padding row (CUDA graphs): output must be zero
    k_cache, v_cache, tables = paged_cache(context_lens, page, kv_heads, d, dtype, gen)
    for _ in range(3):  # again with fresh queries: the split kernel's merge counters must reset
        q = torch.randn(len(context_lens), heads, d, generator=gen).to(dtype).to(DEVICE)
        out = ta.decode_attention(q, k_cache, v_cache, tables, torch.tensor(context_lens, device=DEVICE), d ** -0.5,
                                  splits)
        for i, c in enumerate(context_lens):
            if c == 0:
                assert torch.equal(out[i], torch.zeros_like(out[i]))
                continue
            ref = dense_attention(q[i:i + 1], k_cache, v_cache, tables[i], c, 1)[0]
            assert rel_err(out[i], ref) < TOL[dtype], (i, c)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads,page", [(4, 2, 4), (2, 2, 16)])
def test_prefill_attention_varlen_with_prefix(dtype, heads, kv_heads, page):
    gen = torch.Generator().manual_seed(7 + heads + page)
    d = 32
    # (new tokens, context after the step): plain prefill, after a cached prefix, a decode row,
    # a chunk longer than one query block, a long chunk after a prefix
    shapes = [(7, 7), (5, 12), (1, 9), (20, 20), (40, 45)]
    context_lens = [c for _, c in shapes]
    k_cache, v_cache, tables = paged_cache(context_lens, page, kv_heads, d, dtype, gen)
    T = sum(n for n, _ in shapes)
    q = torch.randn(T, heads, d, generator=gen).to(dtype).to(DEVICE)
    cu = torch.tensor([0] + [n for n, _ in shapes], device=DEVICE).cumsum(0).to(torch.int32)
    for max_q in (max(n for n, _ in shapes), 16):  # block_m 64, and block_m 16 with 3 query blocks
        if max_q == 16:
            shapes_used = [(n, c) for n, c in shapes if n <= 16]
            idx = [i for i, (n, _) in enumerate(shapes) if n <= 16]
        else:
            shapes_used, idx = shapes, list(range(len(shapes)))
        lens = torch.tensor([0] + [n for n, _ in shapes_used], device=DEVICE).cumsum(0).to(torch.int32)
        rows = torch.cat([torch.arange(cu[i], cu[i + 1], device=DEVICE) for i in idx])
        qs = q[rows].contiguous()
        out = ta.prefill_attention(qs, k_cache, v_cache, tables[idx], lens,
                                   torch.tensor([c for _, c in shapes_used], device=DEVICE), max_q, d ** -0.5)
        for j, (n, c) in enumerate(shapes_used):
            ref = dense_attention(qs[lens[j]:lens[j + 1]], k_cache, v_cache, tables[idx[j]], c, n)
            assert rel_err(out[lens[j]:lens[j + 1]], ref) < TOL[dtype], (n, c)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rmsnorm_and_residual(dtype):
    gen = torch.Generator().manual_seed(3)
    norm = RMSNorm(96, 1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(96, generator=gen))
    norm = norm.to(dtype).to(DEVICE)
    x = torch.randn(5, 96, generator=gen).to(dtype).to(DEVICE)
    r = torch.randn(5, 96, generator=gen).to(dtype).to(DEVICE)
    with torch.no_grad():
        ref_y, ref_r = norm._norm(x + r), x + r
        y, new_r = fused_ops.rmsnorm(x, norm.weight, norm.eps, r)
        plain = fused_ops.rmsnorm(x, norm.weight, norm.eps)
        assert torch.equal(new_r, ref_r)
        assert rel_err(y, ref_y) < FUSED_TOL[dtype] and rel_err(plain, norm._norm(x)) < FUSED_TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_norm", [False, True])
def test_qk_norm_rope_in_place(dtype, with_norm):
    gen = torch.Generator().manual_seed(4)
    T, H, Hkv, d = 3, 4, 2, 32
    qkv = torch.randn(T, (H + 2 * Hkv) * d, generator=gen).to(dtype).to(DEVICE)
    q, k = qkv[:, :H * d].view(T, H, d), qkv[:, H * d:(H + Hkv) * d].view(T, Hkv, d)
    freqs = torch.arange(T)[:, None] * (1e4 ** (-torch.arange(0, d, 2) / d))[None, :]
    emb = torch.cat((freqs, freqs), -1)
    cos, sin = emb.cos().to(dtype).to(DEVICE), emb.sin().to(dtype).to(DEVICE)
    norms = (None, None)
    if with_norm:
        norms = tuple(RMSNorm(d, 1e-6) for _ in range(2))
        for n in norms:
            with torch.no_grad():
                n.weight.copy_(torch.randn(d, generator=gen))
        norms = tuple(n.to(dtype).to(DEVICE) for n in norms)
    v = qkv[:, (H + Hkv) * d:].view(T, Hkv, d)
    v_before = v.clone()
    # with the cache write: slot -1 (a padded CUDA-graph row) writes nothing
    k_cache = torch.full((3, 4, Hkv, d), 7.0, dtype=dtype, device=DEVICE)
    v_cache = k_cache.clone()
    slots = torch.tensor([5, -1, 0], device=DEVICE)
    with torch.no_grad():
        rq, rk = (norms[0](q), norms[1](k)) if with_norm else (q, k)
        rq, rk = apply_rotary(rq, cos, sin), apply_rotary(rk, cos, sin)
        fused_ops.qk_norm_rope(q, k, cos, sin, *norms, kv_cache=(v, k_cache, v_cache, slots))
    assert rel_err(q, rq) < FUSED_TOL[dtype] and rel_err(k, rk) < FUSED_TOL[dtype]
    assert torch.equal(v, v_before)
    flat_k, flat_v = k_cache.view(-1, Hkv, d), v_cache.view(-1, Hkv, d)
    for t, slot in enumerate(slots.tolist()):
        if slot >= 0:
            assert torch.equal(flat_k[slot], k[t]) and torch.equal(flat_v[slot], v[t])
    untouched = [s for s in range(flat_k.shape[0]) if s not in slots.tolist()]
    assert (flat_k[untouched] == 7).all() and (flat_v[untouched] == 7).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul(dtype):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 2 * 80, generator=gen).to(dtype).to(DEVICE)
    gate, up = x.chunk(2, -1)
    ref = torch.nn.functional.silu(gate) * up
    assert rel_err(fused_ops.silu_mul(x), ref) < FUSED_TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [272, 4100])  # one weight tile (masked), and several (the last partial)
def test_gemv_matches_linear(dtype, K):
    """Against float64 on the same (rounded) inputs: only the output rounding remains."""
    gen = torch.Generator().manual_seed(6)
    N = 37  # not a multiple of the programs' rows
    w = (torch.randn(N, K, generator=gen) / 16).to(dtype)
    b = torch.randn(N, generator=gen).to(dtype)
    for M in (1, 3, 8):
        x = torch.randn(M, 2 * K, generator=gen).to(dtype)
        gate, up = x[:, :K].double(), x[:, K:].double()
        act = (torch.nn.functional.silu(gate).to(dtype).double() * up).to(dtype).double()  # rounded as eager
        xd, wd, bd = x.to(DEVICE), w.to(DEVICE), b.to(DEVICE)
        assert rel_err(fused.gemv(xd[:, :K], wd, bd), gate @ w.double().T + b.double()) < FUSED_TOL[dtype]
        assert rel_err(fused.gemv(xd, wd, silu_mul_input=True), act @ w.double().T) < FUSED_TOL[dtype]
    x = torch.randn(fused.GEMV_MAX_M + 1, K, generator=gen).to(dtype)  # past the GEMV: cuBLAS
    ref = x.double() @ w.double().T + b.double()
    assert rel_err(fused.linear(x.to(DEVICE), w.to(DEVICE), b.to(DEVICE)), ref) < FUSED_TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [96, 4100])  # one input tile (masked), and several: the rms over all of them
def test_deferred_rmsnorm_through_the_gemv(dtype, K, monkeypatch):
    """An RMSNorm that feeds a packed GEMM leaves its work to the GEMV: the GEMV's output and the
    new residual stream equal the separate norm kernel followed by the GEMV."""
    from openqwen.layers import attention

    monkeypatch.setattr(fused, "GEMV_ON_CPU", True)
    monkeypatch.setattr(attention, "_TRITON_ON_CPU", True)  # RMSNorm takes its fast path on CPU tensors
    gen = torch.Generator().manual_seed(7)
    N = 37
    norm = RMSNorm(K, 1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(K, generator=gen))
    norm = norm.to(dtype).to(DEVICE)
    w = (torch.randn(N, K, generator=gen) / 16).to(dtype).to(DEVICE)
    norm.feeds_gemv = True
    for M, with_residual in ((1, False), (1, True), (fused.NORM_IN_GEMV_MAX_M, True)):
        x = torch.randn(M, K, generator=gen).to(dtype).to(DEVICE)
        r = torch.randn(M, K, generator=gen).to(dtype).to(DEVICE) if with_residual else None
        with torch.no_grad():
            ref_in, ref_r = fused_ops.rmsnorm(x, norm.weight, norm.eps, r) if with_residual else (
                fused_ops.rmsnorm(x, norm.weight, norm.eps), None)
            ref = fused.gemv(ref_in, w)
            out = norm(x, r) if with_residual else norm(x)
            deferred, new_r = out if with_residual else (out, None)
            assert isinstance(deferred, fused.DeferredRMSNorm) and deferred.shape == x.shape
            y = fused.linear(deferred, w)
        assert rel_err(y, ref) < FUSED_TOL[dtype]
        if with_residual:
            assert torch.equal(new_r, ref_r)
    with torch.no_grad():  # more rows: the norm runs as its own kernel
        x = torch.randn(fused.NORM_IN_GEMV_MAX_M + 1, K, generator=gen).to(dtype).to(DEVICE)
        assert isinstance(norm(x), torch.Tensor)


def test_gumbel_argmax_sampler_kernel():
    """Greedy rows (T = 0) give the argmax across vocabulary parts; sampled rows follow
    softmax(x / T); the same key gives the same draw."""
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(3, 3000, generator=gen).to(DEVICE)
    logits[1, 2999] = 50.0  # in the last part
    greedy = gumbel_argmax(logits, torch.zeros(3, device=DEVICE), torch.arange(3, device=DEVICE), num_parts=4)
    assert greedy.tolist() == logits.argmax(-1).tolist()
    rows, base = 2000 if CUDA else 300, torch.tensor([1.5, 0.5, 0.0, -1.0, float("-inf")])
    temps = torch.full((rows,), 0.7, device=DEVICE)
    seeds = torch.arange(rows, device=DEVICE) * 7919 + 3
    drawn = gumbel_argmax(base.repeat(rows, 1).to(DEVICE), temps, seeds, num_parts=1)
    freq = torch.bincount(drawn.cpu(), minlength=5).float() / rows
    expected = (base / 0.7).softmax(-1)
    assert freq[4] == 0 and (freq - expected).abs().max() < 1.6 / rows ** 0.5, (freq, expected)  # ~3 sigma
    again = gumbel_argmax(base.repeat(20, 1).to(DEVICE), temps[:20], seeds[:20], num_parts=1)
    assert torch.equal(drawn[:20], again)


def test_pack_model_keeps_names_and_outputs():
    from openqwen.layers.mlp import SwiGLU

    torch.manual_seed(0)
    mlp = SwiGLU(16, 24)
    x = torch.randn(4, 16)
    with torch.no_grad():
        before = mlp(x)
        keys = sorted(mlp.state_dict())
        assert fused.pack_model(mlp) == 1
        assert sorted(mlp.state_dict()) == keys
        assert mlp.gate_proj.weight.data_ptr() == mlp.gate_up_packed.weight.data_ptr()
        assert torch.allclose(mlp(x), before, atol=1e-6)


def test_choose_num_splits():
    assert ta.choose_num_splits(1, 8, 132) == 16
    assert ta.choose_num_splits(64, 8, 132) == 1
    assert all(ta.choose_num_splits(b, 8, 132) >= 1 for b in range(1, 600))


@pytest.mark.skipif(CUDA, reason="on a GPU tests/test_gpu.py runs the engine end to end")
@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8"])
def test_engine_on_triton_path_matches_torch_path(tmp_path, monkeypatch, kv_cache_dtype):
    """The whole engine (packed GEMMs, fused norms/RoPE, cache store, chunked varlen prefill,
    decode) on the Triton kernels, interpreted on the CPU, gives the torch path's greedy tokens,
    with either cache dtype."""
    from tiny_models import make_hf_model

    from openqwen import LLM, SamplingParams
    from openqwen.layers import attention

    make_hf_model("qwen3", tmp_path)
    prompts = [[9707, 11, 1879, 0, 358, 1079, 264, 3460, 1614, 13, 151644, 77091, 198, 1207, 16948, 220, 17, 13], [100, 200, 300]]
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    results = []
    monkeypatch.setattr(fused, "GEMV_ON_CPU", True)  # decode GEMMs through the GEMV
    for triton_path in (False, True):
        monkeypatch.setattr(attention, "_TRITON_ON_CPU", triton_path)
        llm = LLM(str(tmp_path), device="cpu", dtype="float32", kv_cache_gb=0.01, max_num_batched_tokens=16,
                  kv_cache_dtype=kv_cache_dtype)
        assert llm.engine.runner.fast == triton_path
        results.append([o.outputs[0].token_ids for o in llm.generate(prompts, params)])
    assert results[0] == results[1]


@pytest.mark.skipif(CUDA, reason="on a GPU tests/test_gpu.py runs the real CUDA graphs")
def test_decode_graph_bookkeeping_with_a_stand_in_graph(tmp_path, monkeypatch):
    """The CUDA-graph decode path minus the capture itself: static buffers refilled per step,
    batches padded to the captured size (slot -1, context 0), logits read from the static output.
    A stand-in 'graph' re-runs the forward on the static buffers; tokens must match the eager path."""
    from tiny_models import make_hf_model

    from openqwen import LLM, SamplingParams
    from openqwen.engine.cuda_graphs import DecodeGraphs
    from openqwen.layers import attention

    class ReplayByRerun:
        def __init__(self, graphs, size):
            self.graphs, self.size = graphs, size

        def replay(self):
            g, size = self.graphs, self.size
            out = g._step(size)
            g.outputs[size].copy_(out)

    class StandInGraphs(DecodeGraphs):
        def _capture_one(self, size):
            return ReplayByRerun(self, size), self._step(size)

    monkeypatch.setattr(attention, "_TRITON_ON_CPU", True)
    make_hf_model("qwen3", tmp_path)
    llm = LLM(str(tmp_path), device="cpu", dtype="float32", kv_cache_gb=0.01)
    runner = llm.engine.runner
    prompts = [[9707, 11, 1879, 0, 358, 1079], [100, 200, 300], list(range(1000, 1021))]
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    eager = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    runner.graphs = StandInGraphs(runner._logits_of, runner.device, runner.block_size, 64, 8, runner._decode_splits)
    runner.use_cuda_graphs = True
    graphed = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    assert sorted(runner.graphs.graphs) == [1, 2, 4]  # batch 3 ran padded to 4
    assert graphed == eager

    # Overlapped decode (launch before the previous step's tokens are read) on the same stand-in:
    # lengths that end at different steps, a stop token that ends one sequence early (its extra
    # in-flight token must be dropped) and a stop string; outputs as without the overlap.
    first_new = next(i for i, t in enumerate(eager[1]) if i >= 2 and t not in eager[1][:i])
    stop_token = eager[1][first_new]
    mixed = [SamplingParams(temperature=0, max_tokens=3, ignore_eos=True),
             SamplingParams(temperature=0, max_tokens=5, stop_token_ids=[stop_token]),
             SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, stop=[llm.tokenizer.decode(eager[2][2:4])])]
    launches = []
    launch = runner.launch
    runner.launch = lambda batch, previous: launches.append(len(batch)) or launch(batch, previous)
    free = llm.engine.block_manager.num_free_blocks
    results = {}
    for overlap in (False, True):
        runner.overlap_decode = overlap
        outs = llm.generate(prompts, mixed)
        results[overlap] = [(o.outputs[0].token_ids, o.outputs[0].finish_reason, o.outputs[0].text) for o in outs]
    assert results[True] == results[False]
    assert results[True][1][:2] == (eager[1][:first_new + 1], "stop")
    assert results[True][2][1] == "stop"
    assert launches and max(launches) == 3  # decode steps did overlap, the whole batch at first
    assert llm.engine.block_manager.num_free_blocks == free
