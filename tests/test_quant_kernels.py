"""QuantLinear and its kernels against gguf's reference dequantizer.

Error budget of a quantized matmul: the kernels (native and PyTorch alike) round each activation to
q * d with d = amax / 127 per block of B values (B = 32, or 256 for the K-quants), so every x_i
moves by at most d / 2 = amax / 254 and |y - x @ W^T| <= sum_i |W_ni| * amax(block of i) / 254.
The tests use that bound (relative error of a dot product around 1e-2 of the |x| . |w| scale,
typically 1e-3) plus 1e-5 of |x| . |w| for float rounding. The native and PyTorch paths compute the same integers and differ only in float
rounding order (~1e-7 of |x| . |w|); a single activation rounded differently would show as
~1e-4, so they must agree within 1e-5.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from openqwen.hardware import usable_cores
from openqwen.kernels import QuantLinear, quantize
from openqwen.kernels import quant as kq
from openqwen.kernels.huge_pages import HUGE_PAGE, HugePageArena

Q = GGMLQuantizationType
TYPES = kq.SUPPORTED_TYPES
K_QUANTS = (Q.Q4_K, Q.Q5_K, Q.Q6_K)

needs_native = pytest.mark.skipif(
    not kq.native_available(),
    reason="openqwen._quant_native is not built (no C++ compiler at install time); PyTorch path only",
)


def random_blocks(qtype: GGMLQuantizationType, rows: int, k: int, seed: int = 0) -> np.ndarray:
    """Valid blocks with every quant bit pattern: random bytes, then sane fp16 scales."""
    rng = np.random.default_rng(seed)
    block, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows, k // block, size), dtype=np.uint8)

    def fp16(scale: float) -> np.ndarray:
        values = (rng.standard_normal((rows, k // block)) * scale).astype(np.float16)
        return values.view(np.uint8).reshape(rows, -1, 2)

    if qtype == Q.Q6_K:
        raw[..., 208:210] = fp16(0.002)
    else:
        raw[..., 0:2] = fp16(0.01 if qtype in K_QUANTS else 0.05)
        if qtype in (Q.Q4_1, Q.Q5_1, Q.Q4_K, Q.Q5_K):
            raw[..., 2:4] = fp16(0.01)
    return raw.reshape(rows, -1)


def reference(
    raw: np.ndarray, qtype: GGMLQuantizationType, x: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x @ W^T in float64, the activation-quantization error bound, the |x| . |w| scale)."""
    w = gguf_dequantize(raw, qtype).astype(np.float64)
    x64 = x.double().numpy()
    block = kq.activation_block(qtype)
    amax = np.abs(x64.reshape(x64.shape[0], -1, block)).max(-1)
    step = np.repeat(amax, block, axis=1) / 254
    scale = np.abs(x64) @ np.abs(w).T
    return x64 @ w.T, step @ np.abs(w).T + 1e-5 * scale, scale


