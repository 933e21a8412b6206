// Bindings of the float32 layers of a packed model (dense.h): the stem convolution and
// the small-batch linear layer, each with the bounds of the activation after it.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>

#include <cmath>
#include <limits>
#include <optional>
#include <string>

#include "bind.h"
#include "bind_util.h"
#include "dense.h"

namespace nb = nanobind;
using namespace apb::bind;

namespace {

using OptionalArray = std::optional<AnyArray>;

const float *bias_of(const OptionalArray &bias, const char *fn, int64_t features) {
    if (!bias) return nullptr;
    check_array<float>(*bias, fn, "bias", "float32", 1);
    if (static_cast<int64_t>(bias->shape(0)) != features) {
        throw std::invalid_argument(std::string(fn) + ": bias has shape " +
                                    shape_string(*bias) + ", expected (" +
                                    std::to_string(features) + ",), one per output");
    }
    return static_cast<const float *>(bias->data());
}

int64_t dim(const AnyArray &a, size_t i) { return static_cast<int64_t>(a.shape(i)); }

nb::ndarray<nb::numpy, float> py_dense_conv2d(const AnyArray &x, const AnyArray &weight,
                                              const OptionalArray &bias, int64_t pad_h,
                                              int64_t pad_w, double lower, double upper) {
    constexpr const char *fn = "dense_conv2d";
    check_array<float>(x, fn, "x", "float32", 4);
    check_array<float>(weight, fn, "weight", "float32", 4);
    check_bounds(lower, upper, fn);
    apb::DenseConv2dGeometry g{dim(x, 0), dim(x, 1), dim(x, 2), dim(x, 3), dim(weight, 0),
                               dim(weight, 2), dim(weight, 3), pad_h, pad_w, 0, 0};
    if (dim(weight, 1) != g.in_channels) {
        throw std::invalid_argument(std::string(fn) + ": weight " + shape_string(weight) +
                                    " takes " + std::to_string(dim(weight, 1)) +
                                    " input channels, x " + shape_string(x) + " has " +
                                    std::to_string(g.in_channels));
    }
    if (pad_h < 0 || pad_w < 0 || g.kernel_h < 1 || g.kernel_w < 1 || g.out_channels < 1) {
        throw std::invalid_argument(std::string(fn) + ": need padding >= 0 and a non-empty "
                                    "weight, got padding (" + std::to_string(pad_h) + ", " +
                                    std::to_string(pad_w) + ") and weight " +
                                    shape_string(weight));
    }
    g.out_h = g.height + 2 * pad_h - g.kernel_h + 1;
    g.out_w = g.width + 2 * pad_w - g.kernel_w + 1;
    if (g.out_h < 1 || g.out_w < 1) {
        throw std::invalid_argument(std::string(fn) + ": x " + shape_string(x) + ", padded by (" +
                                    std::to_string(pad_h) + ", " + std::to_string(pad_w) +
                                    "), is smaller than the kernel " + shape_string(weight));
    }
    const float *b = bias_of(bias, fn, g.out_channels);
    auto out = new_array<float>({static_cast<size_t>(g.batch), static_cast<size_t>(g.out_channels),
                                 static_cast<size_t>(g.out_h), static_cast<size_t>(g.out_w)});
    const float *xs = static_cast<const float *>(x.data());
    const float *ws = static_cast<const float *>(weight.data());
    float *o = out.data();
    if (g.batch > 0 && g.in_channels > 0) {
        nb::gil_scoped_release release;
        apb::dense_conv2d(xs, g, ws, b, static_cast<float>(lower), static_cast<float>(upper), o);
    } else if (g.batch > 0) {  // no input channels: the bias alone, bounded
        const int64_t plane = g.out_h * g.out_w;
        for (int64_t i = 0; i < g.batch * g.out_channels * plane; ++i) {
            const float y = b ? b[(i / plane) % g.out_channels] : 0.0f;
            o[i] = std::fmin(std::fmax(y, static_cast<float>(lower)), static_cast<float>(upper));
        }
    }
    return out;
}

nb::ndarray<nb::numpy, float> py_dense_linear_pack(const AnyArray &weight) {
    constexpr const char *fn = "dense_linear_pack";
    check_matrix<float>(weight, fn, "weight", "float32");
    const int64_t n = dim(weight, 0), k = dim(weight, 1);
    auto out = new_array<float>({static_cast<size_t>(apb::dense_linear_packed_size(n, k))});
    apb::dense_linear_pack(static_cast<const float *>(weight.data()), n, k, out.data());
    return out;
}

nb::ndarray<nb::numpy, float> py_dense_linear(const AnyArray &x, const AnyArray &packed,
                                              int64_t out_features, const OptionalArray &bias,
                                              double lower, double upper) {
    constexpr const char *fn = "dense_linear";
    check_matrix<float>(x, fn, "x", "float32");
    check_array<float>(packed, fn, "packed", "float32", 1);
    check_bounds(lower, upper, fn);
    const int64_t rows = dim(x, 0), k = dim(x, 1);
    if (out_features < 1) {
        throw std::invalid_argument(std::string(fn) + ": out_features must be >= 1, got " +
                                    std::to_string(out_features));
    }
    if (dim(packed, 0) != apb::dense_linear_packed_size(out_features, k)) {
        throw std::invalid_argument(
            std::string(fn) + ": packed has " + std::to_string(dim(packed, 0)) +
            " floats; a weight of " + std::to_string(out_features) + " x " + std::to_string(k) +
            " (x's features) packs into " +
            std::to_string(apb::dense_linear_packed_size(out_features, k)) +
            " (dense_linear_pack)");
    }
    const float *b = bias_of(bias, fn, out_features);
    auto out = new_array<float>({static_cast<size_t>(rows), static_cast<size_t>(out_features)});
    if (rows > 0) {
        const float *xs = static_cast<const float *>(x.data());
        const float *ps = static_cast<const float *>(packed.data());
        float *o = out.data();
        nb::gil_scoped_release release;
        apb::dense_linear(xs, rows, k, ps, out_features, b, static_cast<float>(lower),
                          static_cast<float>(upper), o);
    }
    return out;
}

}  // namespace

void apb::bind::bind_dense(nb::module_ &m) {
    constexpr double inf = std::numeric_limits<double>::infinity();
    m.def("dense_conv2d", &py_dense_conv2d, nb::arg("x"), nb::arg("weight"),
          nb::arg("bias").none(), nb::arg("pad_h"), nb::arg("pad_w"), nb::arg("lower") = -inf,
          nb::arg("upper") = inf,
          "float32 [B, Cout, OH, OW]: the stride-1 convolution of x, float32 [B, Cin, H, W], "
          "with weight [Cout, Cin, KH, KW] (zero padding, no dilation or groups) plus bias "
          "[Cout] or None, then min(max(out, lower), upper) (NaN kept). All C-contiguous.");
    m.def("dense_linear_pack", &py_dense_linear_pack, nb::arg("weight"),
          "float32 1-D: weight [N, K] in the panel layout dense_linear reads.");
    m.def("dense_linear", &py_dense_linear, nb::arg("x"), nb::arg("packed"),
          nb::arg("out_features"), nb::arg("bias").none(), nb::arg("lower") = -inf,
          nb::arg("upper") = inf,
          "float32 [M, N]: x [M, K] @ weight.T + bias (None: no bias), weight packed by "
          "dense_linear_pack, then min(max(out, lower), upper) (NaN kept).");
}
