// The native decode step: every decoder layer of a dense Qwen2/Qwen3 model for T sequences with
// one new token each, in one call, over quantized weights and the paged fp32 KV cache.
//
// In PyTorch a decode step is ~25 small ops per layer around the matmuls, and on two CPU cores
// their dispatch cost about as long as the matmuls themselves. Here they are plain loops between
// the quantized matmuls, and the worker pool stays spinning across the whole step. The math is
// the model's, op for op (openqwen/models/qwen2.py and qwen3.py): pre-norm residual blocks, GQA,
// rotate-half RoPE with cos/sin from the model's own rotary embedding, per-head q/k RMSNorm when
// the layer has it, SwiGLU.
#include "decode.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "matmul.h"
#include "vec_ops.h"

namespace oq {
namespace {

struct Linear {
    int type_idx = -1;
    const uint8_t* w = nullptr;
    const float* bias = nullptr;  // null when the projection has none
    int64_t N = 0, K = 0;
};

struct Layer {
    const float* input_norm;
    const float* post_attention_norm;
    const float* q_norm;  // per-head q/k RMSNorm weights [d] (Qwen3), null otherwise
    const float* k_norm;
    float* k_cache;  // [blocks, block_size, Hkv, d]
    float* v_cache;
    Linear q, k, v, o, gate, up, down;
};

// A quantized token embedding whose rows the step dequantizes itself (type_idx -1: none, the
// caller passes the embedded tokens).
struct Embedding {
    int type_idx = -1;
    const uint8_t* w = nullptr;
    int64_t rows = 0;
};

struct Plan {
    int64_t D, H, Hkv, d, I, block_size;
    float eps, scale;
    const float* final_norm;
    Embedding embedding;
    std::vector<Layer> layers;
    // Scratch, reused across steps (one step at a time runs, under the pool mutex).
    std::vector<float> xn, q, k, v, attn, gate, up, delta;
    QuantizedActs acts[2];  // by activation block: 32, 256
};

constexpr const char* kCapsule = "openqwen.decode_plan";
constexpr int kLinearFields = 5, kLayerPointers = 6, kLayerFields = kLayerPointers + 7 * kLinearFields;

void rms_norm(const float* x, const float* w, float eps, int64_t n, float* out) {
    const float inv = 1.0f / std::sqrt(vec_ops().dot(x, x, n) / static_cast<float>(n) + eps);
    for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * inv);
}

// Rotate-half RoPE of `heads` vectors of size d in place; cos/sin [d] for this token.
void rope(float* x, int64_t heads, int64_t d, const float* cos, const float* sin) {
    const int64_t half = d / 2;
    for (int64_t h = 0; h < heads; ++h, x += d) {
        for (int64_t i = 0; i < half; ++i) {
            const float a = x[i], b = x[i + half];
            x[i] = a * cos[i] - b * sin[i];
            x[i + half] = b * cos[i + half] + a * sin[i + half];
        }
    }
}

// y = input @ W^T (+ bias) for each linear of a group sharing one input [T, K]: activations are
// quantized once per block size, and the group's rows run as one parallel job.
void run_linears(Plan& plan, const float* input, int T, std::initializer_list<std::pair<const Linear*, float*>> group) {
    bool quantized[2] = {false, false};
    MatmulSegment segments[3]{};
    int count = 0;
    for (const auto& [lin, y] : group) {
        const int block = kTypes[lin->type_idx].block_elems, slot = block == kQK ? 0 : 1;
        if (!quantized[slot]) plan.acts[slot].quantize(input, T, lin->K, block);
        quantized[slot] = true;
        segments[count++] = MatmulSegment{lin->type_idx, lin->w, &plan.acts[slot].act(), y, lin->N};
    }
    matmul_segments(segments, count, T);
    for (const auto& [lin, y] : group) {
        if (lin->bias == nullptr) continue;
        for (int t = 0; t < T; ++t) {
            for (int64_t n = 0; n < lin->N; ++n) y[t * lin->N + n] += lin->bias[n];
        }
    }
}

struct AttentionJob {
    Plan* plan;
    const Layer* layer;
    const int64_t* tables;  // [T, table_width]
    int64_t table_width;
    const int64_t* lens;  // [T] tokens in cache, the new one included
};

// Task (t, kv head): the group of query heads sharing that KV head attend to the sequence's
// cached tokens, reading each key and value row once.
void attend(void* ctx, int64_t begin, int64_t end) {
    const auto* job = static_cast<const AttentionJob*>(ctx);
    Plan& p = *job->plan;
    const VecOps& ops = vec_ops();
    const int64_t d = p.d, group = p.H / p.Hkv, row_stride = p.Hkv * d;
    thread_local std::vector<float> scores;
    thread_local std::vector<const float*> keys, values;
    for (int64_t task = begin; task < end; ++task) {
        const int64_t t = task / p.Hkv, kvh = task % p.Hkv, len = job->lens[t];
        const int64_t* table = job->tables + t * job->table_width;
        keys.resize(len), values.resize(len);
        for (int64_t pos = 0; pos < len; ++pos) {  // this KV head's rows, through the block table
            const int64_t row = (table[pos / p.block_size] * p.block_size + pos % p.block_size) * row_stride + kvh * d;
            keys[pos] = job->layer->k_cache + row, values[pos] = job->layer->v_cache + row;
        }
        const float* q = p.q.data() + (t * p.H + kvh * group) * d;
        float* out = p.attn.data() + (t * p.H + kvh * group) * d;
        scores.resize(static_cast<size_t>(group * len));
        ops.row_scores(q, group, keys.data(), len, d, p.scale, scores.data(), len);
        for (int64_t g = 0; g < group; ++g) {
            float* s = scores.data() + g * len;
            const float inv = 1.0f / ops.exp_shifted(s, len, *std::max_element(s, s + len));
            for (int64_t pos = 0; pos < len; ++pos) s[pos] *= inv;
        }
        std::memset(out, 0, sizeof(float) * group * d);
        ops.weighted_rows(out, group, values.data(), len, d, scores.data(), len);
    }
}

struct StepInputs {
    int T;
    const int64_t* positions;  // [T]
    const float* cos;  // [rope_rows, d], row p for position p
    const float* sin;
    const int64_t* slots;  // [T] cache slot of each new token
    const int64_t* tables;
    int64_t table_width;
    const int64_t* lens;
};

void run_layer(Plan& p, const Layer& L, float* x, const StepInputs& in) {
    const int T = in.T;
    const int64_t D = p.D, d = p.d, kv = p.Hkv * d;
    for (int t = 0; t < T; ++t) rms_norm(x + t * D, L.input_norm, p.eps, D, p.xn.data() + t * D);
    run_linears(p, p.xn.data(), T, {{&L.q, p.q.data()}, {&L.k, p.k.data()}, {&L.v, p.v.data()}});
    for (int t = 0; t < T; ++t) {
        float* q = p.q.data() + t * p.H * d;
        float* k = p.k.data() + t * kv;
        if (L.q_norm != nullptr) {
            for (int64_t h = 0; h < p.H; ++h) rms_norm(q + h * d, L.q_norm, p.eps, d, q + h * d);
            for (int64_t h = 0; h < p.Hkv; ++h) rms_norm(k + h * d, L.k_norm, p.eps, d, k + h * d);
        }
        const int64_t pos = in.positions[t];
        rope(q, p.H, d, in.cos + pos * d, in.sin + pos * d);
        rope(k, p.Hkv, d, in.cos + pos * d, in.sin + pos * d);
        if (in.slots[t] >= 0) {
            std::memcpy(L.k_cache + in.slots[t] * kv, k, sizeof(float) * kv);
            std::memcpy(L.v_cache + in.slots[t] * kv, p.v.data() + t * kv, sizeof(float) * kv);
        }
    }
    AttentionJob job{&p, &L, in.tables, in.table_width, in.lens};
    pool().parallel_for(T * p.Hkv, 1, attend, &job);
    run_linears(p, p.attn.data(), T, {{&L.o, p.delta.data()}});
    for (int64_t i = 0; i < T * D; ++i) x[i] += p.delta[i];
    for (int t = 0; t < T; ++t) rms_norm(x + t * D, L.post_attention_norm, p.eps, D, p.xn.data() + t * D);
    run_linears(p, p.xn.data(), T, {{&L.gate, p.gate.data()}, {&L.up, p.up.data()}});
    vec_ops().silu_mul(p.gate.data(), p.up.data(), T * p.I);
    run_linears(p, p.gate.data(), T, {{&L.down, p.delta.data()}});
    for (int64_t i = 0; i < T * D; ++i) x[i] += p.delta[i];
}

// Reads (type, weight, bias, N, K) and checks it against the expected shape.
bool parse_linear(const int64_t* f, int64_t N, int64_t K, const char* name, Linear& out) {
    out = Linear{type_index(static_cast<int>(f[0])), reinterpret_cast<const uint8_t*>(f[1]),
                 reinterpret_cast<const float*>(f[2]), f[3], f[4]};
    if (out.type_idx < 0 || out.N != N || out.K != K || K % kTypes[out.type_idx].block_elems != 0) {
        PyErr_Format(PyExc_ValueError, "%s: unsupported type %lld or shape [%lld, %lld] (expected [%lld, %lld])",
                     name, static_cast<long long>(f[0]), static_cast<long long>(out.N),
                     static_cast<long long>(out.K), static_cast<long long>(N), static_cast<long long>(K));
        return false;
    }
    return true;
}

void free_plan(PyObject* capsule) { delete static_cast<Plan*>(PyCapsule_GetPointer(capsule, kCapsule)); }

}  // namespace

