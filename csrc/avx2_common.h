// What every AVX2 source shares: the target attributes (functions carry them instead of the build
// using -mavx2, so the extension still loads on older x86 CPUs) and a horizontal sum.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define OQ_AVX2 __attribute__((target("avx2,fma,f16c")))
#define OQ_AVX2_INLINE OQ_AVX2 __attribute__((always_inline)) inline

namespace oq {

OQ_AVX2 inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

}  // namespace oq

#endif
