// openqwen._quant_native: matmuls against raw GGUF blocks, called from openqwen/kernels/quant.py.
//
// A plain CPython extension with METH_FASTCALL rather than a torch extension or ctypes: it builds
// without torch headers inside pip's isolated build environment, and a call costs ~0.1 us of
// argument handling against ~1 us for ctypes. Tensors cross the boundary as data_ptr() integers;
// the Python side guarantees dtype, contiguity and sizes.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "quant_common.h"
#include "thread_pool.h"

namespace oq {
namespace {

// Below this much work (weight bytes x activation rows) waking a second thread costs more than
// it saves: measured break-even near 64 KB of Q8_0 weights at T = 1.
constexpr int64_t kMinParallelWork = 64 * 1024;

std::mutex g_mutex;  // one caller at a time uses the pool; also guards its replacement
ThreadPool* g_pool = nullptr;
int g_num_threads = 1;
const KernelTable* g_kernels = nullptr;

ThreadPool& pool() {
    if (g_pool == nullptr) g_pool = new ThreadPool(g_num_threads);
    return *g_pool;
}

// A forked child has none of the parent's workers: drop the pool (leaked, it cannot be joined).
void forget_pool_after_fork() { g_pool = nullptr; }

struct MatmulJob {
    RowsFn rows;
    const uint8_t* w;
    size_t row_bytes;
    QAct x;
    int T;
    float* y;
    int64_t N;
};

void run_matmul_rows(void* ctx, int64_t begin, int64_t end) {
    const auto* job = static_cast<const MatmulJob*>(ctx);
    job->rows(job->w, job->row_bytes, job->x, job->T, job->y, job->N, begin, end);
}

struct DequantJob {
    int type_idx;
    const uint8_t* w;
    size_t row_bytes;
    int64_t K;
    float* out;
};

void run_dequant_rows(void* ctx, int64_t begin, int64_t end) {
    const auto* job = static_cast<const DequantJob*>(ctx);
    for (int64_t n = begin; n < end; ++n) {
        dequantize_row(job->type_idx, job->w + n * job->row_bytes, job->K, job->out + n * job->K);
    }
}

// Rows per chunk: about eight chunks per thread for load balance.
int64_t chunk_rows(int64_t n, int threads) {
    const int64_t c = (n + 8 * threads - 1) / (8 * threads);
    return c > 0 ? c : 1;
}

bool parse_int64s(PyObject* const* args, Py_ssize_t nargs, Py_ssize_t expected, int64_t* out,
                  const char* name) {
    if (nargs != expected) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, expected, nargs);
        return false;
    }
    for (Py_ssize_t i = 0; i < nargs; ++i) {
        out[i] = PyLong_AsLongLong(args[i]);
        if (out[i] == -1 && PyErr_Occurred()) return false;
    }
    return true;
}

// Validates a (type, K) pair; returns the type index or -1 with a Python error set.
int check_type(int64_t type, int64_t K) {
    const int idx = type_index(static_cast<int>(type));
    if (idx < 0) {
        PyErr_Format(PyExc_ValueError, "unsupported GGML type %lld", static_cast<long long>(type));
        return -1;
    }
    if (K <= 0 || K % kTypes[idx].block_elems != 0) {
        PyErr_Format(PyExc_ValueError, "K=%lld is not a positive multiple of the block size %d",
                     static_cast<long long>(K), kTypes[idx].block_elems);
        return -1;
    }
    return idx;
}

size_t row_bytes(int idx, int64_t K) {
    return static_cast<size_t>(K / kTypes[idx].block_elems) * kTypes[idx].block_bytes;
}

// mul_mat(type, w_ptr, x_ptr, y_ptr, T, N, K): y[T, N] = x[T, K] @ W[N, K]^T, x and y fp32.
PyObject* py_mul_mat(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
    int64_t a[7];
    if (!parse_int64s(args, nargs, 7, a, "mul_mat")) return nullptr;
    const int64_t T = a[4], N = a[5], K = a[6];
    const int idx = check_type(a[0], K);
    if (idx < 0) return nullptr;
    if (T < 0 || N < 0 || T > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "T and N must be non-negative");
        return nullptr;
    }
    const auto* w = reinterpret_cast<const uint8_t*>(a[1]);
    const auto* x = reinterpret_cast<const float*>(a[2]);
    auto* y = reinterpret_cast<float*>(a[3]);
    Py_BEGIN_ALLOW_THREADS;
    {
        // Per calling thread, so concurrent callers quantize their activations in parallel.
        thread_local std::vector<int8_t> xq;
        thread_local std::vector<float> xd;
        thread_local std::vector<int16_t> xbs;
        const KernelTable& k = *g_kernels;
        xq.resize(static_cast<size_t>(T * K));
        QAct act{xq.data(), nullptr, nullptr, nullptr, K};
        if (kTypes[idx].block_elems == kQK) {
            const int64_t blocks = K / kQK;
            // Scales then sums, plus 8 zeros: SIMD kernels load 8 block scales at a time.
            xd.resize(static_cast<size_t>(2 * T * blocks + 8));
            std::fill(xd.end() - 8, xd.end(), 0.0f);
            for (int64_t t = 0; t < T; ++t) {
                k.quantize_act32(x + t * K, K, xq.data() + t * K, xd.data() + t * blocks,
                                 xd.data() + (T + t) * blocks);
            }
            act.d = xd.data();
            act.ds = xd.data() + T * blocks;
        } else {
            xd.resize(static_cast<size_t>(T * K / kQKK));
            xbs.resize(static_cast<size_t>(T * K / 16));
            for (int64_t t = 0; t < T; ++t) {
                k.quantize_act256(x + t * K, K, xq.data() + t * K, xd.data() + t * (K / kQKK),
                                  xbs.data() + t * (K / 16));
            }
            act.d = xd.data();
            act.bsums = xbs.data();
        }
        MatmulJob job{k.rows[idx], w, row_bytes(idx, K), act, static_cast<int>(T), y, N};
        if (static_cast<int64_t>(job.row_bytes) * N * T < kMinParallelWork) {
            run_matmul_rows(&job, 0, N);
        } else {
            std::lock_guard<std::mutex> lock(g_mutex);
            pool().parallel_for(N, chunk_rows(N, g_num_threads), run_matmul_rows, &job);
        }
    }
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