// make_decode_plan((D, H, Hkv, d, I, block_size), eps, scale, final_norm_ptr, embedding, layers):
// embedding is None or (type, table_ptr, rows) of a quantized token embedding [rows, D], in GGUF
// blocks or Q5_0_PAIRS (dequantize_row reads either); each layer is a tuple of 41 ints: input_norm,
// post_attention_norm, q_norm (0: none), k_norm, k_cache, v_cache pointers, then (type, weight,
// bias (0: none), N, K) for q, k, v, o, gate, up, down.
PyObject* py_make_decode_plan(PyObject*, PyObject* args) {
    auto plan = std::make_unique<Plan>();
    long long dims[6], final_norm;
    double eps, scale;
    PyObject *embedding, *layers;
    if (!PyArg_ParseTuple(args, "(LLLLLL)ddLOO!", &dims[0], &dims[1], &dims[2], &dims[3], &dims[4], &dims[5], &eps,
                          &scale, &final_norm, &embedding, &PyList_Type, &layers)) {
        return nullptr;
    }
    Plan& p = *plan;
    p.D = dims[0], p.H = dims[1], p.Hkv = dims[2], p.d = dims[3], p.I = dims[4], p.block_size = dims[5];
    p.eps = static_cast<float>(eps), p.scale = static_cast<float>(scale);
    p.final_norm = reinterpret_cast<const float*>(final_norm);
    if (p.Hkv <= 0 || p.H % p.Hkv != 0 || p.d % 2 != 0 || p.block_size <= 0) {
        PyErr_SetString(PyExc_ValueError, "decode plan: inconsistent head counts, head_dim or block size");
        return nullptr;
    }
    if (embedding != Py_None) {
        long long type, table, rows;
        if (!PyArg_ParseTuple(embedding, "LLL", &type, &table, &rows)) return nullptr;
        p.embedding = Embedding{type_index(static_cast<int>(type)), reinterpret_cast<const uint8_t*>(table), rows};
        if (p.embedding.type_idx < 0 || p.D % kQK != 0) {
            PyErr_Format(PyExc_ValueError, "decode plan: unsupported embedding type %lld", type);
            return nullptr;
        }
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(layers); ++i) {
        PyObject* item = PyList_GET_ITEM(layers, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != kLayerFields) {
            PyErr_Format(PyExc_ValueError, "decode plan: layer %zd must be a tuple of %d ints", i, kLayerFields);
            return nullptr;
        }
        int64_t f[kLayerFields];
        for (int j = 0; j < kLayerFields; ++j) {
            f[j] = PyLong_AsLongLong(PyTuple_GET_ITEM(item, j));
            if (f[j] == -1 && PyErr_Occurred()) return nullptr;
        }
        Layer L{reinterpret_cast<const float*>(f[0]), reinterpret_cast<const float*>(f[1]),
                reinterpret_cast<const float*>(f[2]), reinterpret_cast<const float*>(f[3]),
                reinterpret_cast<float*>(f[4]), reinterpret_cast<float*>(f[5]), {}, {}, {}, {}, {}, {}, {}};
        const int64_t* lin = f + kLayerPointers;
        const int64_t D = p.D, qd = p.H * p.d, kvd = p.Hkv * p.d;
        if (!parse_linear(lin, qd, D, "q_proj", L.q) || !parse_linear(lin + 5, kvd, D, "k_proj", L.k) ||
            !parse_linear(lin + 10, kvd, D, "v_proj", L.v) || !parse_linear(lin + 15, D, qd, "o_proj", L.o) ||
            !parse_linear(lin + 20, p.I, D, "gate_proj", L.gate) || !parse_linear(lin + 25, p.I, D, "up_proj", L.up) ||
            !parse_linear(lin + 30, D, p.I, "down_proj", L.down)) {
            return nullptr;
        }
        p.layers.push_back(L);
    }
    PyObject* capsule = PyCapsule_New(plan.get(), kCapsule, free_plan);
    if (capsule != nullptr) plan.release();
    return capsule;
}

