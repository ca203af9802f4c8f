// The runtime shared by the Python-facing matmul and the native decode step: the selected kernel
// table, the worker pool, activation quantization and row-parallel matmuls over several weights.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <vector>

#include "quant_common.h"
#include "thread_pool.h"

namespace oq {

// Every kernel table, best first: null where the CPU or the build lacks it; the scalar one, last,
// always exists. kernels() starts with the first non-null one.
std::array<const KernelTable*, 5> kernel_tables();
const KernelTable& kernels();
void select_kernels(const KernelTable* table);

// One caller at a time uses the pool: take pool_mutex() around pool() and set_pool_threads().
std::mutex& pool_mutex();
ThreadPool& pool();
int pool_threads();
void set_pool_threads(int n);  // caller holds pool_mutex()
void forget_pool_after_fork();

// Rows per parallel chunk: about eight chunks per thread for load balance.
int64_t chunk_rows(int64_t n, int threads);

// T activation rows quantized for one activation block size (32 or 256), reusable by every
// weight of that block size that multiplies the same input.
class QuantizedActs {
public:
    void quantize(const float* x, int64_t T, int64_t K, int block);
    const QAct& act() const { return act_; }

private:
    std::vector<int8_t> q_;
    std::vector<float> d_;
    std::vector<int16_t> bsums_;
    QAct act_{};
};

// One weight's share of a matmul: y[T, N] = act[T, K] @ W[N, K]^T.
struct MatmulSegment {
    int type_idx;
    const uint8_t* w;
    const QAct* act;
    float* y;
    int64_t N;
};

size_t row_bytes(int type_idx, int64_t K);

// The layout the selected kernels read fastest for GGML type `type`: Q5_0_PAIRS for Q5_0 where
// they have a kernel for it (see repack_q5_0_pairs), else `type` itself.
int packed_type(int type);

// Rows [lo, hi) of one segment on the calling thread, through the selected kernels (a Q5_0_PAIRS
// weight under kernels without a kernel for it is unpacked on the way).
void segment_rows(const MatmulSegment& s, int T, int64_t lo, int64_t hi);

// Runs every segment's rows as one parallel job (one wake-up and one barrier for, e.g., q, k and
// v together). The caller holds pool_mutex().
void matmul_segments(const MatmulSegment* segments, int count, int T);

}  // namespace oq
