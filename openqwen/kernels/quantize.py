"""Quantize float weights into GGUF blocks (for `--quantize q8_0|q4_k` on fp16/bf16/fp32 checkpoints).

The legacy 32-value formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) use gguf.quants, which matches
llama.cpp bit for bit. gguf has no K-quant quantizer, so Q4_K follows llama.cpp's
quantize_row_q4_K_ref here, vectorized in PyTorch: per 32-value sub-block, make_qkx2_quants
searches 21 candidate scales for the weighted least-squares (scale, min) pair, then the 8 scales
and mins of each 256-value super-block are themselves quantized to 6 bits. Rounding ties may
resolve differently from the C code, so the bytes are close to, not identical with, llama.cpp's.
Relative RMSE on Gaussian weights: Q8_0 0.005, Q4_K 0.072 (Q4_1, at more bits: 0.078); see the
round-trip test in tests/test_quant_kernels.py. Q4_K costs about 0.4 s of one core per million values
(the 21-candidate search), so quantizing the down projections of a 0.5B model takes under a minute.
"""

from __future__ import annotations

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import quantize as gguf_quantize

Q = GGMLQuantizationType

QUANTIZABLE_TYPES = (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q4_K)

_CHUNK_VALUES = 1 << 17  # values per chunk: temporaries stay in L2 (measured 3x faster than 1 << 22)


