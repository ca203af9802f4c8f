// AVX2 + FMA + F16C kernels. Every function carries a target attribute instead of the build using
// -mavx2, so the extension still loads on older x86 CPUs; avx2_kernels() checks the CPU at runtime.
//
// Strategy (after llama.cpp's ggml-cpu x86 quants): weights are expanded to unsigned (or, for Q8_0,
// sign-transferred) bytes and multiplied with the int8 activations by _mm256_maddubs_epi16, then
// _mm256_madd_epi16 widens the products, by ones for the legacy types (one fp32 FMA per 32
// weights) and by the sub-block scales for the K-quants (integer sums, one FMA per 256 weights).
// Offsets and mins go through the activation sums (QAct::ds / bsums), not through each weight.
// At batch 1 the limits are memory and the vector ALUs, so: software prefetch 4 KiB ahead, up to
// 4 independent FMA chains per output, and legacy block scales converted 8 at a time.
// Each weight row is decoded once per tile of up to 4 activation rows (rows_tiled). Q5_0, whose
// fifth bits made it the costliest to unpack, runs on a copy re-laid at load time (Q5_0_PAIRS).
#include "quant_common.h"

#if defined(__x86_64__) || defined(__i386__)
#include "avx2_common.h"

namespace oq {
namespace {

inline uint64_t load_u64(const uint8_t* p) {
    uint64_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// 16 bytes of packed nibbles -> 32 bytes: low nibbles first, then high nibbles. A broadcast load
// and a per-lane shift keep this at two vector ALU operations.
OQ_AVX2 inline __m256i nibbles(const uint8_t* p) {
    const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const __m256i shift = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
    return _mm256_and_si256(_mm256_srlv_epi32(v, shift), _mm256_set1_epi8(15));
}

// 32 bits -> 32 bytes holding 0x10 where the bit is set (the fifth bit of Q5_0/Q5_1 weights).
OQ_AVX2 inline __m256i fifth_bits(const uint8_t* p) {
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(load_u32(p))), spread);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

// 32-weight block types: quants() returns the weights as bytes (unsigned, or signed for Q8_0).
// The block's w = a * q + c has a = the fp16 at offset 0 and c = kZero * a (Q4_0, Q5_0: the
// unsigned quants are offset by 8 or 16) or c = the fp16 min at offset 2 (Q4_1, Q5_1).
struct BlockQ4_0 {
    static constexpr int kBytes = 18;
    static constexpr bool kSigned = false, kMin = false;
    static constexpr float kZero = -8.0f;
    OQ_AVX2 static __m256i quants(const uint8_t* b) { return nibbles(b + 2); }
};

struct BlockQ4_1 {
    static constexpr int kBytes = 20;
    static constexpr bool kSigned = false, kMin = true;
    static constexpr float kZero = 0.0f;
    OQ_AVX2 static __m256i quants(const uint8_t* b) { return nibbles(b + 4); }
};

struct BlockQ5_0 {
    static constexpr int kBytes = 22;
    static constexpr bool kSigned = false, kMin = false;
    static constexpr float kZero = -16.0f;
    OQ_AVX2 static __m256i quants(const uint8_t* b) {
        return _mm256_or_si256(nibbles(b + 6), fifth_bits(b + 2));
    }
};

struct BlockQ5_1 {
    static constexpr int kBytes = 24;
    static constexpr bool kSigned = false, kMin = true;
    static constexpr float kZero = 0.0f;
    OQ_AVX2 static __m256i quants(const uint8_t* b) {
        return _mm256_or_si256(nibbles(b + 8), fifth_bits(b + 4));
    }
};

struct BlockQ8_0 {
    static constexpr int kBytes = 34;
    static constexpr bool kSigned = true, kMin = false;
    static constexpr float kZero = 0.0f;
    OQ_AVX2 static __m256i quants(const uint8_t* b) {
        return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2));
    }
};

