// The native half of the proxy output head (openqwen/kernels/proxy_head.py states the bound and
// why the result is exact): per-row statistics of the two copies of the vocabulary matrix, once at
// load; then per step the coarse logits, the bounds, the candidates and their exact logits in one
// call, since PyTorch's per-op cost on 152k-entry vectors (~0.3 ms each) ate most of the gain.
#include "proxy_head.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <vector>

#include "matmul.h"
#include "py_args.h"

namespace oq {
namespace {

// Per vocabulary row (proxy_stats' output, one array each): max|W - V|, |W - V|_2, max|V|, the fp
// slack factor, |W|_2.
constexpr int kStats = 5;
// Covers fp32 rounding in both kernels and in the bound itself (~1e-6 relative) with a wide margin.
constexpr double kFpSlack = 1e-4;

float round_up(double v) { return std::nextafter(static_cast<float>(v), std::numeric_limits<float>::infinity()); }

struct StatsJob {
    int exact_idx, coarse_idx;
    const uint8_t *exact, *coarse;
    int64_t K;
    float* out;  // [kStats][stride]
    int64_t stride;
};

void run_stats(void* ctx, int64_t begin, int64_t end) {
    const auto& job = *static_cast<const StatsJob*>(ctx);
    thread_local std::vector<float> w, v;
    w.resize(job.K), v.resize(job.K);
    const size_t wb = row_bytes(job.exact_idx, job.K), vb = row_bytes(job.coarse_idx, job.K);
    for (int64_t n = begin; n < end; ++n) {
        dequantize_row(job.exact_idx, job.exact + n * wb, job.K, w.data());
        dequantize_row(job.coarse_idx, job.coarse + n * vb, job.K, v.data());
        double err_max = 0, err_sq = 0, w_max = 0, v_max = 0, w_sq = 0;
        for (int64_t k = 0; k < job.K; ++k) {
            const double d = static_cast<double>(w[k]) - v[k];
            err_max = std::max(err_max, std::abs(d));
            err_sq += d * d;
            w_max = std::max(w_max, std::abs(static_cast<double>(w[k])));
            v_max = std::max(v_max, std::abs(static_cast<double>(v[k])));
            w_sq += static_cast<double>(w[k]) * w[k];
        }
        const double values[kStats] = {err_max, std::sqrt(err_sq), v_max, kFpSlack * (w_max + v_max), std::sqrt(w_sq)};
        for (int j = 0; j < kStats; ++j) job.out[j * job.stride + n] = round_up(values[j]);
    }
}

// |x|_1 and |x|_2 of one quantized activation row (x = d * q per block), in double.
void act_norms(const QAct& a, int64_t t, int block, double& l1, double& l2) {
    l1 = 0, l2 = 0;
    const int64_t blocks = a.K / block;
    for (int64_t b = 0; b < blocks; ++b) {
        int64_t s1 = 0, s2 = 0;
        for (int i = 0; i < block; ++i) {
            const int q = a.q[t * a.K + b * block + i];
            s1 += std::abs(q), s2 += q * q;
        }
        const double d = a.d[t * blocks + b];
        l1 += d * static_cast<double>(s1), l2 += d * d * static_cast<double>(s2);
    }
    l2 = std::sqrt(l2);
}

// |x - x'|_1 between the same row quantized with two block sizes.
double act_distance(const QAct& a, int block_a, const QAct& b, int block_b, int64_t t) {
    double sum = 0;
    for (int64_t k = 0; k < a.K; ++k) {
        const double va = static_cast<double>(a.d[t * (a.K / block_a) + k / block_a]) * a.q[t * a.K + k];
        const double vb = static_cast<double>(b.d[t * (b.K / block_b) + k / block_b]) * b.q[t * b.K + k];
        sum += std::abs(va - vb);
    }
    return sum;
}

constexpr float kInf = std::numeric_limits<float>::infinity();

// Calls act(i) for every i < n where test(i) holds, in order. Tests run 16 at a time without
// branches (so they vectorize); hits are rare here: a few hundred in 152k.
template <class Test, class Act>
void scan_blocks(int64_t n, Test test, Act act) {
    constexpr int64_t kBlock = 16;
    int64_t i = 0;
    for (; i + kBlock <= n; i += kBlock) {
        bool hit = false;
        for (int64_t j = 0; j < kBlock; ++j) hit |= test(i + j);
        if (!hit) continue;
        for (int64_t j = 0; j < kBlock; ++j) {
            if (test(i + j)) act(i + j);
        }
    }
    for (; i < n; ++i) {
        if (test(i)) act(i);
    }
}

struct RowsJob {
    int type_idx;
    const uint8_t* w;
    size_t row_bytes;
    const QAct* act;
    int T;
    const int64_t* rows;
    float* out;  // [T, count]
    int64_t count;
};

void run_rows(void* ctx, int64_t begin, int64_t end) {
    const auto& job = *static_cast<const RowsJob*>(ctx);
    for (int64_t j = begin; j < end; ++j) {  // row rows[j] as a one-row segment writing column j
        const MatmulSegment row{job.type_idx, job.w + job.rows[j] * job.row_bytes, job.act, job.out + j, job.count};
        segment_rows(row, job.T, 0, 1);
    }
}

}  // namespace

// proxy_stats(exact_type, exact_ptr, coarse_type, coarse_ptr, out_ptr, stride, N, K): statistic j of
// row n to out[j * stride + n] (fp32, rounded up). Both weights in GGUF blocks, which dequantize_row reads.
PyObject* py_proxy_stats(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
    int64_t a[8];
    if (!parse_int64s(args, nargs, 8, a, "proxy_stats")) return nullptr;
    const int64_t N = a[6], K = a[7];
    const int exact = check_type(a[0], K), coarse = check_type(a[2], K);
    if (exact < 0 || coarse < 0) return nullptr;
    if (exact == kQ5_0PairsIndex || coarse == kQ5_0PairsIndex || N < 0) {
        PyErr_SetString(PyExc_ValueError, "proxy_stats reads GGUF blocks and N >= 0");
        return nullptr;
    }
    StatsJob job{exact, coarse, reinterpret_cast<const uint8_t*>(a[1]), reinterpret_cast<const uint8_t*>(a[3]), K,
                 reinterpret_cast<float*>(a[4]), a[5]};
    Py_BEGIN_ALLOW_THREADS;
    {
        std::lock_guard<std::mutex> lock(pool_mutex());
        pool().parallel_for(N, chunk_rows(N, pool_threads()), run_stats, &job);
    }
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

// proxy_logits(coarse_type, coarse_ptr, exact_type, exact_ptr, stats_ptr, limits_ptr, x_ptr, y_ptr, T, V,
//              K, k, exempt_ptr, n_exempt, max_candidates) -> number of candidates, or -1 (none, or
// too many: y is then unspecified and the caller runs the full head). y [T, V] receives the exact
// logits of the candidates and -inf elsewhere. stats: proxy_stats' arrays [5, V]; limits: the
// largest max|V_i| and slack factor (fp32), applied to every row so that each row costs two numbers.
// Exempt tokens (int64 ids: those whose logits penalties or bans will move) are always candidates
// and take no part in the threshold.
PyObject* py_proxy_logits(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
    int64_t a[15];
    if (!parse_int64s(args, nargs, 15, a, "proxy_logits")) return nullptr;
    const int64_t T = a[8], V = a[9], K = a[10], k = a[11], n_exempt = a[13], max_candidates = a[14];
    const int coarse = check_type(a[0], K), exact = check_type(a[2], K);
    if (coarse < 0 || exact < 0) return nullptr;
    if (T <= 0 || T > INT32_MAX || k <= 0 || k > V || n_exempt < 0) {
        PyErr_SetString(PyExc_ValueError, "proxy_logits: bad T, k or exempt count");
        return nullptr;
    }
    const auto* stats = reinterpret_cast<const float*>(a[4]);
    const float *err_max = stats, *err_l2 = stats + V;
    const auto* limits = reinterpret_cast<const float*>(a[5]);
    const double max_coarse = limits[0], max_slack = limits[1];
    const auto* x = reinterpret_cast<const float*>(a[6]);
    auto* y = reinterpret_cast<float*>(a[7]);
    const auto* exempt = reinterpret_cast<const int64_t*>(a[12]);
    int64_t count = 0;
    Py_BEGIN_ALLOW_THREADS;
    {
        thread_local QuantizedActs coarse_acts, exact_acts;
        thread_local std::vector<uint8_t> chosen;
        thread_local std::vector<float> bound, best, exact_out;
        thread_local std::vector<int64_t> rows;
        const int cb = kTypes[coarse].block_elems, eb = kTypes[exact].block_elems;
        coarse_acts.quantize(x, T, K, cb);
        exact_acts.quantize(x, T, K, eb);
        std::lock_guard<std::mutex> lock(pool_mutex());
        const MatmulSegment segment{coarse, reinterpret_cast<const uint8_t*>(a[1]), &coarse_acts.act(), y, V};
        matmul_segments(&segment, 1, static_cast<int>(T));

        chosen.assign(V, 0);
        rows.clear();
        bound.resize(V);
        for (int64_t t = 0; t < T; ++t) {
            double l1, l2;
            act_norms(exact_acts.act(), t, eb, l1, l2);
            const double shift = cb == eb ? 0.0 : act_distance(exact_acts.act(), eb, coarse_acts.act(), cb, t);
            const float n1 = round_up(l1), n2 = round_up(l2), extra = round_up(max_slack * l1 + max_coarse * shift);
            const float* approx = y + t * V;
            for (int64_t i = 0; i < V; ++i) bound[i] = std::min(err_max[i] * n1, err_l2[i] * n2) + extra;
            // An infinite bound: always a candidate, never part of the threshold.
            for (int64_t i = 0; i < n_exempt; ++i) {
                if (exempt[i] >= 0 && exempt[i] < V) bound[exempt[i]] = kInf;
            }
            // tau: the k-th largest lower bound (best: ascending, k entries)
            best.assign(k, -kInf);
            scan_blocks(V, [&](int64_t i) { return approx[i] - bound[i] > best[0]; }, [&](int64_t i) {
                best[0] = approx[i] - bound[i];
                for (int64_t j = 1; j < k && best[j - 1] > best[j]; ++j) std::swap(best[j - 1], best[j]);
            });
            const float tau = best[0];
            scan_blocks(V, [&](int64_t i) { return approx[i] + bound[i] >= tau; }, [&](int64_t i) {
                if (chosen[i] == 0) chosen[i] = 1, rows.push_back(i);
            });
        }
        count = static_cast<int64_t>(rows.size());
        if (count == 0 || count > max_candidates) {
            count = -1;  // NaN activations, or a race too wide to pay off
        } else {
            exact_out.resize(T * count);
            RowsJob job{exact, reinterpret_cast<const uint8_t*>(a[3]), row_bytes(exact, K), &exact_acts.act(),
                        static_cast<int>(T), rows.data(), exact_out.data(), count};
            pool().parallel_for(count, chunk_rows(count, pool_threads()), run_rows, &job);
            std::fill(y, y + T * V, -kInf);
            for (int64_t t = 0; t < T; ++t) {
                for (int64_t j = 0; j < count; ++j) y[t * V + rows[j]] = exact_out[t * count + j];
            }
        }
    }
    Py_END_ALLOW_THREADS;
    return PyLong_FromLongLong(count);
}

}  // namespace oq