def select_path(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """'native': the compiled kernels (skip if absent); 'torch': as if the extension were missing."""
    if path == "native" and not kq.native_available():
        pytest.skip("openqwen._quant_native is not built")
    if path == "torch":
        monkeypatch.setattr(kq, "_native", None)


@pytest.fixture
def restore_threads():
    n = kq.get_num_threads()
    yield
    kq.set_num_threads(n)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("path", ["native", "torch"])
def test_dequantize_is_bit_identical_to_gguf(qtype, path, monkeypatch):
    select_path(path, monkeypatch)
    raw = random_blocks(qtype, 5, 512)
    layer = QuantLinear.from_raw(raw, qtype, 5, 512)
    np.testing.assert_array_equal(layer.dequantize().numpy(), gguf_dequantize(raw, qtype))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("T", [1, 3, 17])
@pytest.mark.parametrize("path", ["native", "torch"])
def test_matmul_within_activation_quantization_bound(qtype, T, path, monkeypatch):
    select_path(path, monkeypatch)
    n, k = 67, 768
    raw = random_blocks(qtype, n, k, seed=T)
    x = torch.randn(T, k, generator=torch.Generator().manual_seed(T))
    x[:, :32] *= 20  # one loud block, as real activations have
    y = QuantLinear.from_raw(raw, qtype, n, k)(x).double().numpy()
    ref, bound, _ = reference(raw, qtype, x)
    assert (np.abs(y - ref) <= bound).all()


@needs_native
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("T", [1, 3, 17])
def test_native_matches_torch_path(qtype, T, monkeypatch):
    n, k = 45, 1024 if qtype in K_QUANTS else 928  # 29 blocks: SIMD groups of 8 plus a tail
    raw = random_blocks(qtype, n, k, seed=10 + T)
    layer = QuantLinear.from_raw(raw, qtype, n, k)
    x = torch.randn(T, k, generator=torch.Generator().manual_seed(T))
    native = layer(x).double().numpy()
    monkeypatch.setattr(kq, "_native", None)
    fallback = layer(x).double().numpy()
    _, _, scale = reference(raw, qtype, x)
    assert (np.abs(native - fallback) <= 1e-5 * scale).all()


@needs_native
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_scalar_kernels_match_simd(qtype):
    """The portable C++ path (other CPUs) against the SIMD one this CPU selected."""
    native = kq._native
    simd = native.isa()
    if simd == "scalar":
        pytest.skip("this CPU has no SIMD path to compare with")
    n, k, T = 33, 512, 6
    raw = random_blocks(qtype, n, k, seed=3)
    layer = QuantLinear.from_raw(raw, qtype, n, k)
    x = torch.randn(T, k, generator=torch.Generator().manual_seed(5))
    y_simd = layer(x)
    try:
        assert native.set_isa("scalar")
        y_scalar = layer(x)
    finally:
        native.set_isa(simd)
    _, _, scale = reference(raw, qtype, x)
    assert (np.abs(y_simd.double().numpy() - y_scalar.double().numpy()) <= 1e-5 * scale).all()


@needs_native
@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q5_0, Q.Q4_K, Q.Q6_K], ids=lambda t: t.name)
@pytest.mark.parametrize("n", [1, 7, 1021])
def test_thread_counts_give_identical_results(qtype, n, restore_threads):
    k = 1536  # 1021 rows: several pool chunks of uneven size
    raw = random_blocks(qtype, n, k, seed=n)
    layer = QuantLinear.from_raw(raw, qtype, n, k)
    x = torch.randn(5, k, generator=torch.Generator().manual_seed(1))
    results = []
    for threads in (1, 2, 3):
        kq.set_num_threads(threads)
        assert kq.get_num_threads() == threads
        results.append(layer(x))
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)
    torch.testing.assert_close(results[2], results[0], rtol=0, atol=0)


