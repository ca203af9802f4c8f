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
    static const VecOps& ops = x86_features().avx2 ? kAvx2 : kPortable;
    return ops;
}

}  // namespace oq

#elif defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>

namespace oq {
namespace {

// exp(x) as exp256 above, four lanes at a time.
inline float32x4_t exp4(float32x4_t x) {
    x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.3f)), vdupq_n_f32(88.3f));
    const float32x4_t n = vrndnq_f32(vmulq_n_f32(x, 1.44269504088896341f));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));
    r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
    float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
    p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
    p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
    p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), vmulq_f32(p, r), r);
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vmulq_f32(p, vreinterpretq_f32_s32(e));
}

float dot_neon(const float* a, const float* b, int64_t n) {
    float32x4_t s[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        for (int k = 0; k < 4; ++k) s[k] = vfmaq_f32(s[k], vld1q_f32(a + i + 4 * k), vld1q_f32(b + i + 4 * k));
    }
    for (; i + 4 <= n; i += 4) s[0] = vfmaq_f32(s[0], vld1q_f32(a + i), vld1q_f32(b + i));
    float sum = vaddvq_f32(vaddq_f32(vaddq_f32(s[0], s[1]), vaddq_f32(s[2], s[3])));
    for (; i < n; ++i) sum += a[i] * b[i];
    return sum;
}

// Four rows at a time: the query is loaded once for the four, and their sums reduce together.
void row_scores_neon(const float* q, int64_t group, const float* const* rows, int64_t n, int64_t d, float scale,
                     float* s, int64_t ld) {
    for (int64_t g = 0; g < group; ++g) {
        const float* qg = q + g * d;
        int64_t j = 0;
        for (; j + 4 <= n; j += 4) {
            float32x4_t acc[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
            for (int64_t c = 0; c < d; c += 4) {
                const float32x4_t qv = vld1q_f32(qg + c);
                for (int r = 0; r < 4; ++r) acc[r] = vfmaq_f32(acc[r], qv, vld1q_f32(rows[j + r] + c));
            }
            const float32x4_t sums = vpaddq_f32(vpaddq_f32(acc[0], acc[1]), vpaddq_f32(acc[2], acc[3]));
            vst1q_f32(s + g * ld + j, vmulq_n_f32(sums, scale));
        }
        for (; j < n; ++j) s[g * ld + j] = scale * dot_neon(qg, rows[j], d);
    }
}

// Up to 64 outputs of a head at a time in registers, over every row.
void weighted_rows_neon(float* out, int64_t group, const float* const* rows, int64_t n, int64_t d, const float* p,
                        int64_t ld) {
    for (int64_t g = 0; g < group; ++g) {
        for (int64_t c0 = 0; c0 < d; c0 += 64) {
            const int vectors = static_cast<int>(std::min<int64_t>(64, d - c0) / 4);
            float* o = out + g * d + c0;
            float32x4_t acc[16];
            for (int v = 0; v < 16; ++v) acc[v] = v < vectors ? vld1q_f32(o + 4 * v) : vdupq_n_f32(0.0f);
            for (int64_t j = 0; j < n; ++j) {
                const float pj = p[g * ld + j];
                const float* row = rows[j] + c0;
                for (int v = 0; v < 16; ++v) {
                    if (v < vectors) acc[v] = vfmaq_n_f32(acc[v], vld1q_f32(row + 4 * v), pj);
                }
            }
            for (int v = 0; v < vectors; ++v) vst1q_f32(o + 4 * v, acc[v]);
        }
    }
}

float exp_shifted_neon(float* x, int64_t n, float shift) {
    float32x4_t sum = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t e = exp4(vsubq_f32(vld1q_f32(x + i), vdupq_n_f32(shift)));
        vst1q_f32(x + i, e);
        sum = vaddq_f32(sum, e);
    }
    float s = vaddvq_f32(sum);
    for (; i < n; ++i) s += (x[i] = std::exp(x[i] - shift));
    return s;
}

void silu_mul_neon(float* gate, const float* up, int64_t n) {
    const float32x4_t one = vdupq_n_f32(1.0f);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t g = vld1q_f32(gate + i);
        const float32x4_t sig = vdivq_f32(one, vaddq_f32(one, exp4(vnegq_f32(g))));
        vst1q_f32(gate + i, vmulq_f32(vmulq_f32(g, sig), vld1q_f32(up + i)));
    }
    for (; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

constexpr VecOps kNeon{dot_neon, row_scores_neon, weighted_rows_neon, exp_shifted_neon, silu_mul_neon};

}  // namespace

const VecOps& vec_ops() { return kNeon; }

}  // namespace oq

#else

namespace oq {
const VecOps& vec_ops() { return kPortable; }
}  // namespace oq

#endif