// Independent accumulators per activation row: one FMA chain would cap a row at one block per
// FMA latency (4 cycles), below memory speed for T = 1.
template <int TT>
constexpr int kChains = TT == 1 ? 4 : (TT == 2 ? 2 : 1);

// Weight bytes q of block b + I (B's quants) against activation rows t0 .. t0 + TT, with xq[u]
// the row t0 + u activations of block b and scale[u][I] the product of the two block scales. The
// block index is a template argument so that accumulator and scale indices are constants: GCC
// then keeps the accumulators in registers and reads each scale at a fixed stack offset (with a
// runtime index it kept both arrays in memory and their addresses in spilled registers: 17% more
// instructions per block for Q5_0 at one activation row).
template <class B, int TT, int I>
OQ_AVX2_INLINE void dot_block(__m256i q, const int8_t* const* xq, const float (*scale)[8], __m256 (*acc)[TT]) {
    // maddubs wants unsigned x signed bytes: move Q8_0's sign onto the activations.
    const __m256i qa = B::kSigned ? _mm256_sign_epi8(q, q) : q;
    for (int u = 0; u < TT; ++u) {
        __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[u] + I * kQK));
        if (B::kSigned) xv = _mm256_sign_epi8(xv, q);
        const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(qa, xv), _mm256_set1_epi16(1));
        __m256& s = acc[I % kChains<TT>][u];
        s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_broadcast_ss(&scale[u][I]), s);
    }
}

// What a group of up to 8 blocks needs from the activations: per row, the pointer to its int8
// values at the group's first block and the group's 8 products of weight and activation scales;
// the offset or min corrections go to corr. `a` holds the group's weight scales (zero past count),
// `mins` its Q4_1/Q5_1 mins.
template <class B, int TT>
struct GroupActs {
    alignas(32) float scale[TT][8];
    const int8_t* xq[TT];

    OQ_AVX2_INLINE GroupActs(const QAct& x, int64_t nb, int64_t t0, int64_t b, __m256 a, __m256 mins, __m256* corr) {
        for (int u = 0; u < TT; ++u) {
            const int64_t g = (t0 + u) * nb + b;  // x.d / x.ds may be read past the row: padded, finite
            xq[u] = x.q + g * kQK;
            _mm256_store_ps(scale[u], _mm256_mul_ps(a, _mm256_loadu_ps(x.d + g)));
            if (B::kMin) {
                corr[u] = _mm256_fmadd_ps(mins, _mm256_loadu_ps(x.ds + g), corr[u]);
            } else if (B::kZero != 0.0f) {
                corr[u] = _mm256_fmadd_ps(a, _mm256_loadu_ps(x.ds + g), corr[u]);
            }
        }
    }
};

// Blocks I .. count - 1 of a group in GGUF layout.
template <class B, int TT, int I = 0>
OQ_AVX2_INLINE void dot_blocks(const uint8_t* blk, int count, const GroupActs<B, TT>& g, __m256 (*acc)[TT]) {
    if constexpr (I < 8) {
        if (I == count) return;
        dot_block<B, TT, I>(B::quants(blk + I * B::kBytes), g.xq, g.scale, acc);
        dot_blocks<B, TT, I + 1>(blk, count, g, acc);
    }
}

// Blocks b .. b + count (count <= 8) of one weight row against activation rows t0 .. t0 + TT.
// Scales are handled 8 blocks at a time in vectors; each block then costs one broadcast load.
template <class B, int TT>
OQ_AVX2_INLINE void group_32(const uint8_t* row, const QAct& x, int64_t nb, int64_t t0, int64_t b, int count,
                             __m256 (*acc)[TT], __m256* corr) {
    const uint8_t* blk = row + b * B::kBytes;
    prefetch_ahead(blk, 8 * B::kBytes);
    const __m256 a = gather_fp16(blk, B::kBytes, count);
    const __m256 mins = B::kMin ? gather_fp16(blk + 2, B::kBytes, count) : _mm256_setzero_ps();
    const GroupActs<B, TT> g(x, nb, t0, b, a, mins, corr);
    dot_blocks<B, TT>(blk, count, g, acc);
}

