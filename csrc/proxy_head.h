// Python entry points of the proxy output head (proxy_head.cpp), registered by quant_module.cpp.
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>

namespace oq {

// proxy_stats(exact_type, exact_ptr, coarse_type, coarse_ptr, out_ptr, N, K)
PyObject* py_proxy_stats(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
// proxy_logits(coarse_type, coarse_ptr, exact_type, exact_ptr, stats_ptr, x_ptr, y_ptr, T, V, K, k,
//              exempt_ptr, n_exempt, max_candidates) -> candidates or -1
PyObject* py_proxy_logits(PyObject* self, PyObject* const* args, Py_ssize_t nargs);

}  // namespace oq
