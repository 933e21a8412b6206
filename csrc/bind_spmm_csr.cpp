// Bindings of the CSR sparse x dense product.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include "bind.h"
#include "bind_util.h"
#include "cpu_features.h"

namespace nb = nanobind;
using namespace apb::bind;

namespace {

constexpr const char *kFn = "spmm_csr";

void py_spmm_csr(const AnyArray &indptr, const AnyArray &indices, const AnyArray &values,
                 const AnyArray &x, nb::ndarray<> out_array) {
    const AnyArray out(out_array);
    apb::CsrMatrix a = csr_matrix(indptr, indices, values, kFn);
    check_matrix<float>(x, kFn, "x", "float32");
    check_matrix<float>(out, kFn, "out", "float32");
    const int64_t M = static_cast<int64_t>(out.shape(0));
    const int64_t N = static_cast<int64_t>(out.shape(1));
    const int64_t K = static_cast<int64_t>(x.shape(0));
    if (static_cast<int64_t>(indptr.shape(0)) != M + 1) {
        throw std::invalid_argument("spmm_csr: indptr has " + std::to_string(indptr.shape(0)) +
                                    " entries, but out has M=" + std::to_string(M) +
                                    " rows, which need M+1=" + std::to_string(M + 1));
    }
    if (static_cast<int64_t>(x.shape(1)) != N) {
        throw std::invalid_argument("spmm_csr: x has shape " + shape_string(x) +
                                    " but out has shape " + shape_string(out) +
                                    "; x must be [K, N] with out's N columns");
    }
    const float *xp = static_cast<const float *>(x.data());
    float *dst = static_cast<float *>(out_array.data());
    apb::active_isa();  // surface a bad APB_ISA before letting go of the GIL
    {
        nb::gil_scoped_release release;
        apb::spmm_csr(a, xp, K, N, dst);
    }
}

}  // namespace

void apb::bind::bind_spmm_csr(nb::module_ &m) {
    m.def("spmm_csr", &py_spmm_csr, nb::arg("indptr"), nb::arg("indices"), nb::arg("values"),
          nb::arg("x"), nb::arg("out"),
          "In place: out[m, :] += sum over e in indptr[m]..indptr[m+1] of values[e] * "
          "x[indices[e], :]. indptr uint8/uint16/int32/int64 [M+1], indices "
          "uint8/uint16/int32 [nnz], values float32/float16 [nnz], x float32 [K, N], out "
          "float32 [M, N] (writable); all C-contiguous. The CSR structure is validated "
          "before any memory is touched.");
}
