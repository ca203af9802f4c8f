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
// Each weight row is decoded once per tile of up to 4 activation rows (rows_tiled), or from 16
// activation rows on once per call into a byte buffer (rows_decoded). Q5_0, whose
// fifth bits made it the costliest to unpack, runs on a copy re-laid at load time (Q5_0_PAIRS).
// The row kernels (quant_avx2_rows.inc) are compiled twice: plain AVX2, and with AVX-VNNI's dot
// products for the CPUs that have it (avx_vnni_kernels(), same results bit for bit).
#include "quant_common.h"

#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include "avx2_common.h"

#if defined(OQ_SIMDE)  // tests only: AVX-VNNI through SIMDe's portable intrinsics (their EVEX names)
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#define _mm256_dpbusd_avx_epi32 _mm256_dpbusd_epi32
#define _mm256_dpwssd_avx_epi32 _mm256_dpwssd_epi32
#endif

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

// Bit s of each qh byte moved to bit 4 (0x10). A 16-bit shift moves both bytes of a lane alike,
// and the mask drops what crossed between them.
OQ_AVX2 inline __m256i qh_bit(__m256i qh, int s) {
    const __m256i v = s <= 4 ? _mm256_slli_epi16(qh, 4 - s) : _mm256_srli_epi16(qh, s - 4);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

// The row kernels, plain and with AVX-VNNI's dot products (see quant_avx2_rows.inc).
#define OQ_ROWS OQ_AVX2
#define OQ_ROWS_INLINE OQ_AVX2_INLINE
#define OQ_AVX_VNNI 0
namespace plain {
#include "quant_avx2_rows.inc"
}  // namespace plain
#undef OQ_ROWS
#undef OQ_ROWS_INLINE
#undef OQ_AVX_VNNI

#if defined(OQ_SIMDE)
#define OQ_ROWS OQ_AVX2
#else
#define OQ_ROWS __attribute__((target("avx2,fma,f16c,avxvnni")))
#endif
#define OQ_ROWS_INLINE OQ_ROWS __attribute__((always_inline)) inline
#define OQ_AVX_VNNI 1
namespace vnni {
#include "quant_avx2_rows.inc"
}  // namespace vnni
#undef OQ_ROWS
#undef OQ_ROWS_INLINE
#undef OQ_AVX_VNNI

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
    static const KernelTable table =
        make_kernel_table("avx2", quantize_act32_avx2, quantize_act256_avx2, plain::kRows);
    return x86_features().avx2 ? &table : nullptr;
}

const KernelTable* avx_vnni_kernels() {
    static const KernelTable table =
        make_kernel_table("avx-vnni", quantize_act32_avx2, quantize_act256_avx2, vnni::kRows);
    return x86_features().avx_vnni ? &table : nullptr;
}

}  // namespace oq

#else

namespace oq {
const KernelTable* avx2_kernels() { return nullptr; }
const KernelTable* avx_vnni_kernels() { return nullptr; }
}  // namespace oq

#endif
