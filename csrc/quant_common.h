// Shared definitions for the GGUF block-format matmul kernels.
//
// Every kernel computes y[t, n] = sum_k W[n, k] * x[t, k] with W stored row-major as raw GGUF
// blocks and x quantized on the fly to int8: per block of B values an fp32 scale d = amax / 127
// and q = round_half_even(x * (127 / amax)), as llama.cpp does with Q8_0 and Q8_K.
//  - B = 32 for the legacy types (Q4_0 ... Q8_0), whose weights carry one scale per 32 anyway;
//    ds = d * sum(q) per block lets offsets and mins be applied without touching q again.
//  - B = 256 for the K-quants: one activation scale per super-block lets the sub-block products
//    accumulate in integers, one float FMA per 256 weights instead of 8 (1.7x faster kernels);
//    bsums = sum(q) per 16 values serve the mins and Q6_K's offset.
// openqwen/kernels/quant.py reproduces this activation quantization bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace oq {

// GGML type ids (gguf.GGMLQuantizationType values).
enum class QType : int {
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    // Not a GGML type: Q5_0 weights re-laid for the AVX2 kernel by repack_q5_0_pairs (below).
    Q5_0_PAIRS = 1006,
};

constexpr int kNumTypes = 9;
constexpr int kQK = 32;    // legacy weight block size, and their activation block size
constexpr int kQKK = 256;  // K-quant super-block size, and their activation block size

struct TypeInfo {
    QType type;
    int block_elems;  // weights per block, also the activation block size
    int block_bytes;  // bytes per block
};

constexpr TypeInfo kTypes[kNumTypes] = {
    {QType::Q4_0, 32, 18},  {QType::Q4_1, 32, 20},   {QType::Q5_0, 32, 22},
    {QType::Q5_1, 32, 24},  {QType::Q8_0, 32, 34},   {QType::Q4_K, 256, 144},
    {QType::Q5_K, 256, 176}, {QType::Q6_K, 256, 210},  {QType::Q5_0_PAIRS, 32, 22},
};
constexpr int kQ5_0Index = 2, kQ5_0PairsIndex = 8;

// Index of `type` in kTypes, or -1 when unsupported.
inline int type_index(int type) {
    for (int i = 0; i < kNumTypes; ++i) {
        if (static_cast<int>(kTypes[i].type) == type) return i;
    }
    return -1;
}

// Block layouts (little-endian, packed; fp16 fields read with load_fp16 since blocks are unaligned).
// Q4_0 (18 B): f16 d | u8 qs[16]          w[j] = d * ((qs[j%16] >> 4*(j/16)) & 15) - 8)
// Q4_1 (20 B): f16 d | f16 m | u8 qs[16]  w[j] = d * nibble + m
// Q5_0 (22 B): f16 d | u32 qh | u8 qs[16] w[j] = d * ((nibble | bit j of qh << 4) - 16)
// Q5_1 (24 B): f16 d | f16 m | u32 qh | u8 qs[16]
// Q8_0 (34 B): f16 d | i8 qs[32]
// Q4_K (144 B): f16 d | f16 dmin | u8 scales[12] (8 x 6-bit scale, 8 x 6-bit min) | u8 qs[128]
//   64-weight chunk c uses qs[32c..32c+32): low nibbles are sub-block 2c, high nibbles 2c+1;
//   w = d * sc[s] * q - dmin * m[s].
// Q5_K (176 B): f16 d | f16 dmin | u8 scales[12] | u8 qh[32] | u8 qs[128]; bit s of qh[l] is the
//   fifth bit of element l of sub-block s.
// Q6_K (210 B): u8 ql[128] | u8 qh[64] | i8 scales[16] | f16 d; 16 sub-blocks of 16,
//   w = d * scales[e / 16] * (q6 - 32); see decode_q6_k in quant_scalar.cpp for the bit layout.
//
// Q5_0_PAIRS: the same bytes per row as Q5_0, rearranged once at load time so that the AVX2 kernel
// unpacks two blocks with fewer operations (and reads 8 scales with one conversion). Each group of
// c = min(8, blocks left) blocks A_0 .. A_{c-1} of a row holds, in order:
//   f16 d[c] | per pair p < c / 2: u8 h[8] | per pair p: u8 qs[32] | if c is odd: the last block's qh, qs (20 B)
// For the pair (A, B) = (A_{2p}, A_{2p+1}), with n_j and b_j the low 4 bits and the fifth bit of weight j:
//   qs[j] = n_j(A) | n_j(B) << 4 and qs[16 + j] = n_{16+j}(A) | n_{16+j}(B) << 4 (j < 16), so that
//   the low nibbles of the 32 bytes are A's weights in order and the high nibbles B's;
//   bit k of h[m] is b_{8k+m}(A) (k < 4) and b_{8(k-4)+m}(B) (k >= 4).
// Only the native kernels see this layout: QuantLinear keeps the GGUF bytes and builds the copy.

