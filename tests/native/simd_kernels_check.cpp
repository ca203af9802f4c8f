// Every SIMD kernel table this build has for this CPU (AVX-512, AVX-VNNI and AVX2 on x86-64, NEON on
// AArch64) against the portable scalar one, without Python, so that it can be cross-compiled and run
// under an emulator, or built over SIMDe's portable intrinsics (tests/test_native_cross_arch.py). For every GGML
// block type and 1..9 and 17 activation rows:
//  - the activation quantizers agree bit for bit;
//  - the SIMD and scalar dot products agree within 1e-5 of sum |w| |x| (float rounding order);
//  - the scalar result lies within the activation-quantization bound of the fp64 product of the
//    dequantized weights and the unrounded activations (see tests/test_quant_kernels.py);
//  - a threaded matmul over two weights equals the single-threaded one bit for bit, and Q5_0
//    weights re-laid as Q5_0_PAIRS give the Q5_0 results bit for bit;
//  - the AVX-VNNI kernels give the AVX2 kernels' results bit for bit;
//  - the decode step's vector primitives (vec_ops.h) agree with fp64 within the worst-case
//    rounding error of their sums, n * 2^-24 * sum |terms| (any summation order), and exp/SiLU
//    within 1e-6 relative.
// Prints one line per failure and exits 1 on any; prints a summary and exits 0 otherwise.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "../../csrc/matmul.h"
#include "../../csrc/quant_common.h"
#include "../../csrc/vec_ops.h"

using namespace oq;

namespace {

int g_failures = 0;

void fail(const char* what, const char* type, int T, long index, double got, double want) {
    if (++g_failures <= 20) std::printf("FAIL %s %s T=%d at %ld: %.9g vs %.9g\n", what, type, T, index, got, want);
}

const char* type_name(int idx) {
    static const char* names[kNumTypes] = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "Q5_0_PAIRS"};
    return names[idx];
}

bool is_k_quant(int idx) { return kTypes[idx].block_elems == kQKK; }

