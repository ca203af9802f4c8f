// AArch64 NEON kernels. NEON multiplies signed bytes directly, so unlike the AVX2 path the weights
// are decoded to signed int8 (offsets subtracted) and only Q4_1/Q5_1 and the K-quant mins go
// through the activation block sums. The 16-byte dot product uses SDOT when the build targets
// ARMv8.2+dotprod and widening multiplies otherwise (every AArch64 CPU has those).
#include "quant_common.h"

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>

#define OQ_INLINE __attribute__((always_inline)) inline

namespace oq {
namespace {

inline int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, a, b);
#else
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    return vpadalq_s16(acc, vmull_high_s8(a, b));
#endif
}

inline int8x16_t s8(uint8x16_t v) { return vreinterpretq_s8_u8(v); }

// Fifth bits of 16 weights from two bytes of qh -> 0x10 per set bit.
inline uint8x16_t fifth_bits(uint32_t qh, int byte) {
    static const uint8_t kBits[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t v = vcombine_u8(vdup_n_u8(static_cast<uint8_t>(qh >> (8 * byte))),
                                     vdup_n_u8(static_cast<uint8_t>(qh >> (8 * byte + 8))));
    return vandq_u8(vtstq_u8(v, vld1q_u8(kBits)), vdupq_n_u8(0x10));
}

// 32-weight block types: decode() yields the weights as two signed byte vectors and (a, c) with
// w = a * q + c; kOffset says whether c can be non-zero.
struct BlockQ4_0 {
    static constexpr int kBytes = 18;
    static constexpr bool kOffset = false;
    static void decode(const uint8_t* b, int8x16_t& w0, int8x16_t& w1, float& a, float& c) {
        const uint8x16_t v = vld1q_u8(b + 2);
        w0 = vsubq_s8(s8(vandq_u8(v, vdupq_n_u8(15))), vdupq_n_s8(8));
        w1 = vsubq_s8(s8(vshrq_n_u8(v, 4)), vdupq_n_s8(8));
        a = load_fp16(b);
        c = 0.0f;
    }
};

struct BlockQ4_1 {
    static constexpr int kBytes = 20;
    static constexpr bool kOffset = true;
    static void decode(const uint8_t* b, int8x16_t& w0, int8x16_t& w1, float& a, float& c) {
        const uint8x16_t v = vld1q_u8(b + 4);
        w0 = s8(vandq_u8(v, vdupq_n_u8(15)));
        w1 = s8(vshrq_n_u8(v, 4));
        a = load_fp16(b);
        c = load_fp16(b + 2);
    }
};

struct BlockQ5_0 {
    static constexpr int kBytes = 22;
    static constexpr bool kOffset = false;
    static void decode(const uint8_t* b, int8x16_t& w0, int8x16_t& w1, float& a, float& c) {
        const uint8x16_t v = vld1q_u8(b + 6);
        const uint32_t qh = load_u32(b + 2);
        w0 = vsubq_s8(s8(vorrq_u8(vandq_u8(v, vdupq_n_u8(15)), fifth_bits(qh, 0))), vdupq_n_s8(16));
        w1 = vsubq_s8(s8(vorrq_u8(vshrq_n_u8(v, 4), fifth_bits(qh, 2))), vdupq_n_s8(16));
        a = load_fp16(b);
        c = 0.0f;
    }
};

struct BlockQ5_1 {
    static constexpr int kBytes = 24;
    static constexpr bool kOffset = true;
    static void decode(const uint8_t* b, int8x16_t& w0, int8x16_t& w1, float& a, float& c) {
        const uint8x16_t v = vld1q_u8(b + 8);
        const uint32_t qh = load_u32(b + 4);
        w0 = s8(vorrq_u8(vandq_u8(v, vdupq_n_u8(15)), fifth_bits(qh, 0)));
        w1 = s8(vorrq_u8(vshrq_n_u8(v, 4), fifth_bits(qh, 2)));
        a = load_fp16(b);
        c = load_fp16(b + 2);
    }
};

struct BlockQ8_0 {
    static constexpr int kBytes = 34;
    static constexpr bool kOffset = false;
    static void decode(const uint8_t* b, int8x16_t& w0, int8x16_t& w1, float& a, float& c) {
        w0 = vld1q_s8(reinterpret_cast<const int8_t*>(b + 2));
        w1 = vld1q_s8(reinterpret_cast<const int8_t*>(b + 18));
        a = load_fp16(b);
        c = 0.0f;
    }
};

template <class B, int TT>
OQ_INLINE void row_32(const uint8_t* row, const QAct& x, int64_t t0, float* y, int64_t ldy) {
    const int64_t nb = x.K / kQK;
    float32x4_t acc[TT];
    float corr[TT];
    for (int u = 0; u < TT; ++u) {
        acc[u] = vdupq_n_f32(0.0f);
        corr[u] = 0.0f;
    }
    for (int64_t b = 0; b < nb; ++b) {
        int8x16_t w0, w1;
        float a, c;
        B::decode(row + b * B::kBytes, w0, w1, a, c);
        for (int u = 0; u < TT; ++u) {
            const int64_t t = t0 + u;
            const int8_t* xq = x.q + t * x.K + b * kQK;
            const int32x4_t p = dot16(dot16(vdupq_n_s32(0), w0, vld1q_s8(xq)), w1, vld1q_s8(xq + 16));
            acc[u] = vfmaq_n_f32(acc[u], vcvtq_f32_s32(p), a * x.d[t * nb + b]);
            if (B::kOffset) corr[u] += c * x.ds[t * nb + b];
        }
    }
    for (int u = 0; u < TT; ++u) y[u * ldy] = vaddvq_f32(acc[u]) + corr[u];
}

// K-quants against 256-value activation blocks: integer sums per super-block, one float FMA.
template <bool kFifthBit, int TT>
OQ_INLINE void row_q45_k(const uint8_t* row, const QAct& x, int64_t t0, float* y, int64_t ldy) {
    constexpr int kBytes = kFifthBit ? 176 : 144;
    const int64_t nsb = x.K / kQKK;
    const uint8x16_t m4 = vdupq_n_u8(15), m16 = vdupq_n_u8(0x10);
    float32x4_t acc[TT];
    float mins[TT];
    for (int u = 0; u < TT; ++u) {
        acc[u] = vdupq_n_f32(0.0f);
        mins[u] = 0.0f;
    }
    for (int64_t sb = 0; sb < nsb; ++sb) {
        const uint8_t* blk = row + sb * kBytes;
        uint8_t sc[8], m[8];
        unpack_k_scales(blk + 4, sc, m);
        const float d = load_fp16(blk), dmin = load_fp16(blk + 2);
        int32x4_t isum[TT];
        for (int u = 0; u < TT; ++u) {
            const int64_t t = t0 + u;
            const int16_t* bs = x.bsums + t * (x.K / 16) + sb * 16;
            int32_t msum = 0;
            for (int s = 0; s < 8; ++s) msum += m[s] * (bs[2 * s] + bs[2 * s + 1]);
            mins[u] += dmin * x.d[t * nsb + sb] * static_cast<float>(msum);
            isum[u] = vdupq_n_s32(0);
        }
        const uint8_t* qs = blk + (kFifthBit ? 48 : 16);
        const uint8x16_t qh0 = vld1q_u8(blk + 16), qh1 = vld1q_u8(blk + 32);
        for (int j = 0; j < 4; ++j) {
            const uint8x16_t q0 = vld1q_u8(qs + 32 * j), q1 = vld1q_u8(qs + 32 * j + 16);
            uint8x16_t lo0 = vandq_u8(q0, m4), lo1 = vandq_u8(q1, m4);
            uint8x16_t hi0 = vshrq_n_u8(q0, 4), hi1 = vshrq_n_u8(q1, 4);
            if (kFifthBit) {
                const uint8x16_t bl = vdupq_n_u8(static_cast<uint8_t>(1 << (2 * j)));
                const uint8x16_t bh = vdupq_n_u8(static_cast<uint8_t>(2 << (2 * j)));
                lo0 = vorrq_u8(lo0, vandq_u8(vtstq_u8(qh0, bl), m16));
                lo1 = vorrq_u8(lo1, vandq_u8(vtstq_u8(qh1, bl), m16));
                hi0 = vorrq_u8(hi0, vandq_u8(vtstq_u8(qh0, bh), m16));
                hi1 = vorrq_u8(hi1, vandq_u8(vtstq_u8(qh1, bh), m16));
            }
            for (int u = 0; u < TT; ++u) {
                const int8_t* xq = x.q + (t0 + u) * x.K + sb * kQKK + 64 * j;
                const int32x4_t z = vdupq_n_s32(0);
                const int32x4_t p0 = dot16(dot16(z, s8(lo0), vld1q_s8(xq)), s8(lo1), vld1q_s8(xq + 16));
                const int32x4_t p1 = dot16(dot16(z, s8(hi0), vld1q_s8(xq + 32)), s8(hi1), vld1q_s8(xq + 48));
                isum[u] = vmlaq_n_s32(vmlaq_n_s32(isum[u], p0, sc[2 * j]), p1, sc[2 * j + 1]);
            }
        }
        for (int u = 0; u < TT; ++u) {
            acc[u] = vfmaq_n_f32(acc[u], vcvtq_f32_s32(isum[u]), d * x.d[(t0 + u) * nsb + sb]);
        }
    }
    for (int u = 0; u < TT; ++u) y[u * ldy] = vaddvq_f32(acc[u]) - mins[u];
}

template <int TT>
OQ_INLINE void row_q6_k(const uint8_t* row, const QAct& x, int64_t t0, float* y, int64_t ldy) {
    const int64_t nsb = x.K / kQKK;
    const uint8x16_t m4 = vdupq_n_u8(15), m3 = vdupq_n_u8(3);
    const int8x16_t m32 = vdupq_n_s8(32);
    float32x4_t acc[TT];
    for (int u = 0; u < TT; ++u) acc[u] = vdupq_n_f32(0.0f);
    for (int64_t sb = 0; sb < nsb; ++sb) {
        const uint8_t* blk = row + sb * 210;
        const auto* sc = reinterpret_cast<const int8_t*>(blk + 192);
        int32x4_t isum[TT];
        for (int u = 0; u < TT; ++u) isum[u] = vdupq_n_s32(0);
        for (int h = 0; h < 2; ++h) {
            const uint8_t* ql = blk + 64 * h;
            const uint8x16_t qh[2] = {vld1q_u8(blk + 128 + 32 * h), vld1q_u8(blk + 144 + 32 * h)};
            for (int c = 0; c < 4; ++c) {
                const int k = 4 * h + c;
                int8x16_t w[2];  // q - 32 for the chunk's two 16-value sub-blocks
                for (int i = 0; i < 2; ++i) {
                    const uint8x16_t l = vld1q_u8(ql + 32 * (c % 2) + 16 * i);
                    const uint8x16_t lo = c < 2 ? vandq_u8(l, m4) : vshrq_n_u8(l, 4);
                    const int8x16_t shift = vdupq_n_s8(static_cast<int8_t>(-2 * c));  // right by 2c
                    const uint8x16_t hi = vandq_u8(vshlq_u8(qh[i], shift), m3);
                    w[i] = vsubq_s8(s8(vorrq_u8(lo, vshlq_n_u8(hi, 4))), m32);
                }
                for (int u = 0; u < TT; ++u) {
                    const int8_t* xq = x.q + (t0 + u) * x.K + sb * kQKK + 32 * k;
                    const int32x4_t p0 = dot16(vdupq_n_s32(0), w[0], vld1q_s8(xq));
                    const int32x4_t p1 = dot16(vdupq_n_s32(0), w[1], vld1q_s8(xq + 16));
                    isum[u] = vmlaq_n_s32(vmlaq_n_s32(isum[u], p0, sc[2 * k]), p1, sc[2 * k + 1]);
                }
            }
        }
        const float d = load_fp16(blk + 208);
        for (int u = 0; u < TT; ++u) {
            acc[u] = vfmaq_n_f32(acc[u], vcvtq_f32_s32(isum[u]), d * x.d[(t0 + u) * nsb + sb]);
        }
    }
    for (int u = 0; u < TT; ++u) y[u * ldy] = vaddvq_f32(acc[u]);
}

// Rows [n0, n1) through one row kernel, inlined.
template <auto kRow>
void tile(const uint8_t* w, size_t row_bytes, const QAct& x, int64_t t0, float* y, int64_t ldy,
          int64_t n0, int64_t n1) {
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

// Rounds x * id (ties to even) for 16 values into q; returns the sum of the quants.
int32_t quantize_16(const float* x, float id, int8_t* q) {
    int32x4_t r[4];
    for (int i = 0; i < 4; ++i) r[i] = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + 4 * i), id));
    const int16x8_t a = vcombine_s16(vmovn_s32(r[0]), vmovn_s32(r[1]));
    const int16x8_t c = vcombine_s16(vmovn_s32(r[2]), vmovn_s32(r[3]));
    vst1q_s8(q, vcombine_s8(vmovn_s16(a), vmovn_s16(c)));
    return vaddvq_s32(vaddq_s32(vaddq_s32(r[0], r[1]), vaddq_s32(r[2], r[3])));
}

