// Bindings of the inference max pooling.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cmath>
#include <string>

#include "bind.h"
#include "bind_util.h"
#include "max_pool2d.h"

namespace nb = nanobind;
using namespace apb::bind;

namespace {

constexpr const char *kFn = "max_pool2d";

int64_t out_size(int64_t size, int64_t kernel, int64_t stride, int64_t pad, const char *axis) {
    if (kernel < 1 || stride < 1 || pad < 0) {
        throw std::invalid_argument(std::string(kFn) + ": kernel and stride must be >= 1 and "
                                    "padding >= 0 (" + axis + ": kernel " +
                                    std::to_string(kernel) + ", stride " +
                                    std::to_string(stride) + ", padding " +
                                    std::to_string(pad) + ")");
    }
    if (2 * pad > kernel) {
        throw std::invalid_argument(std::string(kFn) + ": padding must be at most half the "
                                    "kernel (" + axis + ": kernel " + std::to_string(kernel) +
                                    ", padding " + std::to_string(pad) + ")");
    }
    const int64_t n = apb::max_pool2d_out_size(size, kernel, stride, pad);
    if (n < 1) {
        throw std::invalid_argument(std::string(kFn) + ": the input's " + axis + " (" +
                                    std::to_string(size) + ", padded by " + std::to_string(pad) +
                                    " on each side) is smaller than the kernel (" +
                                    std::to_string(kernel) + ")");
    }
    return n;
}

// Both layouts: x float32 4-d C-contiguous, NCHW or (channels_last) NHWC; out float32
// [B, C, OH, OW] C-contiguous.
nb::ndarray<nb::numpy, float> pool(const AnyArray &x, bool channels_last, int64_t kernel_h,
                                   int64_t kernel_w, int64_t stride_h, int64_t stride_w,
                                   int64_t pad_h, int64_t pad_w, double lower, double upper) {
    check_array<float>(x, channels_last ? "max_pool2d_channels_last" : kFn, "x", "float32", 4);
    const auto B = static_cast<int64_t>(x.shape(0));
    const auto C = static_cast<int64_t>(x.shape(channels_last ? 3 : 1));
    const auto H = static_cast<int64_t>(x.shape(channels_last ? 1 : 2));
    const auto W = static_cast<int64_t>(x.shape(channels_last ? 2 : 3));
    const apb::MaxPool2dGeometry g{B * C, H, W, kernel_h, kernel_w, stride_h, stride_w, pad_h,
                                   pad_w, out_size(H, kernel_h, stride_h, pad_h, "height"),
                                   out_size(W, kernel_w, stride_w, pad_w, "width")};
    auto out = new_array<float>({static_cast<size_t>(B), static_cast<size_t>(C),
                                 static_cast<size_t>(g.out_h), static_cast<size_t>(g.out_w)});
    const float *src = static_cast<const float *>(x.data());
    float *dst = out.data();
    if (g.planes > 0) {
        const auto lo = static_cast<float>(lower), hi = static_cast<float>(upper);
        // The channels-last kernel dispatches on the ISA: a bad APB_ISA is reported before
        // the GIL is let go.
        run_without_gil([&] {
            if (channels_last) {
                apb::max_pool2d_channels_last(src, g, C, dst, lo, hi);
            } else {
                apb::max_pool2d(src, g, dst, lo, hi);
            }
        });
    }
    return out;
}

nb::ndarray<nb::numpy, float> py_max_pool2d(const AnyArray &x, int64_t kernel_h,
                                            int64_t kernel_w, int64_t stride_h,
                                            int64_t stride_w, int64_t pad_h, int64_t pad_w,
                                            double lower, double upper) {
    return pool(x, false, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, lower, upper);
}

// The same over x float32 [B, H, W, C] C-contiguous (a channels-last tensor's storage,
// tensor.permute(0, 2, 3, 1)), out still [B, C, OH, OW].
nb::ndarray<nb::numpy, float> py_max_pool2d_channels_last(const AnyArray &x, int64_t kernel_h,
                                                          int64_t kernel_w, int64_t stride_h,
                                                          int64_t stride_w, int64_t pad_h,
                                                          int64_t pad_w, double lower,
                                                          double upper) {
    return pool(x, true, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, lower, upper);
}

}  // namespace

void apb::bind::bind_max_pool2d(nb::module_ &m) {
    m.def("max_pool2d", &py_max_pool2d, nb::arg("x"), nb::arg("kernel_h"), nb::arg("kernel_w"),
          nb::arg("stride_h"), nb::arg("stride_w"), nb::arg("pad_h"), nb::arg("pad_w"),
          nb::arg("lower") = -INFINITY, nb::arg("upper") = INFINITY,
          "float32 [B, C, OH, OW]: the maximum of each kernel window of x, float32 "
          "[B, C, H, W] C-contiguous; padding never wins (-inf) and NaN propagates, as in "
          "torch.nn.functional.max_pool2d (floor mode, no dilation). Padding at most half "
          "the kernel. Then min(max(., lower), upper) in float32, NaN kept.");
    m.def("max_pool2d_channels_last", &py_max_pool2d_channels_last, nb::arg("x"),
          nb::arg("kernel_h"), nb::arg("kernel_w"), nb::arg("stride_h"), nb::arg("stride_w"),
          nb::arg("pad_h"), nb::arg("pad_w"), nb::arg("lower") = -INFINITY,
          nb::arg("upper") = INFINITY,
          "max_pool2d of a channels-last map: x float32 [B, H, W, C] C-contiguous (the "
          "storage of a channels-last [B, C, H, W] tensor), out float32 [B, C, OH, OW] "
          "C-contiguous, the same values as max_pool2d.");
}
