// Portable kernels: the reference semantics every SIMD path must reproduce, and the path used on
// CPUs without AVX2 or NEON. Each type decodes a 32-weight group to integers q and floats (a, c)
// with w = a * q + c, so one generic loop serves the dot products and the dequantizer.
#include <cmath>
#include <vector>

#include "quant_common.h"

namespace oq {
namespace {

struct Group {
    int16_t q[kQK];
    float a;
    float c;
};

void decode_q4_0(const uint8_t* row, int64_t g, Group& out) {
    const uint8_t* b = row + g * 18;
    out.a = load_fp16(b);
    out.c = 0.0f;
    for (int j = 0; j < 16; ++j) {
        out.q[j] = static_cast<int16_t>((b[2 + j] & 15) - 8);
        out.q[j + 16] = static_cast<int16_t>((b[2 + j] >> 4) - 8);
    }
}

void decode_q4_1(const uint8_t* row, int64_t g, Group& out) {
    const uint8_t* b = row + g * 20;
    out.a = load_fp16(b);
    out.c = load_fp16(b + 2);
    for (int j = 0; j < 16; ++j) {
        out.q[j] = static_cast<int16_t>(b[4 + j] & 15);
        out.q[j + 16] = static_cast<int16_t>(b[4 + j] >> 4);
    }
}

void decode_q5_0(const uint8_t* row, int64_t g, Group& out) {
    const uint8_t* b = row + g * 22;
    const uint32_t qh = load_u32(b + 2);
    out.a = load_fp16(b);
    out.c = 0.0f;
    for (int j = 0; j < 16; ++j) {
        out.q[j] = static_cast<int16_t>(((b[6 + j] & 15) | (((qh >> j) & 1) << 4)) - 16);
        out.q[j + 16] = static_cast<int16_t>(((b[6 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16);
    }
}

void decode_q5_1(const uint8_t* row, int64_t g, Group& out) {
    const uint8_t* b = row + g * 24;
    const uint32_t qh = load_u32(b + 4);
    out.a = load_fp16(b);
    out.c = load_fp16(b + 2);
    for (int j = 0; j < 16; ++j) {
        out.q[j] = static_cast<int16_t>((b[8 + j] & 15) | (((qh >> j) & 1) << 4));
        out.q[j + 16] = static_cast<int16_t>((b[8 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4));
    }
}

void decode_q8_0(const uint8_t* row, int64_t g, Group& out) {
    const uint8_t* b = row + g * 34;
    out.a = load_fp16(b);
    out.c = 0.0f;
    for (int j = 0; j < kQK; ++j) out.q[j] = static_cast<int8_t>(b[2 + j]);
}

// Q4_K and Q5_K share scales and nibble layout; Q5_K adds a fifth bit per weight.
template <bool kFifthBit>
void decode_q45_k(const uint8_t* row, int64_t g, Group& out) {
    const uint8_t* b = row + (g / 8) * (kFifthBit ? 176 : 144);
    const int s = static_cast<int>(g % 8);
    uint8_t sc[8], m[8];
    unpack_k_scales(b + 4, sc, m);
    out.a = load_fp16(b) * sc[s];
    out.c = -(load_fp16(b + 2) * m[s]);
    const uint8_t* qh = b + 16;
    const uint8_t* qs = b + (kFifthBit ? 48 : 16) + 32 * (s / 2);
    const int shift = 4 * (s % 2);
    for (int l = 0; l < kQK; ++l) {
        int q = (qs[l] >> shift) & 15;
        if (kFifthBit) q |= ((qh[l] >> s) & 1) << 4;
        out.q[l] = static_cast<int16_t>(q);
    }
}

// Q6_K: in each 128-weight half, element l (0..31) of the four 32-chunks c takes its low nibble
// from ql[l + 32 * (c % 2)] (high nibble when c >= 2) and its top two bits from qh[l] >> 2c.
// The group's two 16-weight scales are folded into q so that a = d for the whole group.
void decode_q6_k(const uint8_t* row, int64_t g, Group& out) {
    const uint8_t* b = row + (g / 8) * 210;
    const int k = static_cast<int>(g % 8);
    const int half = k / 4, c = k % 4;
    const uint8_t* ql = b + 64 * half + 32 * (c % 2);
    const uint8_t* qh = b + 128 + 32 * half;
    const auto* scales = reinterpret_cast<const int8_t*>(b + 192);
    out.a = load_fp16(b + 208);
    out.c = 0.0f;
    for (int l = 0; l < kQK; ++l) {
        const int lo = (ql[l] >> (4 * (c / 2))) & 15;
        const int hi = (qh[l] >> (2 * c)) & 3;
        out.q[l] = static_cast<int16_t>(scales[2 * k + l / 16] * ((lo | (hi << 4)) - 32));
    }
}

using DecodeFn = void (*)(const uint8_t*, int64_t, Group&);

// kAct: the activation block size, 32 (scales d, sums ds) or 256 (scales d, sums per 16 bsums).
template <DecodeFn kDecode, int kAct>
void rows_scalar(const uint8_t* w, size_t row_bytes, const QAct& x, int T, float* y, int64_t ldy,
                 int64_t n0, int64_t n1) {
    constexpr int kTile = 8;  // activation rows sharing one decode of a weight group
    const int64_t groups = x.K / kQK;
    Group grp;
    for (int64_t n = n0; n < n1; ++n) {
        const uint8_t* row = w + n * row_bytes;
        for (int t0 = 0; t0 < T; t0 += kTile) {
            const int tt = T - t0 < kTile ? T - t0 : kTile;
            float acc[kTile] = {};
            for (int64_t g = 0; g < groups; ++g) {
                kDecode(row, g, grp);
                for (int u = 0; u < tt; ++u) {
                    const int64_t t = t0 + u;
                    const int8_t* xq = x.q + t * x.K + g * kQK;
                    int32_t isum = 0;
                    for (int l = 0; l < kQK; ++l) isum += grp.q[l] * xq[l];
                    float dx, xsum;  // the group's activation scale and d * sum(q)
                    if (kAct == kQK) {
                        dx = x.d[t * groups + g];
                        xsum = x.ds[t * groups + g];
                    } else {
                        dx = x.d[t * (x.K / kQKK) + g / 8];
                        const int16_t* bs = x.bsums + t * (x.K / 16) + 2 * g;
                        xsum = dx * static_cast<float>(bs[0] + bs[1]);
                    }
                    acc[u] += grp.a * dx * static_cast<float>(isum) + grp.c * xsum;
                }
            }
            for (int u = 0; u < tt; ++u) y[(t0 + u) * ldy + n] = acc[u];
        }
    }
}

// Shared by both activation formats: d = amax / 127, q = round_half_even(x * (127 / amax)).
float quantize_block(const float* x, int n, int8_t* q) {
    float amax = 0.0f;
    for (int l = 0; l < n; ++l) amax = std::fmax(amax, std::fabs(x[l]));
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    for (int l = 0; l < n; ++l) q[l] = static_cast<int8_t>(std::nearbyint(x[l] * id));  // ties to even
    return amax / 127.0f;
}

void quantize_act32_scalar(const float* x, int64_t K, int8_t* q, float* d, float* ds) {
    for (int64_t b = 0; b < K / kQK; ++b) {
        d[b] = quantize_block(x + b * kQK, kQK, q + b * kQK);
        int32_t sum = 0;
        for (int l = 0; l < kQK; ++l) sum += q[b * kQK + l];
        ds[b] = d[b] * static_cast<float>(sum);
    }
}

void quantize_act256_scalar(const float* x, int64_t K, int8_t* q, float* d, int16_t* bsums) {
    for (int64_t b = 0; b < K / kQKK; ++b) d[b] = quantize_block(x + b * kQKK, kQKK, q + b * kQKK);
    for (int64_t i = 0; i < K / 16; ++i) {
        int sum = 0;
        for (int l = 0; l < 16; ++l) sum += q[16 * i + l];
        bsums[i] = static_cast<int16_t>(sum);
    }
}

constexpr DecodeFn kDecoders[kNumTypes] = {
    decode_q4_0, decode_q4_1, decode_q5_0, decode_q5_1, decode_q8_0,
    decode_q45_k<false>, decode_q45_k<true>, decode_q6_k,
};

}  // namespace

const KernelTable& scalar_kernels() {
    static const KernelTable table = {
        "scalar",
        quantize_act32_scalar,
        quantize_act256_scalar,
        {rows_scalar<kDecoders[0], kQK>, rows_scalar<kDecoders[1], kQK>, rows_scalar<kDecoders[2], kQK>,
         rows_scalar<kDecoders[3], kQK>, rows_scalar<kDecoders[4], kQK>, rows_scalar<kDecoders[5], kQKK>,
         rows_scalar<kDecoders[6], kQKK>, rows_scalar<kDecoders[7], kQKK>},
    };
    return table;
}

namespace {

// Q5_0_PAIRS (quant_common.h): pack = true goes from the GGUF blocks to the pairs, false back.
template <bool kPack>
void convert_q5_0_pairs(const uint8_t* src, uint8_t* dst, int64_t blocks) {
    constexpr int kB = 22;
    for (int64_t b0 = 0; b0 < blocks; b0 += 8) {
        const int c = blocks - b0 < 8 ? static_cast<int>(blocks - b0) : 8;
        const uint8_t* in = src + b0 * kB;
        uint8_t* out = dst + b0 * kB;
        uint8_t* gguf = kPack ? const_cast<uint8_t*>(in) : out;     // c blocks of 22 bytes
        uint8_t* pairs = kPack ? out : const_cast<uint8_t*>(in);    // the group in Q5_0_PAIRS
        uint8_t* h = pairs + 2 * c;
        uint8_t* qs = h + 8 * (c / 2);
        for (int i = 0; i < c; ++i) {
            uint8_t* d = gguf + kB * i;
            if (kPack) std::memcpy(pairs + 2 * i, d, 2); else std::memcpy(d, pairs + 2 * i, 2);
        }
        for (int p = 0; p < c / 2; ++p) {
            uint8_t* a = gguf + kB * (2 * p);
            uint8_t* b = a + kB;
            uint8_t* hp = h + 8 * p;
            uint8_t* qp = qs + 32 * p;
            if (kPack) {
                const uint32_t ha = load_u32(a + 2), hb = load_u32(b + 2);
                for (int m = 0; m < 8; ++m) {
                    uint8_t v = 0;
                    for (int k = 0; k < 4; ++k) {
                        v = static_cast<uint8_t>(v | ((ha >> (8 * k + m)) & 1) << k | ((hb >> (8 * k + m)) & 1) << (k + 4));
                    }
                    hp[m] = v;
                }
                for (int j = 0; j < 16; ++j) {
                    qp[j] = static_cast<uint8_t>((a[6 + j] & 15) | (b[6 + j] << 4));
                    qp[16 + j] = static_cast<uint8_t>((a[6 + j] >> 4) | (b[6 + j] & 0xf0));
                }
            } else {
                uint32_t ha = 0, hb = 0;
                for (int m = 0; m < 8; ++m) {
                    for (int k = 0; k < 4; ++k) {
                        ha |= static_cast<uint32_t>((hp[m] >> k) & 1) << (8 * k + m);
                        hb |= static_cast<uint32_t>((hp[m] >> (k + 4)) & 1) << (8 * k + m);
                    }
                }
                std::memcpy(a + 2, &ha, 4);
                std::memcpy(b + 2, &hb, 4);
                for (int j = 0; j < 16; ++j) {
                    a[6 + j] = static_cast<uint8_t>((qp[j] & 15) | (qp[16 + j] << 4));
                    b[6 + j] = static_cast<uint8_t>((qp[j] >> 4) | (qp[16 + j] & 0xf0));
                }
            }
        }
        if (c % 2 != 0) {
            uint8_t* last = gguf + kB * (c - 1) + 2;
            if (kPack) std::memcpy(qs + 32 * (c / 2), last, 20); else std::memcpy(last, qs + 32 * (c / 2), 20);
        }
    }
}

}  // namespace

void repack_q5_0_pairs(const uint8_t* src, uint8_t* dst, int64_t blocks) {
    convert_q5_0_pairs<true>(src, dst, blocks);
}

void unpack_q5_0_pairs(const uint8_t* src, uint8_t* dst, int64_t blocks) {
    convert_q5_0_pairs<false>(src, dst, blocks);
}

void dequantize_row(int type_idx, const uint8_t* w, int64_t K, float* out) {
    if (type_idx == kQ5_0PairsIndex) {  // back to GGUF blocks first
        thread_local std::vector<uint8_t> blocks;
        blocks.resize(K / kQK * kTypes[kQ5_0Index].block_bytes);
        unpack_q5_0_pairs(w, blocks.data(), K / kQK);
        w = blocks.data();
        type_idx = kQ5_0Index;
    }
    const DecodeFn decode = kDecoders[type_idx];
    Group grp;
    for (int64_t g = 0; g < K / kQK; ++g) {
        decode(w, g, grp);
        for (int l = 0; l < kQK; ++l) out[g * kQK + l] = grp.a * grp.q[l] + grp.c;
    }
}

}  // namespace oq