// One weight row against activation rows t0 .. t0 + TT; results go to y[u * ldy]. Group runs 8
// blocks at a time: group_32, or group_q5_0_pairs for the re-laid Q5_0 (B = BlockQ5_0).
template <class B, int TT, auto Group = group_32<B, TT>>
OQ_AVX2_INLINE void row_32(const uint8_t* row, const QAct& x, int64_t t0, float* y, int64_t ldy) {
    constexpr int kC = kChains<TT>;
    const int64_t nb = x.K / kQK;
    __m256 acc[kC][TT];
    __m256 corr[TT];
    for (int u = 0; u < TT; ++u) {
        for (int c = 0; c < kC; ++c) acc[c][u] = _mm256_setzero_ps();
        corr[u] = _mm256_setzero_ps();
    }
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) Group(row, x, nb, t0, b, 8, acc, corr);
    if (b < nb) Group(row, x, nb, t0, b, static_cast<int>(nb - b), acc, corr);
    for (int u = 0; u < TT; ++u) {
        for (int c = 1; c < kC; ++c) acc[0][u] = _mm256_add_ps(acc[0][u], acc[c][u]);
        const float c = B::kMin ? hsum(corr[u]) : B::kZero * hsum(corr[u]);
        y[u * ldy] = hsum(acc[0][u]) + c;
    }
}

// Pairs I, I + 1, ... of a Q5_0_PAIRS group (see group_q5_0_pairs), and its odd last block.
template <int TT, int I = 0>
OQ_AVX2_INLINE void dot_pairs(const uint8_t* fifth, const uint8_t* nib, int count, const GroupActs<BlockQ5_0, TT>& g,
                              __m256 (*acc)[TT]) {
    if constexpr (I < 8) {
        if (I + 1 >= count) {
            if (I < count) {  // the group's last block, stored as a GGUF block without its scale
                dot_block<BlockQ5_0, TT, I>(BlockQ5_0::quants(nib + 16 * I - 2), g.xq, g.scale, acc);
            }
            return;
        }
        // Byte j of lane l of the first block tests bit 2l + j / 8 of fifth-bit byte j % 8, giving
        // 0, 1, 2, 4 or 8, which a table maps to 0 or 0x10; the second block tests bits 4-7 of the
        // same bytes, and min() maps those results (0, 16, ..., 128) to 0 or 0x10.
        const __m256i m4 = _mm256_set1_epi8(15);
        const __m256i sel0 = _mm256_setr_epi64x(0x0101010101010101, 0x0202020202020202, 0x0404040404040404,
                                                0x0808080808080808);
        const __m256i sel1 = _mm256_slli_epi16(sel0, 4);
        const __m256i bit4 = _mm256_setr_epi8(0, 16, 16, 0, 16, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0,  //
                                              0, 16, 16, 0, 16, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0);
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(nib + 16 * I));
        const __m256i h = _mm256_set1_epi64x(static_cast<int64_t>(load_u64(fifth + 4 * I)));
        const __m256i f0 = _mm256_shuffle_epi8(bit4, _mm256_and_si256(h, sel0));
        const __m256i f1 = _mm256_min_epu8(_mm256_and_si256(h, sel1), _mm256_set1_epi8(0x10));
        dot_block<BlockQ5_0, TT, I>(_mm256_or_si256(_mm256_and_si256(v, m4), f0), g.xq, g.scale, acc);
        dot_block<BlockQ5_0, TT, I + 1>(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4), f1), g.xq,
                                        g.scale, acc);
        dot_pairs<TT, I + 2>(fifth, nib, count, g, acc);
    }
}

