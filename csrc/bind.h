// One registration function per kernel family; bindings.cpp calls each of them.
#pragma once

#include <nanobind/nanobind.h>

namespace apb::bind {

void bind_pack_signs(nanobind::module_ &m);
void bind_roofline(nanobind::module_ &m);
void bind_bgemm(nanobind::module_ &m);
void bind_bgemm_1xf(nanobind::module_ &m);
void bind_linear_1xf(nanobind::module_ &m);
void bind_spmm_csr(nanobind::module_ &m);
void bind_pack_activations(nanobind::module_ &m);
void bind_sparse_conv2d(nanobind::module_ &m);
void bind_xor_gate(nanobind::module_ &m);
void bind_max_pool2d(nanobind::module_ &m);
void bind_dense(nanobind::module_ &m);

}  // namespace apb::bind
