// AVX-512 kernels (F, BW, DQ and VNNI: Ice Lake, Cascade Lake, Sapphire Rapids and later Xeons,
// AMD Zen 4 and later). The AVX2 strategy (quant_avx2.cpp) on 64-byte vectors, with the
// instructions AVX-512 adds where they remove work:
//  - legacy blocks go two at a time, and VNNI's vpdpbusd multiplies their unsigned weights by the
//    int8 activations and sums in one instruction (AVX2 needs maddubs and madd per 32 weights);
//    Q8_0 becomes unsigned like the others by flipping its sign bit, the -128 offset going through
//    the activation sums as Q4_0's -8 does;
//  - fifth bits (Q5_0, Q5_1, Q5_K) come from a mask register, one masked add per 64 weights, so
//    Q5_0 runs on its GGUF blocks with no re-laid copy;
//  - K-quants take a chunk of 64 weights (two sub-blocks) per vector, and vpdpwssd applies the
//    sub-block scales and accumulates in one step.
// Activation quantization is AVX2's, so both paths see the same int8 activations. Results agree
// with the other paths within float rounding order (tests/native/simd_kernels_check.cpp). Building
// with OQ_SIMDE (tests only) runs the same code through SIMDe's portable AVX-512, so that check
// also covers these kernels on CPUs without AVX-512.
#include "quant_common.h"

#if defined(__x86_64__) || defined(__i386__)
#include "avx2_common.h"

#if defined(OQ_SIMDE)
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#define OQ_AVX512 OQ_AVX2
#else
#define OQ_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vnni,avx2,fma,f16c")))
#endif
#define OQ_AVX512_INLINE OQ_AVX512 __attribute__((always_inline)) inline

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's avx512fintrin.h warns about its own _mm512_undefined_* (GCC bug 105593, fixed in 13).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace oq {
namespace {

OQ_AVX512_INLINE __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
OQ_AVX512_INLINE __m512i load512(const void* p) { return _mm512_loadu_si512(p); }

OQ_AVX512_INLINE float hsum512(__m512 v) {
    return hsum(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
}

// A 64-bit value in each of the eight 64-bit lanes [lo x4 | hi x4]: a different constant per
// 256-bit half.
OQ_AVX512_INLINE __m512i halves(int64_t lo, int64_t hi) { return _mm512_set_epi64(hi, hi, hi, hi, lo, lo, lo, lo); }

// The 16 bytes of packed nibbles at a and at b -> 64 bytes: a's low nibbles, a's high nibbles,
// b's low, b's high (weights 0-31 of each block in order).
OQ_AVX512_INLINE __m512i nibbles2(const uint8_t* a, const uint8_t* b) {
    // a's bytes in 128-bit lanes 0-1, b's in 2-3: broadcast loads, no shuffle on the busiest port
    const __m128i qa = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a));
    const __m128i qb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b));
    const __m512i v = _mm512_mask_broadcast_i32x4(_mm512_broadcast_i32x4(qa), 0xff00, qb);
    return _mm512_and_si512(_mm512_srlv_epi64(v, _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0)), _mm512_set1_epi8(15));
}

// Adds 0x10 to byte j where bit j of the 64-bit (qh of block b) << 32 | (qh of block a) is set.
OQ_AVX512_INLINE __m512i with_fifth_bits(__m512i q, const uint8_t* qh_a, const uint8_t* qh_b) {
    const auto bits = static_cast<__mmask64>(load_u32(qh_a) | static_cast<uint64_t>(load_u32(qh_b)) << 32);
    return _mm512_mask_add_epi8(q, bits, q, _mm512_set1_epi8(0x10));
}

// 32-weight block types: quants2(a, b) returns blocks a and b as 64 unsigned bytes. The block's
// w = s * q + c has s = the fp16 at offset 0 and c = kZero * s (the unsigned quants are offset) or
// c = the fp16 min at offset 2 (kMin).
struct BlockQ4_0 {
    static constexpr int kBytes = 18;
    static constexpr bool kMin = false;
    static constexpr float kZero = -8.0f;
    OQ_AVX512 static __m512i quants2(const uint8_t* a, const uint8_t* b) { return nibbles2(a + 2, b + 2); }
};

struct BlockQ4_1 {
    static constexpr int kBytes = 20;
    static constexpr bool kMin = true;
    static constexpr float kZero = 0.0f;
    OQ_AVX512 static __m512i quants2(const uint8_t* a, const uint8_t* b) { return nibbles2(a + 4, b + 4); }
};

