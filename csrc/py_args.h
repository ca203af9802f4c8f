// Argument checks shared by the Python entry points (quant_module.cpp, proxy_head.cpp).
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstdint>

#include "quant_common.h"

namespace oq {

// Reads `expected` integer arguments into out; false with a Python error set otherwise.
inline bool parse_int64s(PyObject* const* args, Py_ssize_t nargs, Py_ssize_t expected, int64_t* out,
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
inline int check_type(int64_t type, int64_t K) {
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

}  // namespace oq
