// Bindings of the binary-weight x float-activation GEMM.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include "bgemm_1xf.h"
#include "bind.h"
#include "bind_util.h"
#include "cpu_features.h"

namespace nb = nanobind;
using namespace apb::bind;

namespace {

NumpyMatrix<float> py_bgemm_1xf(const AnyArray &w, const AnyArray &x) {
    check_matrix<uint64_t>(w, "bgemm_1xf", "w", "uint64");
    check_matrix<float>(x, "bgemm_1xf", "x", "float32");
    const int64_t M = static_cast<int64_t>(w.shape(0));
    const int64_t words = static_cast<int64_t>(w.shape(1));
    const int64_t N = static_cast<int64_t>(x.shape(0));
    const int64_t K = static_cast<int64_t>(x.shape(1));
    if (words != (K + 63) / 64) {
        throw std::invalid_argument("bgemm_1xf: w has " + std::to_string(words) +
                                    " words per row, but x has K=" + std::to_string(K) +
                                    " columns, which need ceil(K/64)=" +
                                    std::to_string((K + 63) / 64));
    }
    auto out = new_matrix<float>(M, N);
    const uint64_t *wp = static_cast<const uint64_t *>(w.data());
    const float *xp = static_cast<const float *>(x.data());
    float *dst = out.data();
    apb::active_isa();  // surface a bad APB_ISA before letting go of the GIL
    {
        nb::gil_scoped_release release;
        apb::bgemm_1xf(wp, M, xp, N, K, dst);
    }
    return out;
}

}  // namespace

void apb::bind::bind_bgemm_1xf(nb::module_ &m) {
    m.def("bgemm_1xf", &py_bgemm_1xf, nb::arg("w"), nb::arg("x"),
          "Binary weights x float activations: w uint64 [M, ceil(K/64)] (pack_signs "
          "layout, bit 1 = -1), x float32 [N, K], both C-contiguous; returns float32 "
          "[M, N] with out[m, n] = sum_j s_w(m, j) * x[n, j].");
}