struct BlockQ5_0 {
    static constexpr int kBytes = 22;
    static constexpr bool kMin = false;
    static constexpr float kZero = -16.0f;
    OQ_AVX512 static __m512i quants2(const uint8_t* a, const uint8_t* b) {
        return with_fifth_bits(nibbles2(a + 6, b + 6), a + 2, b + 2);
    }
};

struct BlockQ5_1 {
    static constexpr int kBytes = 24;
    static constexpr bool kMin = true;
    static constexpr float kZero = 0.0f;
    OQ_AVX512 static __m512i quants2(const uint8_t* a, const uint8_t* b) {
        return with_fifth_bits(nibbles2(a + 8, b + 8), a + 4, b + 4);
    }
};

struct BlockQ8_0 {  // signed quants q read as unsigned q + 128
    static constexpr int kBytes = 34;
    static constexpr bool kMin = false;
    static constexpr float kZero = -128.0f;
    OQ_AVX512 static __m512i quants2(const uint8_t* a, const uint8_t* b) {
        const __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(load256(a + 2)), load256(b + 2), 1);
        return _mm512_xor_si512(q, _mm512_set1_epi8(static_cast<char>(0x80)));
    }
};

// One independent accumulator per activation row, two for a single row: one FMA chain would cap
// it at one pair of blocks per FMA latency.
template <int TT>
constexpr int kChains = TT == 1 ? 2 : 1;

// Blocks 2p and 2p + 1 of a group (just 2p where `two` is false) against activation rows t0 .. t0 + TT.
// xq[u]: row t0 + u's activations at the group's first block; scale[u]: the group's 8 products of
// weight and activation scales in lanes 0-7.
template <class B, int TT>
OQ_AVX512_INLINE void dot_pair(const uint8_t* blk, int p, bool two, const int8_t* const* xq, const __m512* scale,
                               __m512* acc) {
    const uint8_t* a = blk + 2 * p * B::kBytes;
    const __m512i q = B::quants2(a, two ? a + B::kBytes : a);  // a lone block's copy meets zeros
    const __m512i pick = _mm512_add_epi32(halves(0, 0x0000000100000001), _mm512_set1_epi32(2 * p));
    for (int u = 0; u < TT; ++u) {
        const int8_t* x = xq[u] + 2 * p * kQK;
        const __m512i xv = two ? load512(x) : _mm512_inserti64x4(_mm512_setzero_si512(), load256(x), 0);
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, xv);
        acc[u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(pick, scale[u]), acc[u]);
    }
}

// One weight row of a 32-weight block type against activation rows t0 .. t0 + TT; results go to
// y[u * ldy]. Blocks go in groups of 8, whose scales are converted and multiplied in one vector.
template <class B, int TT>
OQ_AVX512_INLINE void row_32(const uint8_t* row, const QAct& x, int64_t t0, float* y, int64_t ldy) {
    constexpr int kC = kChains<TT>;
    const int64_t nb = x.K / kQK;
    __m512 acc[kC][TT];
    __m256 corr[TT];
    for (int u = 0; u < TT; ++u) {
        for (int c = 0; c < kC; ++c) acc[c][u] = _mm512_setzero_ps();
        corr[u] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < nb; b += 8) {
        const int count = nb - b < 8 ? static_cast<int>(nb - b) : 8;
        const uint8_t* blk = row + b * B::kBytes;
        prefetch_ahead(blk, 8 * B::kBytes);
        const __m256 s = gather_fp16(blk, B::kBytes, count);  // zero past count
        const __m256 mins = B::kMin ? gather_fp16(blk + 2, B::kBytes, count) : _mm256_setzero_ps();
        __m512 scale[TT];
        const int8_t* xq[TT];
        for (int u = 0; u < TT; ++u) {
            const int64_t g = (t0 + u) * nb + b;  // x.d / x.ds may be read past the row: padded, finite
            xq[u] = x.q + g * kQK;
            scale[u] = _mm512_castps256_ps512(_mm256_mul_ps(s, _mm256_loadu_ps(x.d + g)));
            const __m256 c = B::kMin ? mins : s;
            if (B::kMin || B::kZero != 0.0f) corr[u] = _mm256_fmadd_ps(c, _mm256_loadu_ps(x.ds + g), corr[u]);
        }
        for (int p = 0; p < 4 && 2 * p < count; ++p) dot_pair<B, TT>(blk, p, 2 * p + 1 < count, xq, scale, acc[p % kC]);
    }
    for (int u = 0; u < TT; ++u) {
        for (int c = 1; c < kC; ++c) acc[0][u] = _mm512_add_ps(acc[0][u], acc[c][u]);
        const float c = B::kMin ? hsum(corr[u]) : B::kZero * hsum(corr[u]);
        y[u * ldy] = hsum512(acc[0][u]) + c;
    }
}

