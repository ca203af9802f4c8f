#include "vec_ops.h"

#include <algorithm>
#include <cmath>

namespace oq {
namespace {

float dot_portable(const float* a, const float* b, int64_t n) {
    float s = 0.0f;
    for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
    return s;
}

void row_scores_portable(const float* q, int64_t group, const float* const* rows, int64_t n, int64_t d, float scale,
                         float* s, int64_t ld) {
    for (int64_t g = 0; g < group; ++g) {
        for (int64_t j = 0; j < n; ++j) s[g * ld + j] = scale * dot_portable(q + g * d, rows[j], d);
    }
}

void weighted_rows_portable(float* out, int64_t group, const float* const* rows, int64_t n, int64_t d, const float* p,
                            int64_t ld) {
    for (int64_t g = 0; g < group; ++g) {
        for (int64_t j = 0; j < n; ++j) {
            for (int64_t i = 0; i < d; ++i) out[g * d + i] += p[g * ld + j] * rows[j][i];
        }
    }
}

float exp_shifted_portable(float* x, int64_t n, float shift) {
    float s = 0.0f;
    for (int64_t i = 0; i < n; ++i) s += (x[i] = std::exp(x[i] - shift));
    return s;
}

void silu_mul_portable(float* gate, const float* up, int64_t n) {
    for (int64_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

constexpr VecOps kPortable{dot_portable, row_scores_portable, weighted_rows_portable, exp_shifted_portable,
                           silu_mul_portable};

}  // namespace
}  // namespace oq

#if defined(__x86_64__) || defined(__i386__)
#include "avx2_common.h"

namespace oq {
namespace {

// exp(x) to about 2 ulp: 2^n * p(r) with r = x - n ln2 in two parts (Cephes' expf), inputs
// clamped to the finite range.
OQ_AVX2 inline __m256 exp256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

OQ_AVX2 float dot_avx2(const float* a, const float* b, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum(_mm256_add_ps(s0, s1));
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}

// r[i] = sum of the 8 lanes of a[i].
OQ_AVX2 inline __m256 sum_of_8(const __m256* a) {
    const __m256 lo = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    const __m256 hi = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x20), _mm256_permute2f128_ps(lo, hi, 0x31));
}

// Eight rows at a time: each query vector is loaded once for the eight, and their eight sums
// are reduced together (a horizontal sum per score cost as much as its multiplications).
OQ_AVX2 void row_scores_avx2(const float* q, int64_t group, const float* const* rows, int64_t n, int64_t d,
                             float scale, float* s, int64_t ld) {
    const __m256 sv = _mm256_set1_ps(scale);
    for (int64_t g = 0; g < group; ++g) {
        const float* qg = q + g * d;
        int64_t j = 0;
        for (; j + 8 <= n; j += 8) {
            __m256 acc[8];
            for (int r = 0; r < 8; ++r) acc[r] = _mm256_setzero_ps();
            for (int64_t c = 0; c < d; c += 8) {
                const __m256 qv = _mm256_loadu_ps(qg + c);
                for (int r = 0; r < 8; ++r) acc[r] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(rows[j + r] + c), acc[r]);
            }
            _mm256_storeu_ps(s + g * ld + j, _mm256_mul_ps(sum_of_8(acc), sv));
        }
        for (; j < n; ++j) s[g * ld + j] = scale * dot_avx2(qg, rows[j], d);
    }
}

// Up to 64 outputs of a head at a time in registers, over every row.
OQ_AVX2 void weighted_rows_avx2(float* out, int64_t group, const float* const* rows, int64_t n, int64_t d,
                                const float* p, int64_t ld) {
    for (int64_t g = 0; g < group; ++g) {
        for (int64_t c0 = 0; c0 < d; c0 += 64) {
            const int vectors = static_cast<int>(std::min<int64_t>(64, d - c0) / 8);
            float* o = out + g * d + c0;
            __m256 acc[8];
            for (int v = 0; v < 8; ++v) acc[v] = v < vectors ? _mm256_loadu_ps(o + 8 * v) : _mm256_setzero_ps();
            for (int64_t j = 0; j < n; ++j) {
                const __m256 pv = _mm256_broadcast_ss(p + g * ld + j);
                const float* row = rows[j] + c0;
                for (int v = 0; v < 8; ++v) {
                    if (v < vectors) acc[v] = _mm256_fmadd_ps(pv, _mm256_loadu_ps(row + 8 * v), acc[v]);
                }
            }
            for (int v = 0; v < vectors; ++v) _mm256_storeu_ps(o + 8 * v, acc[v]);
        }
    }
}

OQ_AVX2 float exp_shifted_avx2(float* x, int64_t n, float shift) {
    const __m256 sv = _mm256_set1_ps(shift);
    __m256 sum = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), sv));
        _mm256_storeu_ps(x + i, e);
        sum = _mm256_add_ps(sum, e);
    }
    float s = hsum(sum);
    for (; i < n; ++i) s += (x[i] = std::exp(x[i] - shift));
    return s;
}

OQ_AVX2 void silu_mul_avx2(float* gate, const float* up, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 sig = _mm256_div_ps(one, _mm256_add_ps(one, exp256(_mm256_sub_ps(_mm256_setzero_ps(), g))));
        _mm256_storeu_ps(gate + i, _mm256_mul_ps(_mm256_mul_ps(g, sig), _mm256_loadu_ps(up + i)));
    }
    for (; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

constexpr VecOps kAvx2{dot_avx2, row_scores_avx2, weighted_rows_avx2, exp_shifted_avx2, silu_mul_avx2};

}  // namespace

const VecOps& vec_ops() {
    static const VecOps& ops = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                                  __builtin_cpu_supports("f16c") ? kAvx2 : kPortable;
    return ops;
}

}  // namespace oq

#else

namespace oq {
const VecOps& vec_ops() { return kPortable; }
}  // namespace oq

#endif