// dequantize(type, w_ptr, out_ptr, N, K): out[N, K] fp32, bit-identical to gguf.quants.dequantize.
PyObject* py_dequantize(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
    int64_t a[5];
    if (!parse_int64s(args, nargs, 5, a, "dequantize")) return nullptr;
    const int64_t N = a[3], K = a[4];
    const int idx = check_type(a[0], K);
    if (idx < 0) return nullptr;
    if (N < 0) {
        PyErr_SetString(PyExc_ValueError, "N must be non-negative");
        return nullptr;
    }
    DequantJob job{idx, reinterpret_cast<const uint8_t*>(a[1]), row_bytes(idx, K), K,
                   reinterpret_cast<float*>(a[2])};
    Py_BEGIN_ALLOW_THREADS;
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        pool().parallel_for(N, chunk_rows(N, g_num_threads), run_dequant_rows, &job);
    }
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

PyObject* py_set_num_threads(PyObject*, PyObject* arg) {
    const long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return nullptr;
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "the number of threads must be at least 1");
        return nullptr;
    }
    Py_BEGIN_ALLOW_THREADS;
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        if (n != g_num_threads) {
            delete g_pool;  // joins the old workers
            g_pool = nullptr;
            g_num_threads = static_cast<int>(n);
        }
    }
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

PyObject* py_get_num_threads(PyObject*, PyObject*) { return PyLong_FromLong(g_num_threads); }

PyObject* py_isa(PyObject*, PyObject*) { return PyUnicode_FromString(g_kernels->name); }

// set_isa(name): switch to "scalar" or a SIMD path this CPU supports (for tests); False if not.
PyObject* py_set_isa(PyObject*, PyObject* arg) {
    const char* name = PyUnicode_AsUTF8(arg);
    if (name == nullptr) return nullptr;
    const KernelTable* candidates[] = {avx2_kernels(), neon_kernels(), &scalar_kernels()};
    for (const KernelTable* k : candidates) {
        if (k != nullptr && std::strcmp(k->name, name) == 0) {
            std::lock_guard<std::mutex> lock(g_mutex);
            g_kernels = k;
            Py_RETURN_TRUE;
        }
    }
    Py_RETURN_FALSE;
}

PyMethodDef kMethods[] = {
    {"mul_mat", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_mul_mat)), METH_FASTCALL,
     "mul_mat(type, w_ptr, x_ptr, y_ptr, T, N, K): y[T,N] = x[T,K] @ W[N,K]^T over raw GGUF blocks"},
    {"dequantize", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_dequantize)), METH_FASTCALL,
     "dequantize(type, w_ptr, out_ptr, N, K): raw GGUF blocks to fp32 rows"},
    {"set_num_threads", py_set_num_threads, METH_O, "set_num_threads(n): threads used per call"},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "get_num_threads() -> int"},
    {"isa", py_isa, METH_NOARGS, "isa() -> the instruction set in use: 'avx2', 'neon' or 'scalar'"},
    {"set_isa", py_set_isa, METH_O, "set_isa(name) -> bool: select an instruction set (tests)"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_quant_native", "GGUF block-format matmul kernels.",
                       -1, kMethods, nullptr, nullptr, nullptr, nullptr};

}  // namespace
}  // namespace oq

PyMODINIT_FUNC PyInit__quant_native() {
    using namespace oq;
    const KernelTable* simd = avx2_kernels();
    if (simd == nullptr) simd = neon_kernels();
    g_kernels = simd != nullptr ? simd : &scalar_kernels();
    const unsigned hw = std::thread::hardware_concurrency();
    g_num_threads = hw > 0 ? static_cast<int>(hw) : 1;
    pthread_atfork(nullptr, nullptr, forget_pool_after_fork);
    return PyModule_Create(&kModule);
}