// The index vector for vpermw that gives int16 lanes 8i .. 8i + 7 the value at index q_i.
OQ_AVX512_INLINE __m512i lanes16(int64_t q0, int64_t q1, int64_t q2, int64_t q3) {
    constexpr int64_t kEach = 0x0001000100010001;
    return _mm512_set_epi64(q3 * kEach, q3 * kEach, q2 * kEach, q2 * kEach, q1 * kEach, q1 * kEach, q0 * kEach,
                            q0 * kEach);
}

// Q4_K / Q5_K against 256-value activation blocks: chunk j of 64 weights is sub-blocks 2j (low
// nibbles) and 2j + 1 (high nibbles), one vector; the mins go through the activation bsums.
template <bool kFifthBit, int TT>
OQ_AVX512_INLINE void row_q45_k(const uint8_t* row, const QAct& x, int64_t t0, float* y, int64_t ldy) {
    constexpr int kBytes = kFifthBit ? 176 : 144;
    const int64_t nsb = x.K / kQKK;
    const __m512i m4 = _mm512_set1_epi8(15);
    __m512 acc[TT];
    __m128 acc_min[TT];
    for (int u = 0; u < TT; ++u) {
        acc[u] = _mm512_setzero_ps();
        acc_min[u] = _mm_setzero_ps();
    }
    for (int64_t sb = 0; sb < nsb; ++sb) {
        const uint8_t* blk = row + sb * kBytes;
        prefetch_ahead(blk, kBytes);
        uint64_t sc, mn;
        k_scales(blk + 4, sc, mn);
        const __m512i sc16 = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<int64_t>(sc))));
        const __m128i mn16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<int64_t>(mn)));
        const float d = f16(blk), dmin = f16(blk + 2);
        __m512i isum[TT];
        for (int u = 0; u < TT; ++u) {
            const int64_t t = t0 + u;
            const __m128 m = k_mins(x.bsums + t * (x.K / 16) + sb * 16, mn16);
            acc_min[u] = _mm_fmadd_ps(m, _mm_set1_ps(dmin * x.d[t * nsb + sb]), acc_min[u]);
            isum[u] = _mm512_setzero_si512();
        }
        const uint8_t* qs = blk + (kFifthBit ? 48 : 16);
        const __m512i qh = kFifthBit ? _mm512_broadcast_i64x4(load256(blk + 16)) : _mm512_setzero_si512();
        for (int j = 0; j < 4; ++j) {
            const __m512i v = _mm512_broadcast_i64x4(load256(qs + 32 * j));
            __m512i q = _mm512_and_si512(_mm512_srlv_epi64(v, halves(0, 4)), m4);
            if (kFifthBit) {  // bit 2j of qh[l] for the low half, bit 2j + 1 for the high half
                const int64_t bit = 0x0101010101010101LL << (2 * j);
                const __mmask64 set = _mm512_test_epi8_mask(qh, halves(bit, bit << 1));
                q = _mm512_mask_add_epi8(q, set, q, _mm512_set1_epi8(0x10));
            }
            const __m512i scale = _mm512_permutexvar_epi16(lanes16(2 * j, 2 * j, 2 * j + 1, 2 * j + 1), sc16);
            for (int u = 0; u < TT; ++u) {
                const __m512i xv = load512(x.q + (t0 + u) * x.K + sb * kQKK + 64 * j);
                isum[u] = _mm512_dpwssd_epi32(isum[u], _mm512_maddubs_epi16(q, xv), scale);
            }
        }
        for (int u = 0; u < TT; ++u) {
            const __m512 s = _mm512_set1_ps(d * x.d[(t0 + u) * nsb + sb]);
            acc[u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[u]), s, acc[u]);
        }
    }
    for (int u = 0; u < TT; ++u) y[u * ldy] = hsum512(acc[u]) - hsum128(acc_min[u]);
}

