// Max pooling of NCHW float32 maps for inference (kernel, stride, padding; no dilation,
// no ceil mode), exactly torch's max_pool2d values: padding never wins (it counts as
// -inf) and a NaN in a window makes that output NaN.
#pragma once

#include <cstdint>
#include <limits>

namespace apb {

struct MaxPool2dGeometry {
    int64_t planes;  // batch * channels
    int64_t height, width;
    int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
    int64_t out_h, out_w;
};

// out[p, oy, ox] = max over the window's in-image taps of x[p, iy, ix], then
// min(max(., lower), upper) (a ReLU or Hardtanh after the pool, or before it: both are
// non-decreasing, so they commute with the maximum; NaN kept). The geometry must be valid
// (max_pool2d_out_size's sizes; padding at most half the kernel, so every window holds at
// least one pixel); the binding checks it.
void max_pool2d(const float *x, const MaxPool2dGeometry &g, float *out,
                float lower = -std::numeric_limits<float>::infinity(),
                float upper = std::numeric_limits<float>::infinity());

// The same over a channels-last map, written NCHW: x holds [B, H, W, C] (the storage of a
// channels-last [B, C, H, W] tensor, such as an ImageNet stem's output), out is
// [B, C, OH, OW] C-contiguous, g.planes = B * C. The pooling and the change of layout in
// one pass: torch's channels-last pool followed by .contiguous() took 313 + 133 us on
// ResNet-18's 64 x 112 x 112 stem output at batch 1.
void max_pool2d_channels_last(const float *x, const MaxPool2dGeometry &g, int64_t channels,
                              float *out,
                              float lower = -std::numeric_limits<float>::infinity(),
                              float upper = std::numeric_limits<float>::infinity());

// Per ISA: output row oy of one image, image [H, W, C] -> out [C, OH, OW] (that image's),
// through `row`, OW * C floats of scratch, bounded to [lower, upper] (max_pool2d_cl.h).
struct PoolBounds {
    float lower, upper;
};
void max_pool2d_cl_row_scalar(const float *image, const MaxPool2dGeometry &g, int64_t channels,
                              int64_t oy, PoolBounds bounds, float *row, float *out);
void max_pool2d_cl_row_avx2(const float *image, const MaxPool2dGeometry &g, int64_t channels,
                            int64_t oy, PoolBounds bounds, float *row, float *out);
void max_pool2d_cl_row_avx512(const float *image, const MaxPool2dGeometry &g, int64_t channels,
                              int64_t oy, PoolBounds bounds, float *row, float *out);

namespace max_pool_detail {

// max(a, b) that returns NaN if either is NaN (torch's rule), for a not yet NaN-checked:
// b where b > a or b is NaN, else a. Written as two selects, which compile to a max and a
// masked blend in scalar code; one condition with || compiled to branches, which on
// random maps mispredicted about every other tap (a 64 x 112 x 112 map with 3 x 3
// windows: 2.2 ms, then 0.52).
inline float nan_max_scalar(float a, float b) {
    const float larger = b > a ? b : a;
    return b != b ? b : larger;
}

// min(max(y, lower), upper), NaN kept (it fails both comparisons).
inline float bound(float y, float lower, float upper) {
    y = lower > y ? lower : y;
    return upper < y ? upper : y;
}

}  // namespace max_pool_detail

// Output size along one axis: (size + 2*pad - kernel) / stride + 1 (floor), or -1 when
// the padded input is smaller than the kernel.
int64_t max_pool2d_out_size(int64_t size, int64_t kernel, int64_t stride, int64_t pad);

}  // namespace apb
