"""Triton kernels for attention over the paged KV cache (the CUDA path of `layers.attention`).

Cache layout, as everywhere in openqwen: per layer K and V tensors [num_blocks, block_size, Hkv, d];
token p of a sequence lives in block `block_table[p // block_size]` at row `p % block_size`.

Three kernels:
  * `store_kv`: the new tokens' K/V rows into their cache slots (slot -1: skip, used by padded
    CUDA-graph rows), for head sizes the RoPE kernel does not take; otherwise that kernel
    (`fused_ops.qk_norm_rope`) writes the cache as it rotates.
  * `decode_attention`: one query per sequence. One program per (sequence, KV head, split) handles
    the whole query group of that KV head, so each cached K/V row is read once per group (GQA).
    Long contexts can be split across programs (split-K, "flash decoding") when the batch alone
    would leave most multiprocessors idle; the last split of each head to finish merges the
    partial softmaxes, in the same kernel.
    The number of splits is fixed per launch shape (so a CUDA graph can hold it); each split covers
    an equal share of its sequence's actual context, computed on the device.
  * `prefill_attention`: variable-length query chunks (flat [T, H, d]; `cu_query_lens`) against the
    paged cache, after the chunk's own K/V were stored: query i of a sequence with context length C
    and L new tokens sees keys 0 .. C - L + i. Covers plain prefill, prefill after a cached prefix,
    chunked prefill and mixed prefill/decode batches.

With an fp8 cache (kv_cache_dtype "fp8") the store quantizes each head row with its own scale, and
the attention kernels fold the scales into the scores (K) and the probabilities (V), so the rows
are only widened, never rescaled element by element.

Softmax runs in fp32 with the running max / sum of flash attention. These kernels are imported only
on CUDA (or by the tests under TRITON_INTERPRET=1), so the package needs no Triton on a CPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pdl import launch_options, pdl_start, use_pdl


@triton.jit
def fp8_scale(amax):
    """Per-row largest |value| -> (the multiplier into e4m3's range, the scale the cache keeps);
    the same arithmetic as `attention.quantize_kv` (IEEE-rounded divisions, as PyTorch's)."""
    amax = tl.maximum(amax, 1e-12)
    inv = tl.fdiv(tl.full(amax.shape, 448.0, tl.float32), amax, ieee_rounding=True)
    return inv, tl.fdiv(amax, 448.0, ieee_rounding=True)


@triton.jit
def _store_rows(X, Cache, Scale, t, stride_t, slot, HKV: tl.constexpr, D: tl.constexpr, BLOCK_H: tl.constexpr,
                BLOCK_D: tl.constexpr, QUANT: tl.constexpr):
    """Token t's head rows of X into cache slot `slot` (-1: nothing); fp8 with QUANT, a scale per head."""
    heads = tl.arange(0, BLOCK_H)
    offs = heads[:, None] * D + tl.arange(0, BLOCK_D)[None, :]
    head_mask = (heads < HKV) & (slot >= 0)
    mask = head_mask[:, None] & (tl.arange(0, BLOCK_D)[None, :] < D)
    x = tl.load(X + t * stride_t + offs, mask=mask, other=0.0)
    if QUANT:
        inv, scale = fp8_scale(tl.max(tl.abs(x.to(tl.float32)), 1))
        x = x.to(tl.float32) * inv[:, None]
        tl.store(Scale + slot * HKV + heads, scale, mask=head_mask)
    tl.store(Cache + slot * (HKV * D) + offs, x.to(Cache.dtype.element_ty), mask=mask)


@triton.jit
def _store_kv_kernel(
    K, V, K_cache, V_cache, K_scale, V_scale, Slots, stride_kt, stride_vt,
    HKV: tl.constexpr, D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
    QUANT: tl.constexpr, PDL: tl.constexpr,
):
    pdl_start(PDL)
    t = tl.program_id(0)
    slot = tl.load(Slots + t).to(tl.int64)
    _store_rows(K, K_cache, K_scale, t, stride_kt, slot, HKV, D, BLOCK_H, BLOCK_D, QUANT)
    _store_rows(V, V_cache, V_scale, t, stride_vt, slot, HKV, D, BLOCK_H, BLOCK_D, QUANT)


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
             kv_scales: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    """k, v [T, Hkv, d] (heads contiguous within a token) -> cache rows `slot_mapping` [T]. With
    `kv_scales` (fp8 cache) each row is quantized and its scale written there."""
    T, hkv, d = k.shape
    assert k.stride(1) == d and k.stride(2) == 1 and v.stride(1) == d and v.stride(2) == 1
    assert k_cache.is_contiguous() and v_cache.is_contiguous()
    if T == 0:
        return
    k_scale, v_scale = checked_scales(k_cache, kv_scales)
    pdl = use_pdl(k)
    _store_kv_kernel[(T,)](k, v, k_cache, v_cache, k_scale, v_scale, slot_mapping, k.stride(0), v.stride(0),
                           HKV=hkv, D=d, BLOCK_H=triton.next_power_of_2(hkv), BLOCK_D=triton.next_power_of_2(d),
                           QUANT=kv_scales is not None, PDL=pdl, num_warps=4 if hkv * d >= 1024 else 1,
                           **launch_options(pdl))


def checked_scales(k_cache: torch.Tensor,
                   kv_scales: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The fp8 cache's scale tensors [blocks, page, Hkv] (the kernels index them by slot * Hkv +
    head), or placeholders the kernels never touch."""
    if kv_scales is None:
        return k_cache, k_cache
    assert k_cache.dtype == torch.float8_e4m3fn
    for scales in kv_scales:
        assert scales.is_contiguous() and scales.dtype == torch.float32 and scales.shape == k_cache.shape[:3]
    return kv_scales


@triton.jit(do_not_specialize=["num_splits"])
def _decode_kernel(
    Q, K_cache, V_cache, K_scale, V_scale, Block_tables, Context_lens, Out, Part_out, Part_lse, Counters,
    stride_qt, stride_qh, stride_cb, stride_cs, stride_ch, stride_bt, stride_ot, stride_oh,
    scale, num_splits,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    PAGE: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, BLOCK_S: tl.constexpr,
    PRECISION: tl.constexpr, QUANT: tl.constexpr, PDL: tl.constexpr,
):
    pdl_start(PDL)
    seq = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    ctx_len = tl.load(Context_lens + seq).to(tl.int32)
    # This split's share of the context, in whole BLOCK_N tiles.
    per_split = tl.cdiv(tl.cdiv(ctx_len, num_splits), BLOCK_N) * BLOCK_N
    start = split * per_split
    end = tl.minimum(start + per_split, ctx_len)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    heads = kvh * GROUP + offs_g
    g_mask = offs_g < GROUP
    d_mask = offs_d < HEAD_DIM
    q = tl.load(Q + seq * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0)

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    table = Block_tables + seq.to(tl.int64) * stride_bt
    for n0 in range(start, end, BLOCK_N):
        pos = n0 + tl.arange(0, BLOCK_N)
        valid = pos < end
        block = tl.load(table + pos // PAGE, mask=valid, other=0).to(tl.int64)
        rows = block * stride_cb + (pos % PAGE) * stride_cs + kvh * stride_ch
        kv_mask = valid[:, None] & d_mask[None, :]
        k = tl.load(K_cache + rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0).to(q.dtype)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # [G, N]
        if QUANT:
            scale_rows = (block * PAGE + pos % PAGE) * tl.num_programs(1) + kvh
            s = s * tl.load(K_scale + scale_rows, mask=valid, other=0.0)[None, :]
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V_cache + rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0).to(q.dtype)
        if QUANT:  # the value rows' scales, folded into the probabilities
            p = p * tl.load(V_scale + scale_rows, mask=valid, other=0.0)[None, :]
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    safe_l = tl.where(l_i > 0, l_i, 1.0)
    out = acc / safe_l[:, None]
    out_mask = g_mask[:, None] & d_mask[None, :]
    if not SPLIT:
        tl.store(Out + seq * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
                 out.to(Out.dtype.element_ty), mask=out_mask)
    else:
        # Part_out [B, H, S, BLOCK_D] fp32, Part_lse [B, H, S]; an empty split has lse = -inf.
        num_heads = tl.num_programs(1) * GROUP
        base = (seq * num_heads + heads) * num_splits + split
        lse = tl.where(l_i > 0, m_i + tl.log(safe_l), float("-inf"))
        tl.store(Part_lse + base, lse, mask=g_mask)
        tl.store(Part_out + base[:, None] * BLOCK_D + offs_d[None, :], out, mask=out_mask)
        # The last split of this (sequence, KV head) to finish merges them all, so no second
        # kernel runs: the barrier orders every thread's stores before the counter's release, the
        # acquire (and a barrier again) orders the merge's loads after the other splits' stores.
        tl.debug_barrier()
        counter = Counters + seq * tl.num_programs(1) + kvh
        if tl.atomic_add(counter, 1, sem="acq_rel") == num_splits - 1:
            tl.debug_barrier()
            for g in tl.static_range(GROUP):
                head = kvh * GROUP + g
                _merge_splits(Part_out, Part_lse, Out + seq * stride_ot + head * stride_oh,
                              (seq * num_heads + head) * num_splits, num_splits, HEAD_DIM, BLOCK_D, BLOCK_S)
            tl.store(counter, 0)  # ready for the next launch


@triton.jit
def _merge_splits(Part_out, Part_lse, Out, base, num_splits,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    """One head's output from its splits' partial results: softmax-weighted by their log-sum-exps."""
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_mask = offs_s < num_splits
    lse = tl.load(Part_lse + base + offs_s, mask=s_mask, other=float("-inf"), cache_modifier=".cg")
    top = tl.max(lse, 0)
    top = tl.where(top == float("-inf"), 0.0, top)
    w = tl.exp(lse - top)  # 0 for empty splits
    parts = tl.load(Part_out + (base + offs_s)[:, None] * BLOCK_D + offs_d[None, :],
                    mask=s_mask[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0, cache_modifier=".cg")
    total = tl.sum(w, 0)
    out = tl.sum(parts * w[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(Out + offs_d, out.to(Out.dtype.element_ty), mask=offs_d < HEAD_DIM)


def _precision(dtype: torch.dtype) -> str:
    # fp32 models get full-precision dot products (the parity tests compare fp32 with transformers).
    return "ieee" if dtype == torch.float32 else "tf32"


def choose_num_splits(batch: int, num_kv_heads: int, num_sms: int = 132, max_splits: int = 16) -> int:
    """Splits per sequence so that batch * kv_heads * splits fills the GPU about twice over."""
    programs = batch * num_kv_heads
    return max(1, min(max_splits, -(-2 * num_sms // programs)))


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                     context_lens: torch.Tensor, scale: float, num_splits: int = 1, *,
                     kv_scales: tuple[torch.Tensor, torch.Tensor] | None = None,
                     block_n: int | None = None, num_warps: int | None = None, num_stages: int = 2) -> torch.Tensor:
    """q [B, H, d] (one new token per sequence, already in the cache) -> out [B, H, d].
    The split count is a run-time argument (one compiled kernel serves every graph size).
    `kv_scales`: the per-row scales of an fp8 cache. An fp8 tile is half the bytes of a bf16 one
    for the same per-tile work, and runs best on 2 warps: on an H100 at batch 256, context 1024,
    266 us against 345 us on 4 warps (bf16 on 4 warps: 370 us, 2.9 TB/s)."""
    B, H, d = q.shape
    _, page, hkv, _ = k_cache.shape
    assert q.stride(2) == 1 and k_cache.stride() == v_cache.stride() and k_cache.stride(3) == 1
    group = H // hkv
    k_scale, v_scale = checked_scales(k_cache, kv_scales)
    out = torch.empty(B, H, d, dtype=q.dtype, device=q.device)
    block_d = triton.next_power_of_2(d)
    # tl.dot needs at least 16 rows: small query groups are padded (masked) up to 16.
    block_g = max(16, triton.next_power_of_2(group))
    pdl = use_pdl(q)
    if num_splits > 1:
        part_out = torch.empty(B, H, num_splits, block_d, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(B, H, num_splits, dtype=torch.float32, device=q.device)
        counters = _split_counters(q.device, B * hkv)
    else:
        part_out = part_lse = counters = out  # unused
    _decode_kernel[(B, hkv, num_splits)](
        q, k_cache, v_cache, k_scale, v_scale, block_tables, context_lens, out, part_out, part_lse, counters,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        out.stride(0), out.stride(1), scale, num_splits,
        GROUP=group, BLOCK_G=block_g, HEAD_DIM=d, BLOCK_D=block_d, PAGE=page,
        BLOCK_N=block_n or (64 if d <= 128 else 32), SPLIT=num_splits > 1,
        BLOCK_S=max(16, triton.next_power_of_2(num_splits)), PRECISION=_precision(q.dtype),
        QUANT=kv_scales is not None, PDL=pdl,
        num_warps=num_warps or (2 if kv_scales is not None else 4), num_stages=num_stages, **launch_options(pdl),
    )
    return out


_counters: dict[torch.device, torch.Tensor] = {}


def _split_counters(device: torch.device, n: int) -> torch.Tensor:
    """Zeroed int32 arrival counters, one per (sequence, KV head), kept for the process: each
    merge resets its counter, so a CUDA graph can replay the kernel without a memset node. Split-K
    runs only while batch * kv_heads is below twice the multiprocessors, so a few thousand suffice."""
    counters = _counters.get(device)
    if counters is None or counters.numel() < n:
        assert not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()), \
            "split counters must exist before graph capture"
        counters = _counters[device] = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
    return counters


@triton.jit
def _prefill_kernel(
    Q, K_cache, V_cache, K_scale, V_scale, Block_tables, Cu_q, Context_lens, Out,
    stride_qt, stride_qh, stride_cb, stride_cs, stride_ch, stride_bt, stride_ot, stride_oh,
    scale,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, PAGE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr, QUANT: tl.constexpr,
):
    mblock = tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    kvh = head // GROUP
    q_start = tl.load(Cu_q + seq).to(tl.int32)
    q_len = tl.load(Cu_q + seq + 1).to(tl.int32) - q_start
    ctx_len = tl.load(Context_lens + seq).to(tl.int32)
    prefix = ctx_len - q_len  # keys already cached before this chunk

    offs_m = mblock * BLOCK_M + tl.arange(0, BLOCK_M)  # query index within the chunk
    m_mask = offs_m < q_len
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    tok = (q_start + offs_m).to(tl.int64)
    q = tl.load(Q + tok[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # Keys up to the last query's position; nothing for a query block past the chunk's end.
    hi = tl.where(mblock * BLOCK_M < q_len, tl.minimum(ctx_len, prefix + (mblock + 1) * BLOCK_M), 0)
    table = Block_tables + seq.to(tl.int64) * stride_bt
    q_pos = prefix + offs_m
    for n0 in range(0, hi, BLOCK_N):
        pos = n0 + tl.arange(0, BLOCK_N)
        valid = pos < hi
        block = tl.load(table + pos // PAGE, mask=valid, other=0).to(tl.int64)
        rows = block * stride_cb + (pos % PAGE) * stride_cs + kvh * stride_ch
        kv_mask = valid[:, None] & d_mask[None, :]
        k = tl.load(K_cache + rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0).to(q.dtype)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # [M, N]
        if QUANT:
            scale_rows = (block * PAGE + pos % PAGE) * (tl.num_programs(2) // GROUP) + kvh
            s = s * tl.load(K_scale + scale_rows, mask=valid, other=0.0)[None, :]
        s = tl.where(valid[None, :] & (pos[None, :] <= q_pos[:, None]), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V_cache + rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0).to(q.dtype)
        if QUANT:
            p = p * tl.load(V_scale + scale_rows, mask=valid, other=0.0)[None, :]
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(Out + tok[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


def prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                      cu_query_lens: torch.Tensor, context_lens: torch.Tensor, max_query_len: int,
                      scale: float, kv_scales: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """q [T, H, d] of B sequences' new tokens (cu_query_lens [B+1]) -> out [T, H, d]."""
    T, H, d = q.shape
    _, page, hkv, _ = k_cache.shape
    assert q.stride(2) == 1 and k_cache.stride() == v_cache.stride() and k_cache.stride(3) == 1
    B = cu_query_lens.shape[0] - 1
    k_scale, v_scale = checked_scales(k_cache, kv_scales)
    out = torch.empty(T, H, d, dtype=q.dtype, device=q.device)
    block_d = triton.next_power_of_2(d)
    block_m = 64 if max_query_len > 32 else 16
    block_n = 64 if d <= 128 else 32
    grid = (triton.cdiv(max_query_len, block_m), B, H)
    _prefill_kernel[grid](
        q, k_cache, v_cache, k_scale, v_scale, block_tables, cu_query_lens, context_lens, out,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        out.stride(0), out.stride(1), scale,
        GROUP=H // hkv, HEAD_DIM=d, BLOCK_D=block_d, PAGE=page, BLOCK_M=block_m, BLOCK_N=block_n,
        PRECISION=_precision(q.dtype), QUANT=kv_scales is not None, num_warps=4, num_stages=2,
    )
    return out
