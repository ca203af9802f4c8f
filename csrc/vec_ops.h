// fp32 vector primitives of the native decode step (norms, attention, SwiGLU), chosen once at
// runtime: AVX2 (with FMA, F16C) where the CPU has it, else portable loops.
#pragma once

#include <cstdint>

namespace oq {

struct VecOps {
    float (*dot)(const float* a, const float* b, int64_t n);
    void (*axpy)(float* y, float a, const float* x, int64_t n);  // y += a * x
    float (*exp_shifted)(float* x, int64_t n, float shift);      // x = exp(x - shift); returns the sum
    void (*silu_mul)(float* gate, const float* up, int64_t n);   // gate = silu(gate) * up
};

const VecOps& vec_ops();

}  // namespace oq