def _native_gguf_layout(layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """layer(x) through the native kernel for the GGUF blocks themselves, not native_weight()."""
    y = torch.empty(x.shape[0], layer.out_features)
    kq._native.mul_mat(layer._qtype_id, layer.qweight.data_ptr(), x.data_ptr(), y.data_ptr(), x.shape[0],
                       layer.out_features, layer.in_features)
    return y


@needs_native
@pytest.mark.parametrize("k", [32, 96, 224, 256, 800, 896, 928])  # 1 to 29 blocks: odd tails, short groups
@pytest.mark.parametrize("T", [1, 2, 5, 17])  # 17: the decoded many-row path
def test_q5_0_native_copy_is_bit_identical(k, T, restore_threads):
    """QuantLinear.native_weight's Q5_0 copy (Q5_0_PAIRS on AVX2) gives the GGUF kernel's results bit for bit."""
    kq.set_num_threads(2)
    n = 37
    layer = QuantLinear.from_raw(random_blocks(Q.Q5_0, n, k, seed=k + T), Q.Q5_0, n, k)
    x = torch.randn(T, k, generator=torch.Generator().manual_seed(k))
    torch.testing.assert_close(layer(x), _native_gguf_layout(layer, x), rtol=0, atol=0)
    simd = kq._native.isa()
    try:  # the portable kernels have no kernel for the copy's layout and unpack it
        kq._native.set_isa("scalar")
        torch.testing.assert_close(layer(x), _native_gguf_layout(layer, x), rtol=0, atol=0)
    finally:
        kq._native.set_isa(simd)


@needs_native
@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1], ids=lambda t: t.name)
@pytest.mark.parametrize("k", [96, 224, 928])  # 3, 7 and 29 blocks: short last groups, odd pairs
def test_many_rows_decode_once_with_identical_results(qtype, k, restore_threads):
    """From 16 activation rows on, the SIMD kernels decode each weight row once for all of them:
    the results are those of 4-row calls, which decode it per call, bit for bit."""
    kq.set_num_threads(2)
    layer = QuantLinear.from_raw(random_blocks(qtype, 37, k, seed=k), qtype, 37, k)
    x = torch.randn(24, k, generator=torch.Generator().manual_seed(k))
    per_tile = torch.cat([layer(x[i:i + 4]) for i in range(0, 24, 4)])
    torch.testing.assert_close(layer(x), per_tile, rtol=0, atol=0)


@needs_native
def test_q5_0_native_copy_follows_qweight():
    n, k = 16, 256
    raw = random_blocks(Q.Q5_0, n, k, seed=1)
    layer = QuantLinear.from_raw(torch.from_numpy(raw.copy()), Q.Q5_0, n, k)
    x = torch.randn(1, k)
    layer(x)
    wtype, ptr = layer.native_weight()
    assert set(layer.state_dict()) == {"qweight"}
    torch.testing.assert_close(layer.dequantize(), torch.from_numpy(gguf_dequantize(raw, Q.Q5_0)), rtol=0, atol=0)
    other = random_blocks(Q.Q5_0, n, k, seed=2)
    layer.load_state_dict({"qweight": torch.from_numpy(other)})  # written in place
    expected = QuantLinear.from_raw(other, Q.Q5_0, n, k)(x)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    assert layer.native_weight() == (wtype, ptr)  # rebuilt where a decode plan may point


@needs_native
@pytest.mark.parametrize("qtype", [Q.Q5_0, Q.Q8_0, Q.Q4_K])
def test_placed_weights_compute_the_same(qtype):
    """place_native_weight (huge pages): Q5_0's re-laid copy is written into the given memory, other
    types move qweight there; results, GGUF bytes and in-place writes behave as before."""
    n, k = 24, 512
    raw = random_blocks(qtype, n, k, seed=3)
    layer = QuantLinear.from_raw(torch.from_numpy(raw.copy()), qtype, n, k)
    x = torch.randn(3, k)
    expected = layer(x)
    memory = HugePageArena().empty(layer.qweight.numel())
    replaced = layer.place_native_weight(memory)
    assert layer.native_weight()[1] == memory.data_ptr()
    assert (replaced is None) == (layer.native_weight()[0] != int(qtype))  # a re-laid copy keeps qweight
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    torch.testing.assert_close(layer.qweight, torch.from_numpy(raw), rtol=0, atol=0)
    other = random_blocks(qtype, n, k, seed=4)
    layer.load_state_dict({"qweight": torch.from_numpy(other)})
    torch.testing.assert_close(layer(x), QuantLinear.from_raw(other, qtype, n, k)(x), rtol=0, atol=0)


@needs_native
@pytest.mark.parametrize("qtype", [Q.Q5_0, Q.Q8_0])
def test_placing_releases_the_file_bytes(qtype):
    """Once the kernels read a weight from the arena (moved there, or re-laid into a copy), its GGUF
    bytes go to release_pages at once, so a load never holds both."""
    n, k = 24, 512
    layer = QuantLinear.from_raw(torch.from_numpy(random_blocks(qtype, n, k, seed=5)), qtype, n, k)
    source = layer.qweight
    released = []
    kq.place_native_weights([layer], HugePageArena(), released.append)
    assert len(released) == 1 and released[0] is source
    assert layer.native_weight()[1] != source.data_ptr()


