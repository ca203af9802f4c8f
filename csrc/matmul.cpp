#include "matmul.h"

#include <algorithm>
#include <thread>

namespace oq {
namespace {

// Below this much work (weight bytes x activation rows) waking a second thread costs more than
// it saves: measured break-even near 64 KB of Q8_0 weights at T = 1.
constexpr int64_t kMinParallelWork = 64 * 1024;

const KernelTable* g_kernels = nullptr;
std::mutex g_mutex;
ThreadPool* g_pool = nullptr;
int g_num_threads = 0;

const KernelTable* best_kernels() {
    for (const KernelTable* table : kernel_tables()) {
        if (table != nullptr) return table;
    }
    return &scalar_kernels();  // not reached: the list ends with it
}

struct SegmentsJob {
    const MatmulSegment* segments;
    int count;
    int T;
};

// Rows [lo, hi) of a Q5_0_PAIRS weight under kernels without a kernel for that layout (the
// portable ones, e.g. after set_isa): back to GGUF blocks in a per-thread buffer, 16 rows at a time.
void rows_q5_0_unpacked(const KernelTable& k, const MatmulSegment& s, int T, int64_t lo, int64_t hi) {
    constexpr int64_t kRows = 16;
    const int64_t K = s.act->K;
    const size_t rb = row_bytes(kQ5_0PairsIndex, K);
    thread_local std::vector<uint8_t> buf;
    buf.resize(rb * kRows);
    for (int64_t r0 = lo; r0 < hi; r0 += kRows) {
        const int64_t r1 = std::min(hi, r0 + kRows);
        for (int64_t r = r0; r < r1; ++r) unpack_q5_0_pairs(s.w + r * rb, buf.data() + (r - r0) * rb, K / kQK);
        k.rows[kQ5_0Index](buf.data(), rb, *s.act, T, s.y + r0, s.N, 0, r1 - r0);
    }
}

// Global rows [begin, end) run through the segments they fall in, in order.
void run_segment_rows(void* ctx, int64_t begin, int64_t end) {
    const auto* job = static_cast<const SegmentsJob*>(ctx);
    int64_t offset = 0;
    for (int i = 0; i < job->count && offset < end; ++i) {
        const MatmulSegment& s = job->segments[i];
        const int64_t lo = std::max(begin, offset) - offset, hi = std::min(end, offset + s.N) - offset;
        if (lo < hi) segment_rows(s, job->T, lo, hi);
        offset += s.N;
    }
}

}  // namespace

void segment_rows(const MatmulSegment& s, int T, int64_t lo, int64_t hi) {
    const KernelTable& k = kernels();
    if (k.rows[s.type_idx] != nullptr) {
        k.rows[s.type_idx](s.w, row_bytes(s.type_idx, s.act->K), *s.act, T, s.y, s.N, lo, hi);
    } else {
        rows_q5_0_unpacked(k, s, T, lo, hi);
    }
}

std::array<const KernelTable*, 5> kernel_tables() {
    return {avx512_kernels(), avx_vnni_kernels(), avx2_kernels(), neon_kernels(), &scalar_kernels()};
}

const KernelTable& kernels() {
    if (g_kernels == nullptr) g_kernels = best_kernels();
    return *g_kernels;
}

void select_kernels(const KernelTable* table) { g_kernels = table; }

std::mutex& pool_mutex() { return g_mutex; }

int pool_threads() {
    if (g_num_threads == 0) {
        const unsigned hw = std::thread::hardware_concurrency();
        g_num_threads = hw > 0 ? static_cast<int>(hw) : 1;
    }
    return g_num_threads;
}

ThreadPool& pool() {
    if (g_pool == nullptr) g_pool = new ThreadPool(pool_threads());
    return *g_pool;
}

void set_pool_threads(int n) {
    if (n != pool_threads()) {
        delete g_pool;  // joins the old workers
        g_pool = nullptr;
        g_num_threads = n;
    }
}

// A forked child has none of the parent's workers: drop the pool (leaked, it cannot be joined).
void forget_pool_after_fork() { g_pool = nullptr; }

int64_t chunk_rows(int64_t n, int threads) {
    const int64_t c = (n + 8 * threads - 1) / (8 * threads);
    return c > 0 ? c : 1;
}

int packed_type(int type) {
    const bool pairs = type == static_cast<int>(QType::Q5_0) && kernels().rows[kQ5_0PairsIndex] != nullptr;
    return pairs ? static_cast<int>(QType::Q5_0_PAIRS) : type;
}

size_t row_bytes(int type_idx, int64_t K) {
    return static_cast<size_t>(K / kTypes[type_idx].block_elems) * kTypes[type_idx].block_bytes;
}

void QuantizedActs::quantize(const float* x, int64_t T, int64_t K, int block) {
    const KernelTable& k = kernels();
    q_.resize(static_cast<size_t>(T * K));
    act_ = QAct{q_.data(), nullptr, nullptr, nullptr, K};
    if (block == kQK) {
        const int64_t blocks = K / kQK;
        // Scales then sums, plus 8 zeros: SIMD kernels load 8 block scales at a time.
        d_.resize(static_cast<size_t>(2 * T * blocks + 8));
        std::fill(d_.end() - 8, d_.end(), 0.0f);
        for (int64_t t = 0; t < T; ++t) {
            k.quantize_act32(x + t * K, K, q_.data() + t * K, d_.data() + t * blocks, d_.data() + (T + t) * blocks);
        }
        act_.d = d_.data();
        act_.ds = d_.data() + T * blocks;
    } else {
        d_.resize(static_cast<size_t>(T * K / kQKK));
        bsums_.resize(static_cast<size_t>(T * K / 16));
        for (int64_t t = 0; t < T; ++t) {
            k.quantize_act256(x + t * K, K, q_.data() + t * K, d_.data() + t * (K / kQKK),
                              bsums_.data() + t * (K / 16));
        }
        act_.d = d_.data();
        act_.bsums = bsums_.data();
    }
}

void matmul_segments(const MatmulSegment* segments, int count, int T) {
    SegmentsJob job{segments, count, T};
    int64_t rows = 0, work = 0;
    for (int i = 0; i < count; ++i) {
        rows += segments[i].N;
        work += static_cast<int64_t>(row_bytes(segments[i].type_idx, segments[i].act->K)) * segments[i].N * T;
    }
    if (work < kMinParallelWork) {
        run_segment_rows(&job, 0, rows);
    } else {
        pool().parallel_for(rows, chunk_rows(rows, pool_threads()), run_segment_rows, &job);
    }
}

}  // namespace oq
