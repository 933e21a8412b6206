// Bindings of the CSR sparse x dense product.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include "bind.h"
#include "bind_util.h"
#include "cpu_features.h"
#include "spmm_csr.h"

namespace nb = nanobind;
using namespace apb::bind;

namespace {

constexpr const char *kFn = "spmm_csr";

// The CSR index type of a 1-D array, or a TypeError naming the accepted ones.
apb::CsrIndex csr_index_type(const AnyArray &a, const char *arg, bool allow_int64) {
    check_cpu(a, kFn, arg);
    const nb::dlpack::dtype dt = a.dtype();
    if (dt == nb::dtype<uint8_t>()) return apb::CsrIndex::u8;
    if (dt == nb::dtype<uint16_t>()) return apb::CsrIndex::u16;
    if (dt == nb::dtype<int32_t>()) return apb::CsrIndex::i32;
    if (allow_int64 && dt == nb::dtype<int64_t>()) return apb::CsrIndex::i64;
    throw nb::type_error((std::string(kFn) + ": " + arg + " must have dtype uint8, uint16, " +
                          (allow_int64 ? "int32 or int64" : "or int32") + ", got " +
                          dtype_name(dt))
                             .c_str());
}

apb::CsrValue csr_value_type(const AnyArray &a) {
    check_cpu(a, kFn, "values");
    const nb::dlpack::dtype dt = a.dtype();
    if (dt == nb::dtype<float>()) return apb::CsrValue::f32;
    const nb::dlpack::dtype half{static_cast<uint8_t>(nb::dlpack::dtype_code::Float), 16, 1};
    if (dt == half) return apb::CsrValue::f16;
    throw nb::type_error(
        ("spmm_csr: values must have dtype float32 or float16, got " + dtype_name(dt)).c_str());
}

void py_spmm_csr(const AnyArray &indptr, const AnyArray &indices, const AnyArray &values,
                 const AnyArray &x, nb::ndarray<> out_array) {
    const AnyArray out(out_array);
    apb::CsrMatrix a{};
    a.indptr_type = csr_index_type(indptr, "indptr", true);
    a.index_type = csr_index_type(indices, "indices", false);
    a.value_type = csr_value_type(values);
    check_layout(indptr, kFn, "indptr", 1);
    check_layout(indices, kFn, "indices", 1);
    check_layout(values, kFn, "values", 1);
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
    if (indices.shape(0) != values.shape(0)) {
        throw std::invalid_argument("spmm_csr: indices and values must have the same length, "
                                    "got " + std::to_string(indices.shape(0)) + " and " +
                                    std::to_string(values.shape(0)));
    }
    if (static_cast<int64_t>(x.shape(1)) != N) {
        throw std::invalid_argument("spmm_csr: x has shape " + shape_string(x) +
                                    " but out has shape " + shape_string(out) +
                                    "; x must be [K, N] with out's N columns");
    }
    a.indptr = indptr.data();
    a.indices = indices.data();
    a.values = values.data();
    a.rows = M;
    a.nnz = static_cast<int64_t>(indices.shape(0));
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