// Q5_0_PAIRS (layout in quant_common.h): a group of up to 8 blocks. Per pair of blocks, one load
// and three operations give both blocks' low 4 bits, and two operations each their fifth bits
// (row_32<BlockQ5_0> spends two and five per block). Blocks, chains and the order of every
// operation on the accumulators are those of row_32<BlockQ5_0>, so results are bit-identical.
template <int TT>
OQ_AVX2_INLINE void group_q5_0_pairs(const uint8_t* row, const QAct& x, int64_t nb, int64_t t0, int64_t b, int count,
                                     __m256 (*acc)[TT], __m256* corr) {
    const uint8_t* grp = row + b * BlockQ5_0::kBytes;
    prefetch_ahead(grp, 8 * BlockQ5_0::kBytes);
    // The 8 scales, and for a shorter group zeros after its count (the 16 bytes are the group's own)
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 a = _mm256_and_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(grp))),
                                   _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(count), lane)));
    const GroupActs<BlockQ5_0, TT> g(x, nb, t0, b, a, _mm256_setzero_ps(), corr);
    const uint8_t* fifth = grp + 2 * count;
    dot_pairs<TT>(fifth, fifth + 8 * (count / 2), count, g, acc);
}

// Bit s of each qh byte moved to bit 4 (0x10). A 16-bit shift moves both bytes of a lane alike,
// and the mask drops what crossed between them.
OQ_AVX2 inline __m256i qh_bit(__m256i qh, int s) {
    const __m256i v = s <= 4 ? _mm256_slli_epi16(qh, 4 - s) : _mm256_srli_epi16(qh, s - 4);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

// K-quants against 256-value activation blocks: within a super-block everything but the final
// scaling is integer, so sub-block scales are applied by _mm256_madd_epi16 instead of float FMAs.
template <bool kFifthBit, int TT>
OQ_AVX2_INLINE void row_q45_k(const uint8_t* row, const QAct& x, int64_t t0, float* y, int64_t ldy) {
    constexpr int kBytes = kFifthBit ? 176 : 144;
    const int64_t nsb = x.K / kQKK;
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256 acc[TT];
    __m128 acc_min[TT];
    for (int u = 0; u < TT; ++u) {
        acc[u] = _mm256_setzero_ps();
        acc_min[u] = _mm_setzero_ps();
    }
    for (int64_t sb = 0; sb < nsb; ++sb) {
        const uint8_t* blk = row + sb * kBytes;
        prefetch_ahead(blk, kBytes);
        uint64_t sc, mn;
        k_scales(blk + 4, sc, mn);
        // the 8 scales as int16 in both lanes, the 8 mins as int16
        const __m128i sc16x8 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<int64_t>(sc)));
        const __m256i sc16 = _mm256_broadcastsi128_si256(sc16x8);
        const __m128i mn16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<int64_t>(mn)));
        const float d = f16(blk), dmin = f16(blk + 2);
        __m256i isum[TT];
        for (int u = 0; u < TT; ++u) {
            const int64_t t = t0 + u;
            const float dx = x.d[t * nsb + sb];
            // mins: sum over sub-blocks s of m[s] * sum(q) over its 32 activations
            const int16_t* bsums = x.bsums + t * (x.K / 16) + sb * 16;
            const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bsums));
            const __m128i sums = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
            const __m128 m = _mm_cvtepi32_ps(_mm_madd_epi16(mn16, sums));
            acc_min[u] = _mm_fmadd_ps(m, _mm_set1_ps(dmin * dx), acc_min[u]);
            isum[u] = _mm256_setzero_si256();
        }
        const uint8_t* qs = blk + (kFifthBit ? 48 : 16);
        const __m256i qh = kFifthBit ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16))
                                     : _mm256_setzero_si256();
        for (int j = 0; j < 4; ++j) {
            const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * j));
            __m256i lo = _mm256_and_si256(q, m4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if (kFifthBit) {
                lo = _mm256_or_si256(lo, qh_bit(qh, 2 * j));
                hi = _mm256_or_si256(hi, qh_bit(qh, 2 * j + 1));
            }
            // int16 scales 2j and 2j + 1 broadcast to all 16 lanes: shuffle bytes (2s, 2s + 1)
            const short pick = static_cast<short>(0x0100 + 0x0404 * j);
            const __m256i sc_lo = _mm256_shuffle_epi8(sc16, _mm256_set1_epi16(pick));
            const __m256i sc_hi = _mm256_shuffle_epi8(sc16, _mm256_set1_epi16(static_cast<short>(pick + 0x0202)));
            for (int u = 0; u < TT; ++u) {
                const int8_t* xq = x.q + (t0 + u) * x.K + sb * kQKK + 64 * j;
                const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq));
                const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32));
                const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x0), sc_lo);
                const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x1), sc_hi);
                isum[u] = _mm256_add_epi32(isum[u], _mm256_add_epi32(p0, p1));
            }
        }
        for (int u = 0; u < TT; ++u) {
            const __m256 scale = _mm256_set1_ps(d * x.d[(t0 + u) * nsb + sb]);
            acc[u] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[u]), scale, acc[u]);
        }
    }
    for (int u = 0; u < TT; ++u) y[u * ldy] = hsum(acc[u]) - hsum128(acc_min[u]);
}