// Nearest fp16 (ties to even) of a value well inside fp16's range; below its normals, zero.
uint16_t fp16_bits(float v) {
    uint32_t f;
    std::memcpy(&f, &v, sizeof f);
    const auto sign = static_cast<uint16_t>((f >> 16) & 0x8000);
    const int exp = static_cast<int>((f >> 23) & 0xff) - 127 + 15;
    if (exp <= 0) return sign;
    const uint32_t mant = f & 0x7fffff, rest = mant & 0x1fff;
    uint32_t h = (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;  // a carry into the exponent is right
    return static_cast<uint16_t>(sign | h);
}

// Random bytes (every quant bit pattern) with sane fp16 scales, as random_blocks() in Python.
std::vector<uint8_t> random_blocks(int idx, int64_t rows, int64_t K, std::mt19937& rng) {
    const TypeInfo& t = kTypes[idx];
    std::vector<uint8_t> raw(static_cast<size_t>(rows * (K / t.block_elems) * t.block_bytes));
    std::uniform_int_distribution<int> byte(0, 255);
    for (auto& b : raw) b = static_cast<uint8_t>(byte(rng));
    std::normal_distribution<float> normal;
    auto put = [&](uint8_t* p, float scale) {
        const uint16_t h = fp16_bits(normal(rng) * scale);
        std::memcpy(p, &h, 2);
    };
    for (size_t off = 0; off < raw.size(); off += t.block_bytes) {
        uint8_t* blk = raw.data() + off;
        if (t.type == QType::Q6_K) {
            put(blk + 208, 0.002f);
            continue;
        }
        put(blk, is_k_quant(idx) ? 0.01f : 0.05f);
        if (t.type == QType::Q4_1 || t.type == QType::Q5_1 || is_k_quant(idx)) put(blk + 2, 0.01f);
    }
    return raw;
}

// y[T, N] = x[T, K] @ W[N, K]^T through one table's activation quantizer and row kernel; `acts`
// keeps the quantized activations.
std::vector<float> table_rows(const KernelTable& table, int idx, const std::vector<uint8_t>& w,
                              const std::vector<float>& x, int T, int64_t N, int64_t K, QuantizedActs& acts) {
    select_kernels(&table);
    acts.quantize(x.data(), T, K, kTypes[idx].block_elems);
    std::vector<float> y(static_cast<size_t>(T * N), NAN);
    table.rows[idx](w.data(), row_bytes(idx, K), acts.act(), T, y.data(), N, 0, N);
    return y;
}

// One type at T activation rows: quantizers, SIMD vs scalar, scalar vs the fp64 bound.
void check_type(const KernelTable& simd, int idx, int T, std::mt19937& rng) {
    const int64_t N = 45, K = is_k_quant(idx) ? 1024 : 928;  // 29 blocks of 32: groups of 8 plus a tail
    const int block = kTypes[idx].block_elems;
    const std::vector<uint8_t> w = random_blocks(idx, N, K, rng);
    std::vector<float> x(static_cast<size_t>(T * K));
    std::normal_distribution<float> normal;
    for (int64_t i = 0; i < T * K; ++i) x[i] = normal(rng) * (i % K < 32 ? 20.0f : 1.0f);  // one loud block

    QuantizedActs acts[2];
    const std::vector<float> y[2] = {table_rows(simd, idx, w, x, T, N, K, acts[0]),
                                     table_rows(scalar_kernels(), idx, w, x, T, N, K, acts[1])};
    const QAct &a = acts[0].act(), &b = acts[1].act();
    if (std::memcmp(a.q, b.q, T * K) != 0) fail("activation quants", type_name(idx), T, -1, 0, 0);
    if (std::memcmp(a.d, b.d, sizeof(float) * T * (K / block)) != 0) fail("activation scales", type_name(idx), T, -1, 0, 0);
    if (block == kQK && std::memcmp(a.ds, b.ds, sizeof(float) * T * (K / kQK)) != 0) fail("block sums", type_name(idx), T, -1, 0, 0);
    if (block == kQKK && std::memcmp(a.bsums, b.bsums, sizeof(int16_t) * T * (K / 16)) != 0) fail("bsums", type_name(idx), T, -1, 0, 0);

    std::vector<float> wrow(K);
    for (int64_t n = 0; n < N; ++n) {
        dequantize_row(idx, w.data() + n * row_bytes(idx, K), K, wrow.data());
        for (int t = 0; t < T; ++t) {
            const float* xt = x.data() + t * K;
            double exact = 0, scale = 0, bound = 0;
            for (int64_t k0 = 0; k0 < K; k0 += block) {
                double amax = 0;
                for (int64_t k = k0; k < k0 + block; ++k) amax = std::fmax(amax, std::fabs(xt[k]));
                for (int64_t k = k0; k < k0 + block; ++k) {
                    exact += static_cast<double>(wrow[k]) * xt[k];
                    scale += std::fabs(static_cast<double>(wrow[k]) * xt[k]);
                    bound += std::fabs(wrow[k]) * amax / 254.0;
                }
            }
            const double simd_y = y[0][t * N + n], scalar_y = y[1][t * N + n];
            if (!(std::fabs(simd_y - scalar_y) <= 1e-5 * scale)) fail("simd vs scalar", type_name(idx), T, n, simd_y, scalar_y);
            if (!(std::fabs(scalar_y - exact) <= bound + 1e-5 * scale)) fail("scalar vs fp64", type_name(idx), T, n, scalar_y, exact);
        }
    }
}

// y = x @ [W_a; W_b]^T through matmul_segments on `threads` threads.
std::vector<float> two_weight_matmul(int threads, const std::vector<uint8_t> w[2], const int idx[2], int64_t N,
                                     const QuantizedActs acts[2], int T) {
    std::vector<float> y[2] = {std::vector<float>(T * N), std::vector<float>(T * N)};
    MatmulSegment seg[2];
    for (int s = 0; s < 2; ++s) seg[s] = {idx[s], w[s].data(), &acts[s].act(), y[s].data(), N};
    {
        std::lock_guard<std::mutex> lock(pool_mutex());
        set_pool_threads(threads);
        matmul_segments(seg, 2, T);
    }
    y[0].insert(y[0].end(), y[1].begin(), y[1].end());
    return y[0];
}

// Threads and the Q5_0_PAIRS layout (kernel or unpacked on the way) change no bit of the result.
void check_threads_and_pairs(const KernelTable& simd, std::mt19937& rng) {
    select_kernels(&simd);
    const int64_t N = 512, K = 1024;
    const int T = 3;
    std::vector<float> x(T * K);
    std::normal_distribution<float> normal;
    for (auto& v : x) v = normal(rng);
    QuantizedActs acts[2];
    acts[0].quantize(x.data(), T, K, kQK);
    acts[1].quantize(x.data(), T, K, kQKK);

    const int idx[2] = {4, 5};  // Q8_0 and Q4_K
    const std::vector<uint8_t> w[2] = {random_blocks(idx[0], N, K, rng), random_blocks(idx[1], N, K, rng)};
    const std::vector<float> one = two_weight_matmul(1, w, idx, N, acts, T);
    for (int threads : {2, 3}) {
        const std::vector<float> many = two_weight_matmul(threads, w, idx, N, acts, T);
        for (size_t i = 0; i < one.size(); ++i) {
            if (std::memcmp(&one[i], &many[i], sizeof(float)) != 0) fail("threads", "Q8_0+Q4_K", threads, i, many[i], one[i]);
        }
    }

    const std::vector<uint8_t> q5 = random_blocks(kQ5_0Index, N, K, rng);
    std::vector<uint8_t> pairs(q5.size());
    const size_t rb = row_bytes(kQ5_0Index, K);
    for (int64_t n = 0; n < N; ++n) repack_q5_0_pairs(q5.data() + n * rb, pairs.data() + n * rb, K / kQK);
    for (int rows : {T, 17}) {  // 17: the many-row path, which decodes each weight row once
        std::vector<float> xr(static_cast<size_t>(rows * K));
        for (auto& v : xr) v = normal(rng);
        QuantizedActs act;
        act.quantize(xr.data(), rows, K, kQK);
        std::vector<float> y_plain(rows * N), y_pairs(rows * N);
        segment_rows({kQ5_0Index, q5.data(), &act.act(), y_plain.data(), N}, rows, 0, N);
        segment_rows({kQ5_0PairsIndex, pairs.data(), &act.act(), y_pairs.data(), N}, rows, 0, N);
        for (size_t i = 0; i < y_plain.size(); ++i) {
            if (std::memcmp(&y_plain[i], &y_pairs[i], sizeof(float)) != 0) {
                fail("pairs layout", "Q5_0", rows, i, y_pairs[i], y_plain[i]);
            }
        }
    }
}

// Tables whose integer dot products must agree exactly (AVX-VNNI's and plain AVX2's) give the same
// bits for every type and a few row counts.
int check_same_bits(const KernelTable& a, const KernelTable& b, std::mt19937& rng) {
    int cases = 0;
    for (int idx = 0; idx < kNumTypes; ++idx) {
        if (idx == kQ5_0PairsIndex) continue;  // compared with Q5_0 within each table
        for (int T : {1, 4, 7, 17}) {
            const int64_t N = 45, K = is_k_quant(idx) ? 1024 : 928;
            const std::vector<uint8_t> w = random_blocks(idx, N, K, rng);
            std::vector<float> x(static_cast<size_t>(T * K));
            std::normal_distribution<float> normal;
            for (auto& v : x) v = normal(rng);
            QuantizedActs acts[2];
            const std::vector<float> y[2] = {table_rows(a, idx, w, x, T, N, K, acts[0]),
                                             table_rows(b, idx, w, x, T, N, K, acts[1])};
            for (size_t i = 0; i < y[0].size(); ++i) {
                if (std::memcmp(&y[0][i], &y[1][i], sizeof(float)) != 0) fail("same bits", type_name(idx), T, i, y[0][i], y[1][i]);
            }
            ++cases;
        }
    }
    return cases;
}

// |got - want| within the worst-case rounding error of an n-term float sum whose terms' magnitudes
// add up to `mass` (any order), plus `rel` of |want| for what precedes the sum.
void expect_sum(const char* what, long index, double got, double want, int64_t n, double mass, double rel = 0) {
    const double bound = (static_cast<double>(n) + 2) * 0x1p-24 * mass + rel * std::fabs(want);
    if (!(std::fabs(got - want) <= bound)) fail(what, "vec_ops", 0, index, got, want);
}

void check_vec_ops(std::mt19937& rng) {
    const VecOps& ops = vec_ops();
    std::normal_distribution<float> normal;
    const int64_t d = 64, n = 37, group = 3;  // n: four- and eight-row groups plus a tail
    std::vector<float> q(group * d), keys(n * d), p(group * n), out(group * d);
    for (auto* v : {&q, &keys, &p, &out}) {
        for (auto& e : *v) e = normal(rng);
    }
    std::vector<const float*> rows(n);
    for (int64_t j = 0; j < n; ++j) rows[j] = keys.data() + j * d;

    for (int64_t len : {1, 7, 64, 901}) {
        std::vector<float> a(len), b(len);
        for (int64_t i = 0; i < len; ++i) a[i] = normal(rng), b[i] = normal(rng);
        double want = 0, mass = 0;
        for (int64_t i = 0; i < len; ++i) want += static_cast<double>(a[i]) * b[i], mass += std::fabs(a[i] * b[i]);
        expect_sum("dot", len, ops.dot(a.data(), b.data(), len), want, len, mass);
    }

    const float scale = 0.125f;
    std::vector<float> scores(group * n);
    ops.row_scores(q.data(), group, rows.data(), n, d, scale, scores.data(), n);
    for (int64_t g = 0; g < group; ++g) {
        for (int64_t j = 0; j < n; ++j) {
            double want = 0, mass = 0;
            for (int64_t c = 0; c < d; ++c) want += static_cast<double>(q[g * d + c]) * rows[j][c], mass += std::fabs(q[g * d + c] * rows[j][c]);
            expect_sum("row_scores", g * n + j, scores[g * n + j], scale * want, d, scale * mass);
        }
    }

    std::vector<float> mixed = out;
    ops.weighted_rows(mixed.data(), group, rows.data(), n, d, p.data(), n);
    for (int64_t g = 0; g < group; ++g) {
        for (int64_t c = 0; c < d; ++c) {
            double want = out[g * d + c], mass = std::fabs(out[g * d + c]);
            for (int64_t j = 0; j < n; ++j) want += static_cast<double>(p[g * n + j]) * rows[j][c], mass += std::fabs(p[g * n + j] * rows[j][c]);
            expect_sum("weighted_rows", g * d + c, mixed[g * d + c], want, n + 1, mass);
        }
    }

    std::vector<float> x(n);
    for (int64_t i = 0; i < n; ++i) x[i] = 4 * normal(rng);
    std::vector<float> e = x;
    const float total = ops.exp_shifted(e.data(), n, 3.0f);
    double want_total = 0;
    for (int64_t i = 0; i < n; ++i) {
        const double want = std::exp(static_cast<double>(x[i]) - 3.0);
        want_total += want;
        if (!(std::fabs(e[i] - want) <= 1e-6 * want)) fail("exp_shifted", "vec_ops", 0, i, e[i], want);
    }
    expect_sum("exp_shifted sum", -1, total, want_total, n, want_total, 1e-6);

    std::vector<float> gate(n), up(n);
    for (int64_t i = 0; i < n; ++i) gate[i] = 6 * normal(rng), up[i] = normal(rng);
    std::vector<float> act = gate;
    ops.silu_mul(act.data(), up.data(), n);
    for (int64_t i = 0; i < n; ++i) {
        const double g = gate[i], want = g / (1 + std::exp(-g)) * up[i];
        if (!(std::fabs(act[i] - want) <= 1e-6 * std::fabs(want) + 1e-30)) fail("silu_mul", "vec_ops", 0, i, act[i], want);
    }
}

}  // namespace