// decode_step(plan, ids_ptr, x_ptr, out_ptr, T, positions_ptr, rope_ptr, rope_rows, slots_ptr,
// tables_ptr, table_width, lens_ptr): x [T, D] fp32 is the residual stream; with the plan's
// embedding the step looks up the token ids [T] into it, otherwise it must hold the embedded tokens
// (ids_ptr unused). out [T, D] receives the final-normed hidden states. positions [T] int64 index
// the RoPE table [2, rope_rows, d] fp32 (cos rows, then sin rows); slots [T], tables [T, width] and
// lens [T] int64. The new keys and values are written into the cache.
PyObject* py_decode_step(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs != 12) {
        PyErr_Format(PyExc_TypeError, "decode_step() takes 12 arguments (%zd given)", nargs);
        return nullptr;
    }
    auto* plan = static_cast<Plan*>(PyCapsule_GetPointer(args[0], kCapsule));
    if (plan == nullptr) return nullptr;
    int64_t a[11];
    for (int i = 0; i < 11; ++i) {
        a[i] = PyLong_AsLongLong(args[i + 1]);
        if (a[i] == -1 && PyErr_Occurred()) return nullptr;
    }
    Plan& p = *plan;
    const auto* ids = reinterpret_cast<const int64_t*>(a[0]);
    auto* x = reinterpret_cast<float*>(a[1]);
    auto* out = reinterpret_cast<float*>(a[2]);
    const auto* rope_table = reinterpret_cast<const float*>(a[5]);
    const int64_t rope_rows = a[6];
    const StepInputs in{static_cast<int>(a[3]), reinterpret_cast<const int64_t*>(a[4]), rope_table,
                        rope_table + rope_rows * p.d, reinterpret_cast<const int64_t*>(a[7]),
                        reinterpret_cast<const int64_t*>(a[8]), a[9], reinterpret_cast<const int64_t*>(a[10])};
    if (in.T <= 0 || in.table_width <= 0) {
        PyErr_SetString(PyExc_ValueError, "decode_step: T and table_width must be positive");
        return nullptr;
    }
    for (int t = 0; t < in.T; ++t) {
        if (in.positions[t] < 0 || in.positions[t] >= rope_rows) {
            PyErr_Format(PyExc_ValueError, "decode_step: position %lld is outside the RoPE table of %lld rows",
                         static_cast<long long>(in.positions[t]), static_cast<long long>(rope_rows));
            return nullptr;
        }
        if (p.embedding.type_idx >= 0 && (ids[t] < 0 || ids[t] >= p.embedding.rows)) {
            PyErr_Format(PyExc_ValueError, "decode_step: token id %lld is outside the embedding of %lld rows",
                         static_cast<long long>(ids[t]), static_cast<long long>(p.embedding.rows));
            return nullptr;
        }
    }
    Py_BEGIN_ALLOW_THREADS;
    {
        std::lock_guard<std::mutex> lock(pool_mutex());
        const size_t T = static_cast<size_t>(in.T);
        p.xn.resize(T * p.D), p.delta.resize(T * p.D);
        p.q.resize(T * p.H * p.d), p.attn.resize(T * p.H * p.d);
        p.k.resize(T * p.Hkv * p.d), p.v.resize(T * p.Hkv * p.d);
        p.gate.resize(T * p.I), p.up.resize(T * p.I);
        if (p.embedding.type_idx >= 0) {
            const size_t row = row_bytes(p.embedding.type_idx, p.D);
            for (int t = 0; t < in.T; ++t) dequantize_row(p.embedding.type_idx, p.embedding.w + ids[t] * row, p.D, x + t * p.D);
        }
        for (const Layer& layer : p.layers) run_layer(p, layer, x, in);
        for (int t = 0; t < in.T; ++t) rms_norm(x + t * p.D, p.final_norm, p.eps, p.D, out + t * p.D);
    }
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

}  // namespace oq
