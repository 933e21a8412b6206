// Max pooling of NCHW float32 maps for inference (kernel, stride, padding; no dilation,
// no ceil mode), exactly torch's max_pool2d values: padding never wins (it counts as
// -inf) and a NaN in a window makes that output NaN.
#pragma once

#include <cstdint>

namespace apb {

struct MaxPool2dGeometry {
    int64_t planes;  // batch * channels
    int64_t height, width;
    int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
    int64_t out_h, out_w;
};

// out[p, oy, ox] = max over the window's in-image taps of x[p, iy, ix]. The geometry must
// be valid (max_pool2d_out_size's sizes; padding at most half the kernel, so every window
// holds at least one pixel); the binding checks it.
void max_pool2d(const float *x, const MaxPool2dGeometry &g, float *out);

// Output size along one axis: (size + 2*pad - kernel) / stride + 1 (floor), or -1 when
// the padded input is smaller than the kernel.
int64_t max_pool2d_out_size(int64_t size, int64_t kernel, int64_t stride, int64_t pad);

}  // namespace apb
