// The float32 layers (dense.h) in portable C++: the kernels of CPUs without AVX2, one
// chain of FMAs per output from the bias (the vector kernels' order, but for a lone row of
// a linear layer, which they split into interleaved chains).
#include <algorithm>
#include <cmath>

#include "dense.h"

namespace apb {

namespace {

constexpr int64_t kCoBlock = 4;

// min(max(y, lower), upper), NaN kept (as the vector kernels' max/min operand order).
inline float bound(float y, float lower, float upper) {
    if (std::isnan(y)) return y;
    return std::min(std::max(y, lower), upper);
}

void conv_row(const DenseConvRow &r) {
    for (int64_t c = 0; c < r.channels; ++c) {
        for (int64_t ox = 0; ox < r.out_w; ++ox) {
            float acc = r.bias[c];
            const float *w = r.weights + c;
            for (int64_t ci = 0; ci < r.in_channels; ++ci) {
                for (int64_t dy = 0; dy < r.kernel_h; ++dy) {
                    const float *row = r.in + ci * r.plane_stride + (r.oy + dy) * r.row_stride + ox;
                    for (int64_t dx = 0; dx < r.kernel_w; ++dx, w += kCoBlock) {
                        acc = std::fma(row[dx], *w, acc);
                    }
                }
            }
            r.out[c * r.channel_stride + ox] = bound(acc, r.lower, r.upper);
        }
    }
}

void linear_panel(const float *x, int64_t rows, int64_t in_features, const float *panel,
                  const float *bias, int64_t cols, float lower, float upper, float *out,
                  int64_t out_stride) {
    for (int64_t m = 0; m < rows; ++m) {
        const float *xm = x + m * in_features;
        for (int64_t j = 0; j < cols; ++j) {
            float acc = bias ? bias[j] : 0.0f;
            for (int64_t k = 0; k < in_features; ++k) {
                acc = std::fma(xm[k], panel[k * kDensePanel + j], acc);
            }
            out[m * out_stride + j] = bound(acc, lower, upper);
        }
    }
}

}  // namespace

DenseKernels dense_kernels_scalar() { return {kCoBlock, conv_row, linear_panel}; }

}  // namespace apb
