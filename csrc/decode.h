// Python entry points of the native decode step (decode.cpp), registered by quant_module.cpp.
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>

namespace oq {

// make_decode_plan(dims, eps, scale, final_norm_ptr, embedding, layers) -> capsule; see decode.cpp.
PyObject* py_make_decode_plan(PyObject* self, PyObject* args);
// decode_step(plan, ids_ptr, x_ptr, out_ptr, T, positions_ptr, rope_ptr, rope_rows, slots_ptr,
//             tables_ptr, table_width, lens_ptr)
PyObject* py_decode_step(PyObject* self, PyObject* const* args, Py_ssize_t nargs);

}  // namespace oq