def test_huge_page_arena_hands_out_disjoint_aligned_memory():
    arena = HugePageArena(chunk_bytes=HUGE_PAGE)
    sizes = [100, 1 << 20, 1000, 3 * HUGE_PAGE, 64]  # the 6 MiB one gets a chunk of its own
    tensors = [arena.empty(n) for n in sizes]
    assert [t.numel() for t in tensors] == sizes and all(t.dtype == torch.uint8 for t in tensors)
    assert all(t.data_ptr() % 64 == 0 for t in tensors)
    assert tensors[3].data_ptr() % HUGE_PAGE == 0
    for i, t in enumerate(tensors):
        t.fill_(i)
    assert all(bool((t == i).all()) for i, t in enumerate(tensors))  # no overlaps


@needs_native
@pytest.mark.parametrize("k", [32, 224, 928])  # 1, 7 and 29 blocks: short groups, odd tails
def test_dequantize_reads_the_packed_copy(k):
    """With a re-laid Q5_0 copy, dequantize() reads that copy (a model may have released the GGUF
    bytes' pages) and still gives gguf's dequantizer's values."""
    if kq._native.packed_type(int(Q.Q5_0)) == int(Q.Q5_0):
        pytest.skip("these kernels read Q5_0 as is: there is no copy")
    n = 8
    raw = random_blocks(Q.Q5_0, n, k, seed=k)
    layer = QuantLinear.from_raw(torch.from_numpy(raw.copy()), Q.Q5_0, n, k)
    layer(torch.randn(1, k))
    assert layer.has_packed_copy()
    layer.qweight.data.zero_()  # behind the version counter: only a read of qweight would see it
    torch.testing.assert_close(layer.dequantize(), torch.from_numpy(gguf_dequantize(raw, Q.Q5_0)), rtol=0, atol=0)


@needs_native
def test_pool_wakes_sleeping_workers(restore_threads):
    """Workers sleep after ~100 us idle; the next call must wake them, not hang or skip work."""
    kq.set_num_threads(2)
    n, k = 2048, 1024
    raw = random_blocks(Q.Q8_0, n, k)
    layer = QuantLinear.from_raw(raw, Q.Q8_0, n, k)
    x = torch.randn(1, k)
    expected = layer(x)
    for _ in range(5):
        time.sleep(0.005)
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)


@needs_native
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_gets_a_working_pool(restore_threads):
    kq.set_num_threads(2)
    n, k = 2048, 1024
    layer = QuantLinear.from_raw(random_blocks(Q.Q8_0, n, k), Q.Q8_0, n, k)
    x = torch.randn(2, k)
    expected = layer(x)
    pid = os.fork()
    if pid == 0:  # child: the parent's workers do not exist here
        ok = torch.equal(layer(x), expected)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@pytest.mark.parametrize("path", ["native", "torch"])
def test_forward_keeps_leading_dims_dtype_and_adds_bias(path, monkeypatch):
    select_path(path, monkeypatch)
    n, k = 24, 256
    raw = random_blocks(Q.Q4_K, n, k)
    bias = torch.randn(n)
    layer = QuantLinear.from_raw(torch.from_numpy(raw), Q.Q4_K, n, k, bias=bias)
    x = torch.randn(2, 3, k)
    y = layer(x)
    assert y.shape == (2, 3, n) and y.dtype == torch.float32
    flat = QuantLinear.from_raw(raw, Q.Q4_K, n, k)(x.reshape(6, k)) + bias
    torch.testing.assert_close(y.reshape(6, n), flat, rtol=0, atol=0)
    y16 = layer(x.to(torch.bfloat16))
    assert y16.dtype == torch.bfloat16 and y16.shape == (2, 3, n)
    assert layer(torch.empty(0, k)).shape == (0, n)


