// openqwen._quant_native: matmuls against raw GGUF blocks and the native decode step, called from
// openqwen/kernels/quant.py and openqwen/kernels/native_decode.py.
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

#include "decode.h"
#include "matmul.h"
#include "proxy_head.h"
#include "py_args.h"

namespace oq {
namespace {

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
        thread_local QuantizedActs acts;
        acts.quantize(x, T, K, kTypes[idx].block_elems);
        const MatmulSegment segment{idx, w, &acts.act(), y, N};
        std::lock_guard<std::mutex> lock(pool_mutex());
        matmul_segments(&segment, 1, static_cast<int>(T));
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
        std::lock_guard<std::mutex> lock(pool_mutex());
        pool().parallel_for(N, chunk_rows(N, pool_threads()), run_dequant_rows, &job);
    }
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

struct RepackJob {
    const uint8_t* src;
    uint8_t* dst;
    size_t row_bytes;
    int64_t blocks;
};

void run_repack_rows(void* ctx, int64_t begin, int64_t end) {
    const auto* job = static_cast<const RepackJob*>(ctx);
    for (int64_t n = begin; n < end; ++n) {
        repack_q5_0_pairs(job->src + n * job->row_bytes, job->dst + n * job->row_bytes, job->blocks);
    }
}

PyObject* py_packed_type(PyObject*, PyObject* arg) {
    const long type = PyLong_AsLong(arg);
    if (type == -1 && PyErr_Occurred()) return nullptr;
    int packed;
    {
        std::lock_guard<std::mutex> lock(pool_mutex());  // set_isa changes the kernels under it
        packed = packed_type(static_cast<int>(type));
    }
    return PyLong_FromLong(packed);
}

PyObject* py_repack(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
    int64_t a[5];
    if (!parse_int64s(args, nargs, 5, a, "repack")) return nullptr;
    const int64_t N = a[3], K = a[4];
    if (a[0] != static_cast<int64_t>(QType::Q5_0) || check_type(a[0], K) < 0 || N < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "repack takes Q5_0 weights and N >= 0");
        return nullptr;
    }
    RepackJob job{reinterpret_cast<const uint8_t*>(a[1]), reinterpret_cast<uint8_t*>(a[2]),
                  row_bytes(kQ5_0Index, K), K / kQK};
    Py_BEGIN_ALLOW_THREADS;
    {
        std::lock_guard<std::mutex> lock(pool_mutex());
        pool().parallel_for(N, chunk_rows(N, pool_threads()), run_repack_rows, &job);
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
        std::lock_guard<std::mutex> lock(pool_mutex());
        set_pool_threads(static_cast<int>(n));
    }
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

PyObject* py_get_num_threads(PyObject*, PyObject*) { return PyLong_FromLong(pool_threads()); }

PyObject* py_isa(PyObject*, PyObject*) { return PyUnicode_FromString(kernels().name); }

// set_isa(name): switch to "scalar" or a SIMD path this CPU supports (for tests); False if not.
PyObject* py_set_isa(PyObject*, PyObject* arg) {
    const char* name = PyUnicode_AsUTF8(arg);
    if (name == nullptr) return nullptr;
    for (const KernelTable* k : kernel_tables()) {
        if (k != nullptr && std::strcmp(k->name, name) == 0) {
            std::lock_guard<std::mutex> lock(pool_mutex());
            select_kernels(k);
            Py_RETURN_TRUE;
        }
    }
    Py_RETURN_FALSE;
}

PyMethodDef kMethods[] = {
    {"mul_mat", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_mul_mat)), METH_FASTCALL,
     "mul_mat(type, w_ptr, x_ptr, y_ptr, T, N, K): y[T,N] = x[T,K] @ W[N,K]^T over raw GGUF blocks "
     "(or a repack()ed copy, type packed_type(...))"},
    {"dequantize", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_dequantize)), METH_FASTCALL,
     "dequantize(type, w_ptr, out_ptr, N, K): raw GGUF blocks (or Q5_0_PAIRS) to fp32 rows"},
    {"packed_type", py_packed_type, METH_O,
     "packed_type(type) -> the type id of the layout mul_mat reads fastest for GGML type `type`"},
    {"repack", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_repack)), METH_FASTCALL,
     "repack(type, src_ptr, dst_ptr, N, K): Q5_0 blocks to the packed_type(Q5_0) layout"},
    {"set_num_threads", py_set_num_threads, METH_O, "set_num_threads(n): threads used per call"},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "get_num_threads() -> int"},
    {"isa", py_isa, METH_NOARGS, "isa() -> the kernels in use: 'avx512-vnni', 'avx-vnni', 'avx2', 'neon', 'neon-dotprod' or 'scalar'"},
    {"set_isa", py_set_isa, METH_O, "set_isa(name) -> bool: select an instruction set (tests)"},
    {"make_decode_plan", py_make_decode_plan, METH_VARARGS,
     "make_decode_plan(dims, eps, scale, final_norm_ptr, embedding, layers) -> plan of the native decode step"},
    {"decode_step", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_decode_step)), METH_FASTCALL,
     "decode_step(plan, ids, x, out, T, positions, rope, rope_rows, slots, tables, table_width, lens): all layers of a decode step"},
    {"proxy_stats", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_proxy_stats)), METH_FASTCALL,
     "proxy_stats(exact_type, exact_ptr, coarse_type, coarse_ptr, out_ptr, stride, N, K): per-row statistics, "
     "statistic j of row n at out[j * stride + n]"},
    {"proxy_logits", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_proxy_logits)), METH_FASTCALL,
     "proxy_logits(...) -> candidates: top-k logits through the coarse copy (see proxy_head.cpp)"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_quant_native", "GGUF block-format matmul kernels.",
                       -1, kMethods, nullptr, nullptr, nullptr, nullptr};

}  // namespace
}  // namespace oq

PyMODINIT_FUNC PyInit__quant_native() {
    pthread_atfork(nullptr, nullptr, oq::forget_pool_after_fork);
    return PyModule_Create(&oq::kModule);
}
