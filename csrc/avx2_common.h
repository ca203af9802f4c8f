// What the x86 sources share: the target attributes (functions carry them instead of the build
// using -mavx2, so the extension still loads on older x86 CPUs), the instruction sets this CPU has,
// horizontal sums, and the block helpers that the AVX2 and AVX-512 kernels both use.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>

#include "quant_common.h"

#define OQ_AVX2 __attribute__((target("avx2,fma,f16c")))
#define OQ_AVX2_INLINE OQ_AVX2 __attribute__((always_inline)) inline

namespace oq {

// The instruction sets the kernels use that both the CPU and the OS (which must save the wider
// registers) support. Read from CPUID and XGETBV: GCC's and clang's __builtin_cpu_supports accept
// different feature names (clang 15 knows neither "f16c" nor "avxvnni"), which broke clang builds.
struct X86Features {
    bool avx2 = false;         // with FMA and F16C
    bool avx512_vnni = false;  // F, BW, DQ and VNNI
    bool avx_vnni = false;     // the VEX-encoded VNNI of Alder Lake and later
};

inline const X86Features& x86_features() {
    static const X86Features features = [] {
        X86Features f;
        unsigned a, b, c, d;
        if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
        const bool fma = c >> 12 & 1, osxsave = c >> 27 & 1, avx = c >> 28 & 1, f16c = c >> 29 & 1;
        if (!osxsave || !avx) return f;
        unsigned xcr0_lo, xcr0_hi;
        __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
        const bool ymm_state = (xcr0_lo & 0x06) == 0x06, zmm_state = (xcr0_lo & 0xe6) == 0xe6;
        if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
        const bool avx2 = b >> 5 & 1, avx512f = b >> 16 & 1, avx512dq = b >> 17 & 1, avx512bw = b >> 30 & 1;
        const bool avx512vnni = c >> 11 & 1;
        const bool avxvnni = __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a >> 4 & 1);
        f.avx2 = ymm_state && avx2 && fma && f16c;
        f.avx512_vnni = f.avx2 && zmm_state && avx512f && avx512bw && avx512dq && avx512vnni;
        f.avx_vnni = f.avx2 && avxvnni;
#if defined(OQ_SIMDE)  // tests only: SIMDe supplies the AVX-512 and VNNI instructions
        f.avx512_vnni = f.avx_vnni = f.avx2;
#endif
        return f;
    }();
    return features;
}

OQ_AVX2 inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

OQ_AVX2 inline float hsum128(__m128 s) {
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

OQ_AVX2 inline float f16(const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, sizeof h);
    return _cvtsh_ss(h);
}

// fp16 values at p, p + stride, ... (count <= 8, the rest zero) -> 8 floats. Assembled in general
// registers so that the vector units, the bottleneck here, see one conversion per 8 blocks.
OQ_AVX2 inline __m256 gather_fp16(const uint8_t* p, int stride, int count) {
    uint64_t half[2] = {0, 0};
    for (int i = 0; i < 8; ++i) {  // fixed trip count: unrolled, half[] stays in registers
        if (i == count) break;
        uint16_t h;
        std::memcpy(&h, p + i * stride, sizeof h);
        half[i / 4] |= static_cast<uint64_t>(h) << (16 * (i % 4));
    }
    return _mm256_cvtph_ps(_mm_set_epi64x(static_cast<int64_t>(half[1]), static_cast<int64_t>(half[0])));
}

// Weight rows are one contiguous stream per thread. The hardware prefetchers alone leave it well
// below memory bandwidth at batch 1 (measured on a Xeon: 5.6 -> 11.3 GB/s for Q4_K on one core,
// 10 -> 17-20 GB/s on two), so each block also prefetches the bytes 4 KiB ahead of it.
constexpr int kPrefetchBytes = 4096;

OQ_AVX2 inline void prefetch_ahead(const uint8_t* p, int bytes) {
    for (int off = 0; off < bytes; off += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes + off), _MM_HINT_T0);
    }
}

// Eight 6-bit scales and mins of a Q4_K/Q5_K super-block as two little-endian byte vectors.
inline void k_scales(const uint8_t* s, uint64_t& sc, uint64_t& mn) {
    const uint32_t a0 = load_u32(s), a1 = load_u32(s + 4), a2 = load_u32(s + 8);
    constexpr uint32_t k6 = 0x3f3f3f3f, k4 = 0x0f0f0f0f, k2 = 0x03030303;
    sc = (a0 & k6) | static_cast<uint64_t>((a2 & k4) | (((a0 >> 6) & k2) << 4)) << 32;
    mn = (a1 & k6) | static_cast<uint64_t>(((a2 >> 4) & k4) | (((a1 >> 6) & k2) << 4)) << 32;
}

// Q4_K/Q5_K mins term of one super-block against one activation row: per pair of sub-blocks, the
// sum over s of m[s] * (sum of sub-block s's 32 activation quants), from its 16 bsums; mn16 holds
// the 8 mins as int16.
OQ_AVX2_INLINE __m128 k_mins(const int16_t* bsums, __m128i mn16) {
    const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bsums));
    const __m128i sums = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    return _mm_cvtepi32_ps(_mm_madd_epi16(mn16, sums));
}

// Q6_K stores its quants as q + 32: -32 * the sum over the 16 sub-blocks of scale * sum(x) (8
// partial sums), from the 16 int16 scales and the activation row's 16 bsums.
OQ_AVX2_INLINE __m256i q6_k_offset(__m256i sc16, const int16_t* bsums) {
    const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bsums));
    return _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(_mm256_madd_epi16(sc16, bs), 5));
}

}  // namespace oq

#endif