def quantize(weight: torch.Tensor, qtype: GGMLQuantizationType) -> torch.Tensor:
    """weight[rows, K] (any float dtype) -> uint8[rows, bytes per row] of raw GGUF blocks."""
    qtype = GGMLQuantizationType(qtype)
    if qtype not in QUANTIZABLE_TYPES:
        names = [t.name for t in QUANTIZABLE_TYPES]
        raise NotImplementedError(f"no quantizer for {qtype.name}; available: {names}")
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(weight.shape)}")
    rows, k = weight.shape
    block, _ = GGML_QUANT_SIZES[qtype]
    if k % block:
        raise ValueError(f"{qtype.name} needs rows of a multiple of {block} values, got {k}")
    step = max(1, _CHUNK_VALUES // k)
    chunks = []
    for start in range(0, rows, step):
        w = weight[start:start + step].detach().to("cpu", torch.float32)
        if qtype == Q.Q4_K:
            chunks.append(_quantize_q4_k(w))
        else:
            chunks.append(torch.from_numpy(gguf_quantize(w.numpy(), qtype)))
    return torch.cat(chunks) if len(chunks) > 1 else chunks[0]


def _make_qkx2_quants(
    x: torch.Tensor, weights: torch.Tensor, nmax: int = 15
) -> tuple[torch.Tensor, torch.Tensor]:
    """x, weights[S, 32] -> (scale[S], min[S]) with x ~ scale * L - min, L in [0, nmax], min >= 0.

    llama.cpp's make_qkx2_quants(rmin=-1, rdelta=0.1, nstep=20): start from the min/max grid, then
    try iscale = (nmax - 1 + 0.1 * i) / (max - min) for i = 0..20 and keep the weighted
    least-squares fit with the lowest weighted squared error. The error of a candidate is expanded
    into the weighted sums the fit needs anyway (in float64, against cancellation), which saves
    a pass over the values per candidate.
    """
    lo = x.amin(dim=-1).clamp(max=0)
    span = x.amax(dim=-1) - lo
    flat = span == 0
    span = torch.where(flat, torch.ones_like(span), span)
    shifted = x - lo[:, None]
    wx = weights * x
    sum_w = weights.sum(-1).double()
    sum_x = wx.sum(-1).double()
    sum_x2 = (wx * x).sum(-1).double()

    def candidate(iscale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        levels = torch.round(shifted * iscale[:, None]).clamp_(0, nmax)
        wl = weights * levels
        return wl.sum(-1).double(), (wl * levels).sum(-1).double(), (wl * x).sum(-1).double()

    def error(scale, offset, sum_l, sum_l2, sum_xl):  # sum of w * (scale * L + offset - x)^2
        return (scale * scale * sum_l2 + 2 * scale * offset * sum_l - 2 * scale * sum_xl
                + offset * offset * sum_w - 2 * offset * sum_x + sum_x2)

    best_scale = (span / nmax).double()
    best_min = lo.double()
    best_err = error(best_scale, best_min, *candidate(nmax / span))
    for step in range(21):
        sum_l, sum_l2, sum_xl = candidate((nmax - 1 + 0.1 * step) / span)
        det = sum_w * sum_l2 - sum_l * sum_l
        ok = det > 0
        det = torch.where(ok, det, torch.ones_like(det))
        scale = (sum_w * sum_xl - sum_x * sum_l) / det
        offset = (sum_l2 * sum_x - sum_l * sum_xl) / det
        positive = offset > 0  # the grid must reach down to zero: refit the scale alone
        offset = torch.where(positive, torch.zeros_like(offset), offset)
        scale = torch.where(positive, sum_xl / sum_l2.clamp(min=1e-300), scale)
        err = error(scale, offset, sum_l, sum_l2, sum_xl)
        better = ok & (err < best_err)
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        best_min = torch.where(better, offset, best_min)
    best_scale = torch.where(flat, torch.zeros_like(best_scale), best_scale)
    return best_scale.float(), -best_min.float()


def _fp16_bytes(v: torch.Tensor) -> torch.Tensor:
    """[n] float -> [n, 2] little-endian fp16 bytes."""
    return v.to(torch.float16).view(torch.uint8).reshape(-1, 2)


def _quantize_q4_k(w: torch.Tensor) -> torch.Tensor:
    """w[rows, K] fp32, K % 256 == 0 -> uint8[rows, K / 256 * 144] (llama.cpp quantize_row_q4_K_ref)."""
    rows, k = w.shape
    nb = rows * k // 256
    x = w.reshape(nb, 8, 32)
    # Weight large values more, relative to the sub-block's RMS (as llama.cpp does without imatrix).
    av_x = x.square().mean(-1, keepdim=True).sqrt()
    scales, mins = _make_qkx2_quants(x.reshape(-1, 32), (av_x + x.abs()).reshape(-1, 32))
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)

    # Second level: 6-bit scales and mins relative to the super-block's fp16 d and dmin.
    max_scale = scales.amax(-1, keepdim=True)
    max_min = mins.amax(-1, keepdim=True)
    inv_scale = torch.where(max_scale > 0, 63 / max_scale.clamp(min=1e-30), torch.zeros_like(max_scale))
    inv_min = torch.where(max_min > 0, 63 / max_min.clamp(min=1e-30), torch.zeros_like(max_min))
    ls = torch.round(inv_scale * scales).clamp(0, 63).to(torch.uint8)
    lm = torch.round(inv_min * mins).clamp(0, 63).to(torch.uint8)
    d16 = (max_scale / 63).to(torch.float16)
    dmin16 = (max_min / 63).to(torch.float16)

    # Requantize against the scales as stored, so rounding of d, dmin and the 6-bit codes is absorbed.
    d = (d16.float() * ls.float())[..., None]
    dm = (dmin16.float() * lm.float())[..., None]
    levels = torch.round((x + dm) / torch.where(d > 0, d, torch.ones_like(d))).clamp(0, 15)
    levels = torch.where(d > 0, levels, torch.zeros_like(levels)).to(torch.uint8)

    packed = torch.empty(nb, 12, dtype=torch.uint8)
    packed[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:8] & 15) | ((lm[:, 4:8] & 15) << 4)
    # qs: 64-value chunk c keeps sub-block 2c in the low nibbles and 2c + 1 in the high nibbles.
    pairs = levels.reshape(nb, 4, 2, 32)
    qs = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(nb, 128)
    blocks = torch.cat([_fp16_bytes(d16.reshape(-1)), _fp16_bytes(dmin16.reshape(-1)), packed, qs], dim=1)
    return blocks.reshape(rows, k // 256 * 144)

