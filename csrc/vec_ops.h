// fp32 vector primitives of the native decode step (norms, attention, SwiGLU), chosen once at
// runtime: AVX2 (with FMA, F16C) where the CPU has it, NEON on AArch64, else portable loops.
#pragma once

#include <cstdint>

namespace oq {

struct VecOps {
    float (*dot)(const float* a, const float* b, int64_t n);
    // Attention of a group of query heads over one KV head's rows (d % 8 == 0):
    // s[g * ld + j] = scale * dot(q + g * d, rows[j], d) for g < group, j < n
    void (*row_scores)(const float* q, int64_t group, const float* const* rows, int64_t n, int64_t d, float scale,
                       float* s, int64_t ld);
    // out[g * d + i] += sum over j < n of p[g * ld + j] * rows[j][i] for g < group
    void (*weighted_rows)(float* out, int64_t group, const float* const* rows, int64_t n, int64_t d, const float* p,
                          int64_t ld);
    float (*exp_shifted)(float* x, int64_t n, float shift);      // x = exp(x - shift); returns the sum
    void (*silu_mul)(float* gate, const float* up, int64_t n);   // gate = silu(gate) * up
};

const VecOps& vec_ops();

}  // namespace oq
