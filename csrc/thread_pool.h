// A small persistent worker pool for the matmul kernels.
//
// Not OpenMP: PyTorch ships its own OpenMP runtime and a second one in the same process conflicts.
// Batch-1 decode issues a matmul every few microseconds, so idle workers spin for a while before
// sleeping on a futex (std::atomic::wait); a call that finds them spinning starts in well under a
// microsecond. The caller waits for the work, not for the workers: chunks are claimed from one
// atomic word tagged with the job's generation, so a worker the OS has descheduled (this often
// runs on small, shared machines) simply finds no chunk left when it wakes.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

namespace oq {

using RangeFn = void (*)(void* ctx, int64_t begin, int64_t end);

class ThreadPool {
public:
    // num_threads counts the calling thread, which always takes part in the work.
    explicit ThreadPool(int num_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

    // Runs fn(ctx, begin, end) over [0, n) in chunks of `chunk` (at most 2^24 chunks), handed out
    // dynamically. Returns when all chunks are done. Not reentrant: one caller at a time.
    void parallel_for(int64_t n, int64_t chunk, RangeFn fn, void* ctx);

private:
    void worker_loop();
    // Claims and runs chunks of job `gen` until none is left or a newer job has been posted.
    void run_chunks(uint64_t gen);

    std::vector<std::thread> workers_;
    // Chunk claims: generation (16 bits) | chunk count (24) | next chunk (24). A claim is a CAS on
    // the whole word, so it can only succeed for the job whose fields below are current.
    std::atomic<uint64_t> claims_{0};
    std::atomic<int64_t> done_{0};          // chunks finished in the current job
    std::atomic<uint32_t> generation_{0};   // futex word that sleeping workers wait on
    std::atomic<int> sleepers_{0};
    std::atomic<bool> stop_{false};
    uint64_t job_gen_ = 0;
    // The current job, published by the release store of claims_.
    int64_t n_ = 0;
    int64_t chunk_ = 1;
    RangeFn fn_ = nullptr;
    void* ctx_ = nullptr;
};

}  // namespace oq