// Q6_K: per half h of a super-block, ql[64h..64h+64) and qh[32h..32h+32) give the 128 weights as
// two vectors, [q0 | q1] and [q2 | q3] in quant_avx2.cpp's terms; 16 sub-blocks of 16 weights.
template <int TT>
OQ_AVX512_INLINE void row_q6_k(const uint8_t* row, const QAct& x, int64_t t0, float* y, int64_t ldy) {
    const int64_t nsb = x.K / kQKK;
    const __m512i m4 = _mm512_set1_epi8(15), bits45 = _mm512_set1_epi8(0x30);
    // qh bits 0-1 (low half) and 2-3 (high half) to bits 4-5; bits 4-5 and 6-7 likewise
    const __m512i shift_a = halves(0x0004000400040004, 0x0002000200020002);
    const __m512i shift_b = halves(0, 0x0002000200020002);
    __m512 acc[TT];
    for (int u = 0; u < TT; ++u) acc[u] = _mm512_setzero_ps();
    for (int64_t sb = 0; sb < nsb; ++sb) {
        const uint8_t* blk = row + sb * 210;
        prefetch_ahead(blk, 210);
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 192)));
        const __m512i sc16z = _mm512_castsi256_si512(sc16);
        __m512i isum[TT];
        for (int u = 0; u < TT; ++u) {
            const __m256i offset = q6_k_offset(sc16, x.bsums + (t0 + u) * (x.K / 16) + sb * 16);
            isum[u] = _mm512_inserti64x4(_mm512_setzero_si512(), offset, 0);
        }
        for (int h = 0; h < 2; ++h) {
            const __m512i l = load512(blk + 64 * h);
            const __m512i qh = _mm512_broadcast_i64x4(load256(blk + 128 + 32 * h));
            const __m512i q[2] = {
                _mm512_or_si512(_mm512_and_si512(l, m4), _mm512_and_si512(_mm512_sllv_epi16(qh, shift_a), bits45)),
                _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                                _mm512_and_si512(_mm512_srlv_epi16(qh, shift_b), bits45)),
            };
            for (int c = 0; c < 2; ++c) {
                const int s0 = 8 * h + 4 * c;  // the vector's four sub-blocks s0 .. s0 + 3
                const __m512i scale = _mm512_permutexvar_epi16(lanes16(s0, s0 + 1, s0 + 2, s0 + 3), sc16z);
                for (int u = 0; u < TT; ++u) {
                    const __m512i xv = load512(x.q + (t0 + u) * x.K + sb * kQKK + 128 * h + 64 * c);
                    isum[u] = _mm512_dpwssd_epi32(isum[u], _mm512_maddubs_epi16(q[c], xv), scale);
                }
            }
        }
        const float d = f16(blk + 208);
        for (int u = 0; u < TT; ++u) {
            const __m512 s = _mm512_set1_ps(d * x.d[(t0 + u) * nsb + sb]);
            acc[u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[u]), s, acc[u]);
        }
    }
    for (int u = 0; u < TT; ++u) y[u * ldy] = hsum512(acc[u]);
}

// Rows [n0, n1) through one row kernel, inlined.
template <auto kRow>
OQ_AVX512 void tile(const uint8_t* w, size_t row_bytes, const QAct& x, int64_t t0, float* y, int64_t ldy, int64_t n0,
                    int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) kRow(w + n * row_bytes, x, t0, y + t0 * ldy + n, ldy);
}

template <class B>
constexpr RowsFn rows_32 =
    rows_tiled<tile<row_32<B, 4>>, tile<row_32<B, 3>>, tile<row_32<B, 2>>, tile<row_32<B, 1>>>;
template <bool kFifthBit>
constexpr RowsFn rows_q45_k = rows_tiled<tile<row_q45_k<kFifthBit, 4>>, tile<row_q45_k<kFifthBit, 3>>,
                                         tile<row_q45_k<kFifthBit, 2>>, tile<row_q45_k<kFifthBit, 1>>>;
constexpr RowsFn rows_q6_k =
    rows_tiled<tile<row_q6_k<4>>, tile<row_q6_k<3>>, tile<row_q6_k<2>>, tile<row_q6_k<1>>>;

// In kTypes order. No Q5_0_PAIRS kernel: Q5_0 is as cheap to unpack here, so packed_type() keeps
// GGUF blocks.
constexpr RowsFn kRows[kNumTypes] = {
    rows_32<BlockQ4_0>, rows_32<BlockQ4_1>, rows_32<BlockQ5_0>, rows_32<BlockQ5_1>,
    rows_32<BlockQ8_0>, rows_q45_k<false>, rows_q45_k<true>, rows_q6_k, nullptr,
};

}  // namespace

const KernelTable* avx512_kernels() {
    if (!x86_features().avx512_vnni) return nullptr;
    const KernelTable* avx2 = avx2_kernels();  // not null (avx512_vnni implies avx2): its quantizers are shared
    static const KernelTable table = make_kernel_table("avx512-vnni", avx2->quantize_act32, avx2->quantize_act256, kRows);
    return &table;
}

}  // namespace oq

#else

namespace oq {
const KernelTable* avx512_kernels() { return nullptr; }
}  // namespace oq

#endif