int main() {
    std::mt19937 rng(1234);
    int checked_tables = 0;
    for (const KernelTable* simd : kernel_tables()) {  // every SIMD table this build has for this CPU
        if (simd == nullptr || simd == &scalar_kernels()) continue;
        ++checked_tables;
        const int before = g_failures;
        int checked = 0;
        for (int idx = 0; idx < kNumTypes; ++idx) {
            if (idx == kQ5_0PairsIndex) continue;  // a layout, not a GGML type: check_threads_and_pairs
            for (int T : {1, 2, 3, 4, 5, 6, 7, 8, 9, 17}) {  // 17: the many-row path (rows_decoded)
                check_type(*simd, idx, T, rng);
                ++checked;
            }
        }
        check_threads_and_pairs(*simd, rng);
        std::printf("%s vs scalar: %d type x row-count cases, threads, Q5_0_PAIRS: %d failures\n", simd->name, checked,
                    g_failures - before);
    }
    if (checked_tables == 0) {
        std::printf("no SIMD kernels in this build for this CPU\n");
        return 2;
    }
    if (avx_vnni_kernels() != nullptr && avx2_kernels() != nullptr) {
        const int before = g_failures;
        const int cases = check_same_bits(*avx_vnni_kernels(), *avx2_kernels(), rng);
        std::printf("avx-vnni vs avx2: %d type x row-count cases bit for bit: %d failures\n", cases, g_failures - before);
    }
    const int before = g_failures;
    check_vec_ops(rng);
    std::printf("vec_ops vs fp64: %d failures\n", g_failures - before);
    return g_failures == 0 ? 0 : 1;
}
