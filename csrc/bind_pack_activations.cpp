// Bindings of the fused quantize + bit-pack kernels for layer inputs (Linear rows and
// convolution im2col).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <string>

#include "bind.h"
#include "bind_util.h"
#include "cpu_features.h"
#include "pack_activations.h"

namespace nb = nanobind;
using namespace apb::bind;

namespace {

using Packed = nb::ndarray<nb::numpy, uint64_t>;

apb::ColumnOrder column_order(const std::string &name, const char *fn) {
    if (name == "chw") return apb::ColumnOrder::chw;
    if (name == "hwc") return apb::ColumnOrder::hwc;
    throw std::invalid_argument(std::string(fn) + ": column_order must be 'chw' or 'hwc', got '" +
                                name + "'");
}

Packed im2col_run(const AnyArray &x, const apb::Conv2dGeometry &g,
                  const apb::ActivationQuantizer &q, apb::ColumnOrder order,
                  bool squeeze_plane) {
    const size_t planes = static_cast<size_t>(q.planes);
    const size_t n = static_cast<size_t>(g.positions());
    const size_t w = static_cast<size_t>(g.words());
    Packed out =
        squeeze_plane ? new_array<uint64_t>({n, w}) : new_array<uint64_t>({planes, n, w});
    const float *src = static_cast<const float *>(x.data());
    uint64_t *dst = out.data();
    apb::active_isa();  // surface a bad APB_ISA before letting go of the GIL
    {
        nb::gil_scoped_release release;
        apb::im2col_pack(src, g, q, order, dst);
    }
    return out;
}

Packed py_im2col_pack_signs(const AnyArray &x, int64_t kernel_h, int64_t kernel_w,
                            int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                            int64_t dilation_h, int64_t dilation_w,
                            const std::string &order) {
    constexpr const char *fn = "im2col_pack_signs";
    const apb::Conv2dGeometry g = conv2d_geometry_of(x, fn, kernel_h, kernel_w, stride_h,
                                                     stride_w, pad_h, pad_w, dilation_h,
                                                     dilation_w);
    return im2col_run(x, g, apb::sign_quantizer(), column_order(order, fn), true);
}

Packed py_im2col_pack_codes(const AnyArray &x, double scale, int64_t bits, int64_t kernel_h,
                            int64_t kernel_w, int64_t stride_h, int64_t stride_w,
                            int64_t pad_h, int64_t pad_w, int64_t dilation_h,
                            int64_t dilation_w, const std::string &order) {
    constexpr const char *fn = "im2col_pack_codes";
    const apb::Conv2dGeometry g = conv2d_geometry_of(x, fn, kernel_h, kernel_w, stride_h,
                                                     stride_w, pad_h, pad_w, dilation_h,
                                                     dilation_w);
    return im2col_run(x, g, apb::code_quantizer(scale, bits), column_order(order, fn), false);
}

Packed py_quantize_pack_codes(const AnyArray &x, double scale, int64_t bits) {
    check_matrix<float>(x, "quantize_pack_codes", "x", "float32");
    const apb::ActivationQuantizer q = apb::code_quantizer(scale, bits);
    const int64_t N = static_cast<int64_t>(x.shape(0));
    const int64_t K = static_cast<int64_t>(x.shape(1));
    const size_t words = static_cast<size_t>((K + 63) / 64);
    Packed out = new_array<uint64_t>(
        {static_cast<size_t>(q.planes), static_cast<size_t>(N), words});
    const float *src = static_cast<const float *>(x.data());
    uint64_t *dst = out.data();
    apb::active_isa();  // surface a bad APB_ISA before letting go of the GIL
    {
        nb::gil_scoped_release release;
        apb::quantize_pack(src, N, K, q, dst);
    }
    return out;
}

}  // namespace

void apb::bind::bind_pack_activations(nb::module_ &m) {
    m.def("im2col_pack_signs", &py_im2col_pack_signs, nb::arg("x"), nb::arg("kernel_h"),
          nb::arg("kernel_w"), nb::arg("stride_h"), nb::arg("stride_w"), nb::arg("pad_h"),
          nb::arg("pad_w"), nb::arg("dilation_h"), nb::arg("dilation_w"),
          nb::arg("column_order") = "chw",
          "Unfold float32 [B, C, H, W] (C-contiguous) as Conv2d does and pack the signs: "
          "uint64 [B*OH*OW, ceil(C*kh*kw/64)], bit = x < 0, zero padding gives bit 0. "
          "Columns (c, dy, dx) for column_order 'chw', (dy, dx, c) for 'hwc'.");
    m.def("im2col_pack_codes", &py_im2col_pack_codes, nb::arg("x"), nb::arg("scale"),
          nb::arg("bits"), nb::arg("kernel_h"), nb::arg("kernel_w"), nb::arg("stride_h"),
          nb::arg("stride_w"), nb::arg("pad_h"), nb::arg("pad_w"), nb::arg("dilation_h"),
          nb::arg("dilation_w"), nb::arg("column_order") = "chw",
          "Unfold float32 [B, C, H, W] as Conv2d does, quantize to codes "
          "round(min(max(x, 0), s) / s * (2^bits - 1)) and pack bit-planes: uint64 "
          "[bits, B*OH*OW, ceil(C*kh*kw/64)]; zero padding gives code 0. Columns "
          "(c, dy, dx) for column_order 'chw', (dy, dx, c) for 'hwc'.");
    m.def("quantize_pack_codes", &py_quantize_pack_codes, nb::arg("x"), nb::arg("scale"),
          nb::arg("bits"),
          "Quantize float32 [N, K] to codes round(min(max(x, 0), s) / s * (2^bits - 1)) "
          "and pack bit-planes: uint64 [bits, N, ceil(K/64)].");
}