template <int TT>
OQ_AVX2_INLINE void row_q6_k(const uint8_t* row, const QAct& x, int64_t t0, float* y, int64_t ldy) {
    const int64_t nsb = x.K / kQKK;
    const __m256i m4 = _mm256_set1_epi8(15);
    // shuffle control giving int16 lanes (scale << 8): lanes 0-7 take byte 2k, lanes 8-15 byte 2k+1;
    // the even bytes keep their top bit set after adding 2k, so they stay zero.
    const __m256i shuf_base = _mm256_setr_epi8(
        -128, 0, -128, 0, -128, 0, -128, 0, -128, 0, -128, 0, -128, 0, -128, 0,  //
        -128, 1, -128, 1, -128, 1, -128, 1, -128, 1, -128, 1, -128, 1, -128, 1);
    __m256 acc[TT];
    for (int u = 0; u < TT; ++u) acc[u] = _mm256_setzero_ps();
    for (int64_t sb = 0; sb < nsb; ++sb) {
        const uint8_t* blk = row + sb * 210;
        prefetch_ahead(blk, 210);
        const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 192));
        const __m256i scales = _mm256_broadcastsi128_si256(sc8);
        const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
        __m256i isum[TT];
        for (int u = 0; u < TT; ++u) {
            // The quants are stored as q + 32: start from -32 * sum over 16-groups of scale * sum(x).
            const __m256i bs = _mm256_loadu_si256(
                reinterpret_cast<const __m256i*>(x.bsums + (t0 + u) * (x.K / 16) + sb * 16));
            const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(sc16, bs), 5);
            isum[u] = _mm256_sub_epi32(_mm256_setzero_si256(), offset);
        }
        for (int h = 0; h < 2; ++h) {
            const auto* ql = reinterpret_cast<const __m256i*>(blk + 64 * h);
            const __m256i l0 = _mm256_loadu_si256(ql), l1 = _mm256_loadu_si256(ql + 1);
            const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * h));
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4),
                                   _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(0x03)), 4));
            q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                   _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(0x0c)), 2));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                   _mm256_and_si256(qh, _mm256_set1_epi8(0x30)));
            q[3] = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                _mm256_srli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(static_cast<char>(0xc0))), 2));
            for (int c = 0; c < 4; ++c) {
                const int k = 4 * h + c;
                const __m256i shuf = _mm256_add_epi8(shuf_base, _mm256_set1_epi8(static_cast<char>(2 * k)));
                const __m256i sc_k = _mm256_srai_epi16(_mm256_shuffle_epi8(scales, shuf), 8);
                for (int u = 0; u < TT; ++u) {
                    const __m256i xv = _mm256_loadu_si256(
                        reinterpret_cast<const __m256i*>(x.q + (t0 + u) * x.K + sb * kQKK + 32 * k));
                    const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(q[c], xv), sc_k);
                    isum[u] = _mm256_add_epi32(isum[u], p);
                }
            }
        }
        const float d = f16(blk + 208);
        for (int u = 0; u < TT; ++u) {
            const __m256 scale = _mm256_set1_ps(d * x.d[(t0 + u) * nsb + sb]);
            acc[u] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[u]), scale, acc[u]);
        }
    }
    for (int u = 0; u < TT; ++u) y[u * ldy] = hsum(acc[u]);
}