float abs_max(const float* x, int n) {
    float32x4_t m = vdupq_n_f32(0.0f);
    for (int i = 0; i < n; i += 4) m = vmaxq_f32(m, vabsq_f32(vld1q_f32(x + i)));
    return vmaxvq_f32(m);
}

void quantize_act32_neon(const float* x, int64_t K, int8_t* q, float* d, float* ds) {
    for (int64_t b = 0; b < K / kQK; ++b) {
        const float amax = abs_max(x + b * kQK, kQK);
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        const int32_t sum = quantize_16(x + b * kQK, id, q + b * kQK) +
                            quantize_16(x + b * kQK + 16, id, q + b * kQK + 16);
        d[b] = amax / 127.0f;
        ds[b] = d[b] * static_cast<float>(sum);
    }
}

void quantize_act256_neon(const float* x, int64_t K, int8_t* q, float* d, int16_t* bsums) {
    for (int64_t b = 0; b < K / kQKK; ++b) {
        const float amax = abs_max(x + b * kQKK, kQKK);
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        for (int i = 0; i < kQKK / 16; ++i) {
            const int64_t off = b * kQKK + 16 * i;
            bsums[off / 16] = static_cast<int16_t>(quantize_16(x + off, id, q + off));
        }
        d[b] = amax / 127.0f;
    }
}

}  // namespace

const KernelTable* neon_kernels() {
    static const KernelTable table = {
        "neon",
        quantize_act32_neon,
        quantize_act256_neon,
        {rows_32<BlockQ4_0>, rows_32<BlockQ4_1>, rows_32<BlockQ5_0>, rows_32<BlockQ5_1>,
         rows_32<BlockQ8_0>, rows_q45_k<false>, rows_q45_k<true>, rows_q6_k},
    };
    return &table;
}

}  // namespace oq

#else

namespace oq {
const KernelTable* neon_kernels() { return nullptr; }
}  // namespace oq

#endif