def test_rejects_bad_shapes_and_types():
    with pytest.raises(ValueError, match="multiple of 256"):
        QuantLinear(896, 4, Q.Q4_K)
    with pytest.raises(ValueError, match="unsupported"):
        QuantLinear(256, 4, Q.IQ2_XS)
    with pytest.raises(ValueError, match="bytes"):
        QuantLinear.from_raw(np.zeros(100, np.uint8), Q.Q8_0, 4, 64)
    layer = QuantLinear.from_raw(random_blocks(Q.Q8_0, 4, 64), Q.Q8_0, 4, 64)
    with pytest.raises(ValueError, match="last dimension"):
        layer(torch.randn(2, 32))


@needs_native
def test_native_rejects_bad_arguments():
    native = kq._native
    with pytest.raises(ValueError, match="unsupported GGML type"):
        native.mul_mat(99, 0, 0, 0, 1, 1, 32)
    with pytest.raises(ValueError, match="multiple of the block size"):
        native.mul_mat(int(Q.Q4_K), 0, 0, 0, 1, 1, 896)
    with pytest.raises(TypeError):
        native.mul_mat(int(Q.Q8_0), 0, 0)
    with pytest.raises(ValueError):
        native.set_num_threads(0)


# Relative RMSE of quantize() on Gaussian weights; theory for a uniform grid: step / sqrt(12) / std.
RMSE_BOUNDS = {Q.Q8_0: 0.007, Q.Q4_0: 0.095, Q.Q4_1: 0.085, Q.Q5_0: 0.048, Q.Q5_1: 0.043, Q.Q4_K: 0.077}


@pytest.mark.parametrize("qtype", list(RMSE_BOUNDS), ids=lambda t: t.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantizer_round_trip(qtype, dtype):
    w = (torch.randn(96, 1024, generator=torch.Generator().manual_seed(0)) * 0.02).to(dtype)
    raw = quantize(w, qtype)
    block, size = GGML_QUANT_SIZES[qtype]
    assert raw.dtype == torch.uint8 and raw.shape == (96, 1024 // block * size)
    back = torch.from_numpy(gguf_dequantize(raw.numpy(), qtype))
    ref = w.float()
    rel_rmse = ((back - ref).square().mean().sqrt() / ref.square().mean().sqrt()).item()
    assert rel_rmse < RMSE_BOUNDS[qtype]


def test_q4_k_quantizer_handles_constant_and_zero_sub_blocks():
    w = torch.zeros(2, 256)
    w[0, :32] = 0.5  # constant positive sub-block
    w[1, 32:64] = -0.25  # constant negative sub-block
    back = torch.from_numpy(gguf_dequantize(quantize(w, Q.Q4_K).numpy(), Q.Q4_K))
    torch.testing.assert_close(back, w, rtol=0, atol=2e-3)


def test_from_float_tracks_the_float_layer():
    w = torch.randn(64, 512) * 0.05
    x = torch.randn(4, 512)
    layer = QuantLinear.from_float(w, Q.Q8_0, bias=torch.ones(64))
    expected = F.linear(x, w, torch.ones(64))
    assert (layer(x) - expected).abs().max() < 0.02 * expected.abs().max()


def test_quantize_rejects_unsupported():
    with pytest.raises(NotImplementedError):
        quantize(torch.randn(4, 256), Q.Q6_K)
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize(torch.randn(4, 896), Q.Q4_K)


def test_default_thread_count_is_bounded_by_cores():
    assert 1 <= kq._default_num_threads() <= usable_cores()


def test_usable_cores_without_affinity_masks(monkeypatch):
    """macOS and Windows have no os.sched_getaffinity: every core counts."""
    monkeypatch.delattr(os, "sched_getaffinity")
    assert usable_cores() == (os.cpu_count() or 1)
    assert 1 <= kq._default_num_threads() <= usable_cores()