// Rows [n0, n1) through one row kernel, inlined.
template <auto kRow>
OQ_AVX2 void tile(const uint8_t* w, size_t row_bytes, const QAct& x, int64_t t0, float* y, int64_t ldy,
          int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) kRow(w + n * row_bytes, x, t0, y + t0 * ldy + n, ldy);
}

template <class B>
constexpr RowsFn rows_32 =
    rows_tiled<tile<row_32<B, 4>>, tile<row_32<B, 3>>, tile<row_32<B, 2>>, tile<row_32<B, 1>>>;
constexpr RowsFn rows_q5_0_pairs =
    rows_tiled<tile<row_32<BlockQ5_0, 4, group_q5_0_pairs<4>>>, tile<row_32<BlockQ5_0, 3, group_q5_0_pairs<3>>>,
               tile<row_32<BlockQ5_0, 2, group_q5_0_pairs<2>>>, tile<row_32<BlockQ5_0, 1, group_q5_0_pairs<1>>>>;
template <bool kFifthBit>
constexpr RowsFn rows_q45_k = rows_tiled<tile<row_q45_k<kFifthBit, 4>>, tile<row_q45_k<kFifthBit, 3>>,
                                         tile<row_q45_k<kFifthBit, 2>>, tile<row_q45_k<kFifthBit, 1>>>;
constexpr RowsFn rows_q6_k =
    rows_tiled<tile<row_q6_k<4>>, tile<row_q6_k<3>>, tile<row_q6_k<2>>, tile<row_q6_k<1>>>;

OQ_AVX2 inline __m256 abs_max(const float* x) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_andnot_ps(sign, _mm256_loadu_ps(x));
    for (int i = 1; i < 4; ++i) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 8 * i)));
    return m;
}

// Lane-wise reduction of pairs: [op(a0,a1), op(a2,a3), op(b0,b1), op(b2,b3) | same for lanes 4-7].
OQ_AVX2 inline __m256 pair_max(__m256 a, __m256 b) {
    return _mm256_max_ps(_mm256_shuffle_ps(a, b, 0x88), _mm256_shuffle_ps(a, b, 0xdd));
}

// r[i] = max over the 8 lanes of m[i] (exact, so the order of the comparisons does not matter).
OQ_AVX2 inline __m256 max_of_8(const __m256* m) {
    const __m256 lo = pair_max(pair_max(m[0], m[1]), pair_max(m[2], m[3]));
    const __m256 hi = pair_max(pair_max(m[4], m[5]), pair_max(m[6], m[7]));
    return _mm256_max_ps(_mm256_permute2f128_ps(lo, hi, 0x20), _mm256_permute2f128_ps(lo, hi, 0x31));
}

// r[i] = sum of the 8 lanes of s[i].
OQ_AVX2 inline __m256i sum_of_8(const __m256i* s) {
    const __m256i lo = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
    const __m256i hi = _mm256_hadd_epi32(_mm256_hadd_epi32(s[4], s[5]), _mm256_hadd_epi32(s[6], s[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(lo, hi, 0x20), _mm256_permute2x128_si256(lo, hi, 0x31));
}

// Rounds x * id (ties to even) for 32 values into q; returns the partial sums of the quants of
// values 0-15 (lo16) and 16-31 (hi16).
OQ_AVX2 inline void quantize_32(const float* x, __m256 id, int8_t* q, __m256i& lo16, __m256i& hi16) {
    __m256i iv[4];
    for (int i = 0; i < 4; ++i) {
        const __m256 r = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * i), id),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        iv[i] = _mm256_cvttps_epi32(r);
    }
    const __m256i packed =
        _mm256_packs_epi16(_mm256_packs_epi32(iv[0], iv[1]), _mm256_packs_epi32(iv[2], iv[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q),
                        _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    lo16 = _mm256_add_epi32(iv[0], iv[1]);
    hi16 = _mm256_add_epi32(iv[2], iv[3]);
}

OQ_AVX2 inline float hmax(__m256 m) {
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    return _mm_cvtss_f32(m4);
}

OQ_AVX2 inline int32_t hsum_i32(__m256i s) {
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 1));
    return _mm_cvtsi128_si32(s4);
}

