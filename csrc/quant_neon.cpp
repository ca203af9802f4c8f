// AArch64 NEON kernels. NEON multiplies signed bytes directly, so unlike the AVX2 path the weights
// are decoded to signed int8 (offsets subtracted) and only Q4_1/Q5_1 and the K-quant mins go
// through the activation block sums. The 16-byte dot product uses SDOT on CPUs with the
// dot-product extension (ARMv8.2+dotprod) and widening multiplies on the others; the row kernels
// live in quant_neon_rows.inc, compiled once per flavour.
#include "quant_common.h"

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>

#if defined(__linux__)
#include <sys/auxv.h>
#endif

#define OQ_INLINE __attribute__((always_inline)) inline

namespace oq {
namespace {

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

// The row kernels for the build's own target: SDOT where it includes the dot-product extension
// (Apple clang targets the M1 and later, which have it), widening multiplies otherwise.
constexpr const char* kSdotName = "neon-dotprod";
#if defined(__ARM_FEATURE_DOTPROD)
#define OQ_NEON_SDOT 1
constexpr const char* kBaseName = kSdotName;
#else
#define OQ_NEON_SDOT 0
constexpr const char* kBaseName = "neon";
#endif
namespace base {
#include "quant_neon_rows.inc"
}  // namespace base
#undef OQ_NEON_SDOT

// A plain ARMv8 build by GCC on Linux also carries SDOT kernels, chosen when the kernel reports
// the extension (most AArch64 CPUs since 2017: Graviton 2+, Cortex-A55/A76+, Neoverse).
#if !defined(__ARM_FEATURE_DOTPROD) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define OQ_NEON_RUNTIME_SDOT 1
#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")
namespace sdot {
#define OQ_NEON_SDOT 1
#include "quant_neon_rows.inc"
#undef OQ_NEON_SDOT
}  // namespace sdot
#pragma GCC pop_options
#endif

}  // namespace

const KernelTable* neon_kernels() {
#if defined(OQ_NEON_RUNTIME_SDOT)
    const bool sdot_kernels = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
    static const KernelTable table =
        sdot_kernels ? make_kernel_table(kSdotName, quantize_act32_neon, quantize_act256_neon, sdot::kRows)
                     : make_kernel_table(kBaseName, quantize_act32_neon, quantize_act256_neon, base::kRows);
#else
    static const KernelTable table = make_kernel_table(kBaseName, quantize_act32_neon, quantize_act256_neon, base::kRows);
#endif
    return &table;
}

}  // namespace oq

#else

namespace oq {
const KernelTable* neon_kernels() { return nullptr; }
}  // namespace oq

#endif
