// Bindings of the sign bit-packing kernels.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include "bind.h"
#include "bind_util.h"
#include "cpu_features.h"
#include "pack_signs.h"

namespace nb = nanobind;
using namespace apb::bind;

namespace {

NumpyMatrix<uint64_t> py_pack_signs(const AnyArray &x) {
    check_matrix<float>(x, "pack_signs", "x", "float32");
    const int64_t M = static_cast<int64_t>(x.shape(0));
    const int64_t K = static_cast<int64_t>(x.shape(1));
    const int64_t W = (K + 63) / 64;
    auto out = new_matrix<uint64_t>(M, W);
    const float *src = static_cast<const float *>(x.data());
    uint64_t *dst = out.data();
    apb::active_isa();  // surface a bad APB_ISA before letting go of the GIL
    {
        nb::gil_scoped_release release;
        apb::pack_signs(src, M, K, dst);
    }
    return out;
}

NumpyMatrix<float> py_unpack_signs(const AnyArray &bits, int64_t k) {
    check_matrix<uint64_t>(bits, "unpack_signs", "bits", "uint64");
    if (k < 0) {
        throw std::invalid_argument("unpack_signs: k must be >= 0, got " + std::to_string(k));
    }
    const int64_t M = static_cast<int64_t>(bits.shape(0));
    const int64_t W = static_cast<int64_t>(bits.shape(1));
    if (W != (k + 63) / 64) {
        throw std::invalid_argument("unpack_signs: bits has " + std::to_string(W) +
                                    " words per row, but k=" + std::to_string(k) +
                                    " needs ceil(k/64)=" + std::to_string((k + 63) / 64));
    }
    auto out = new_matrix<float>(M, k);
    const uint64_t *src = static_cast<const uint64_t *>(bits.data());
    float *dst = out.data();
    {
        nb::gil_scoped_release release;
        apb::unpack_signs(src, M, W, k, dst);
    }
    return out;
}

}  // namespace

void apb::bind::bind_pack_signs(nb::module_ &m) {
    m.def("pack_signs", &py_pack_signs, nb::arg("x"),
          "Pack the signs of a float32 [M, K] C-contiguous matrix into uint64 "
          "[M, ceil(K/64)]: bit j of word w of row m is 1 iff x[m, 64*w + j] < 0 "
          "(so +0, -0 and NaN give 0); padding bits past K are 0.");
    m.def("unpack_signs", &py_unpack_signs, nb::arg("bits"), nb::arg("k"),
          "Inverse of pack_signs: uint64 [M, ceil(k/64)] to float32 [M, k] of +1 "
          "(bit 0) and -1 (bit 1).");
}