inline float fp16_to_fp32(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {  // subnormal: normalise the mantissa
        exp = 113;
        while ((man & 0x400) == 0) {
            man <<= 1;
            --exp;
        }
        bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

inline float load_fp16(const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, sizeof h);
    return fp16_to_fp32(h);
}

inline uint32_t load_u32(const uint8_t* p) {
    uint32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// Unpacks the 12-byte Q4_K/Q5_K scale field into 8 six-bit scales and 8 six-bit mins.
inline void unpack_k_scales(const uint8_t* s, uint8_t sc[8], uint8_t m[8]) {
    for (int j = 0; j < 4; ++j) {
        sc[j] = s[j] & 63;
        m[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 15) | ((s[j] >> 6) << 4);
        m[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
}

// T rows of quantized activations. q is [T][K]; d is [T][K / B]; for B = 32, ds is [T][K / 32];
// for B = 256, bsums is [T][K / 16]. The unused one of ds / bsums is null.
struct QAct {
    const int8_t* q;
    const float* d;
    const float* ds;
    const int16_t* bsums;
    int64_t K;
};

// Quantizes one activation row of K floats to blocks of 32 (K % 32 == 0).
using QuantizeAct32Fn = void (*)(const float* x, int64_t K, int8_t* q, float* d, float* ds);
// Quantizes one activation row of K floats to blocks of 256 (K % 256 == 0).
using QuantizeAct256Fn = void (*)(const float* x, int64_t K, int8_t* q, float* d, int16_t* bsums);

// y[t * ldy + n] = dot(W row n, x row t) for n in [n0, n1) and t in [0, T).
using RowsFn = void (*)(const uint8_t* w, size_t row_bytes, const QAct& x, int T, float* y,
                        int64_t ldy, int64_t n0, int64_t n1);

// Weight rows [n0, n1) against activation rows t0 .. t0 + TT (TT fixed per kernel), writing
// y[(t0 + u) * ldy + n]. The row loop lives inside so that the SIMD row body can be inlined.
using TileFn = void (*)(const uint8_t* w, size_t row_bytes, const QAct& x, int64_t t0, float* y,
                        int64_t ldy, int64_t n0, int64_t n1);

// Weight rows per block of rows_tiled: few enough to stay in L2 while every tile of activation
// rows passes over them, so each weight byte is read from memory once whatever T is.
constexpr int64_t kRowBlock = 16;

// A RowsFn from tile kernels for 4, 3, 2 and 1 activation rows, over blocks of kRowBlock weight rows.
template <TileFn kTile4, TileFn kTile3, TileFn kTile2, TileFn kTile1>
void rows_tiled(const uint8_t* w, size_t row_bytes, const QAct& x, int T, float* y, int64_t ldy,
                int64_t n0, int64_t n1) {
    for (int64_t r0 = n0; r0 < n1; r0 += kRowBlock) {
        const int64_t r1 = r0 + kRowBlock < n1 ? r0 + kRowBlock : n1;
        int64_t t = 0;
        for (; t + 4 <= T; t += 4) kTile4(w, row_bytes, x, t, y, ldy, r0, r1);
        switch (T - t) {
            case 3: kTile3(w, row_bytes, x, t, y, ldy, r0, r1); break;
            case 2: kTile2(w, row_bytes, x, t, y, ldy, r0, r1); break;
            case 1: kTile1(w, row_bytes, x, t, y, ldy, r0, r1); break;
            default: break;
        }
    }
}

// One instruction set's kernels: the two activation quantizers and a RowsFn per type (kTypes order).
struct KernelTable {
    const char* name;
    QuantizeAct32Fn quantize_act32;
    QuantizeAct256Fn quantize_act256;
    RowsFn rows[kNumTypes];
};

// A table from its activation quantizers and its row kernels in kTypes order.
inline KernelTable make_kernel_table(const char* name, QuantizeAct32Fn quantize_act32, QuantizeAct256Fn quantize_act256,
                                     const RowsFn (&rows)[kNumTypes]) {
    KernelTable table{name, quantize_act32, quantize_act256, {}};
    for (int i = 0; i < kNumTypes; ++i) table.rows[i] = rows[i];
    return table;
}

const KernelTable& scalar_kernels();
// Null when the CPU or the build lacks the instruction set.
const KernelTable* avx2_kernels();
const KernelTable* avx_vnni_kernels();  // the AVX2 kernels with AVX-VNNI dot products
const KernelTable* avx512_kernels();
const KernelTable* neon_kernels();

// Dequantizes one row of K weights to fp32, bit-identical to gguf.quants.dequantize (a Q5_0_PAIRS row
// as the Q5_0 row it was laid out from).
void dequantize_row(int type_idx, const uint8_t* w, int64_t K, float* out);

// One row of K / 32 Q5_0 blocks to Q5_0_PAIRS and back (src and dst do not overlap).
void repack_q5_0_pairs(const uint8_t* src, uint8_t* dst, int64_t blocks);
void unpack_q5_0_pairs(const uint8_t* src, uint8_t* dst, int64_t blocks);

}  // namespace oq
