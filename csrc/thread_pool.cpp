#include "thread_pool.h"

#include <chrono>

namespace oq {
namespace {

// How long an idle worker spins before it sleeps: longer than the gap between the matmuls of one
// decode step, shorter than the gap between steps.
constexpr auto kSpin = std::chrono::microseconds(100);

constexpr uint64_t kFieldMask = (1u << 24) - 1;

inline uint64_t claim_gen(uint64_t c) { return c >> 48; }
inline int64_t claim_count(uint64_t c) { return static_cast<int64_t>((c >> 24) & kFieldMask); }
inline int64_t claim_next(uint64_t c) { return static_cast<int64_t>(c & kFieldMask); }

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

}  // namespace

ThreadPool::ThreadPool(int num_threads) {
    for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
    stop_.store(true, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_seq_cst);
    generation_.notify_all();
    for (auto& w : workers_) w.join();
}

void ThreadPool::run_chunks(uint64_t gen) {
    uint64_t c = claims_.load(std::memory_order_acquire);
    while (claim_gen(c) == gen && claim_next(c) < claim_count(c)) {
        if (!claims_.compare_exchange_weak(c, c + 1, std::memory_order_acquire)) continue;
        // The claim pins the job: the caller cannot post another until this chunk is done.
        const int64_t begin = claim_next(c) * chunk_;
        fn_(ctx_, begin, begin + chunk_ < n_ ? begin + chunk_ : n_);
        done_.fetch_add(1, std::memory_order_release);
        c = claims_.load(std::memory_order_acquire);
    }
}

void ThreadPool::parallel_for(int64_t n, int64_t chunk, RangeFn fn, void* ctx) {
    const int64_t chunks = (n + chunk - 1) / chunk;
    if (workers_.empty() || chunks <= 1) {
        fn(ctx, 0, n);
        return;
    }
    n_ = n;
    chunk_ = chunk;
    fn_ = fn;
    ctx_ = ctx;
    done_.store(0, std::memory_order_relaxed);
    job_gen_ = (job_gen_ + 1) & 0xffff;
    claims_.store(job_gen_ << 48 | static_cast<uint64_t>(chunks) << 24, std::memory_order_release);
    // seq_cst pairs with the sleepers_ increment in worker_loop: either we see the sleeper and
    // wake it, or its wait sees the new generation.
    generation_.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) generation_.notify_all();
    run_chunks(job_gen_);
    while (done_.load(std::memory_order_acquire) != chunks) cpu_relax();
}

void ThreadPool::worker_loop() {
    uint32_t seen = 0;  // the constructor's generation; a job may be posted before this thread runs
    for (;;) {
        auto deadline = std::chrono::steady_clock::now() + kSpin;
        uint32_t current;
        for (unsigned spins = 1; (current = generation_.load(std::memory_order_acquire)) == seen; ++spins) {
            cpu_relax();
            if (spins % 1024 == 0 && std::chrono::steady_clock::now() > deadline) {
                sleepers_.fetch_add(1, std::memory_order_seq_cst);
                generation_.wait(seen, std::memory_order_seq_cst);
                sleepers_.fetch_sub(1, std::memory_order_relaxed);
                deadline = std::chrono::steady_clock::now() + kSpin;
            }
        }
        seen = current;
        if (stop_.load(std::memory_order_relaxed)) return;
        run_chunks(claim_gen(claims_.load(std::memory_order_acquire)));
    }
}

}  // namespace oq