// Blocks of 32, eight at a time so that the two divisions and the reductions run on whole vectors.
OQ_AVX2 void quantize_act32_avx2(const float* x, int64_t K, int8_t* q, float* d, float* ds) {
    const int64_t nb = K / kQK;
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) {
        __m256 m[8];
        for (int i = 0; i < 8; ++i) m[i] = abs_max(x + (b + i) * kQK);
        const __m256 amax = max_of_8(m);
        const __m256 nonzero = _mm256_cmp_ps(amax, _mm256_setzero_ps(), _CMP_NEQ_OQ);
        const __m256 scale = _mm256_div_ps(amax, _mm256_set1_ps(127.0f));
        alignas(32) float id[8];
        _mm256_store_ps(id, _mm256_and_ps(nonzero, _mm256_div_ps(_mm256_set1_ps(127.0f), amax)));
        __m256i sums[8];
        for (int i = 0; i < 8; ++i) {
            __m256i lo, hi;
            quantize_32(x + (b + i) * kQK, _mm256_broadcast_ss(&id[i]), q + (b + i) * kQK, lo, hi);
            sums[i] = _mm256_add_epi32(lo, hi);
        }
        _mm256_storeu_ps(d + b, scale);
        _mm256_storeu_ps(ds + b, _mm256_mul_ps(scale, _mm256_cvtepi32_ps(sum_of_8(sums))));
    }
    for (; b < nb; ++b) {
        const float amax = hmax(abs_max(x + b * kQK));
        const __m256 id = _mm256_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f);
        __m256i lo, hi;
        quantize_32(x + b * kQK, id, q + b * kQK, lo, hi);
        d[b] = amax / 127.0f;
        ds[b] = d[b] * static_cast<float>(hsum_i32(_mm256_add_epi32(lo, hi)));
    }
}

OQ_AVX2 void quantize_act256_avx2(const float* x, int64_t K, int8_t* q, float* d, int16_t* bsums) {
    for (int64_t b = 0; b < K / kQKK; ++b) {
        const float* xb = x + b * kQKK;
        __m256 m = abs_max(xb);
        for (int i = 1; i < 8; ++i) m = _mm256_max_ps(m, abs_max(xb + i * kQK));
        const float amax = hmax(m);
        const __m256 id = _mm256_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f);
        __m256i sums[16];  // per 16 values, in order
        for (int i = 0; i < 8; ++i) {
            quantize_32(xb + i * kQK, id, q + b * kQKK + i * kQK, sums[2 * i], sums[2 * i + 1]);
        }
        const __m256i s = _mm256_packs_epi32(sum_of_8(sums), sum_of_8(sums + 8));  // |sum| <= 2032
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(bsums + 16 * b), _mm256_permute4x64_epi64(s, 0xd8));
        d[b] = amax / 127.0f;
    }
}

}  // namespace

const KernelTable* avx2_kernels() {
    static const KernelTable table = {
        "avx2",
        quantize_act32_avx2,
        quantize_act256_avx2,
        {rows_32<BlockQ4_0>, rows_32<BlockQ4_1>, rows_32<BlockQ5_0>, rows_32<BlockQ5_1>,
         rows_32<BlockQ8_0>, rows_q45_k<false>, rows_q45_k<true>, rows_q6_k, rows_q5_0_pairs},
    };
    __builtin_cpu_init();
    const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
    return ok ? &table : nullptr;
}

}  // namespace oq

#else

namespace oq {
const KernelTable* avx2_kernels() { return nullptr; }
}  // namespace oq

#endif
