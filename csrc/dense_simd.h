// The vector kernels of the float32 layers (dense.h), written once over a vector type:
// dense_avx2.cpp instantiates them with 8-float ymm vectors, dense_avx512.cpp with
// 16-float zmm vectors and twice the channels per block (32 registers). Include it from
// those files only, after defining the vector struct; everything is `static`.
//
// A vector struct V provides: reg, kLanes, kCoBlock (output channels per conv block),
// kLinearRows (rows sharing a weight load), kSingleRowSums (independent sums of a
// single-row product), load, broadcast, fma (a * b + c), bound (min(max(y, lower),
// upper) with NaN kept), store and store_first (the first n < kLanes lanes).
#pragma once

#include <algorithm>
#include <cstdint>

#include "dense.h"

namespace apb::dense_simd {

// kVectors vectors of columns [ox0, ox0 + kVectors * kLanes) of every channel of the
// block; columns at or past out_w are computed from the row's slack and not stored.
template <class V, int kVectors>
static inline void conv_tile(const DenseConvRow &r, int64_t ox0) {
    using reg = typename V::reg;
    constexpr int kCo = V::kCoBlock;
    reg acc[kCo][kVectors];
    for (int c = 0; c < kCo; ++c) {
        const reg b = V::broadcast(r.bias[c]);
        for (int v = 0; v < kVectors; ++v) acc[c][v] = b;
    }
    const float *w = r.weights;
    for (int64_t ci = 0; ci < r.in_channels; ++ci) {
        for (int64_t dy = 0; dy < r.kernel_h; ++dy) {
            const float *row = r.in + ci * r.plane_stride + (r.oy + dy) * r.row_stride + ox0;
            for (int64_t dx = 0; dx < r.kernel_w; ++dx, w += kCo) {
                reg in[kVectors];
                for (int v = 0; v < kVectors; ++v) in[v] = V::load(row + dx + v * V::kLanes);
                for (int c = 0; c < kCo; ++c) {
                    const reg wc = V::broadcast(w[c]);
                    for (int v = 0; v < kVectors; ++v) acc[c][v] = V::fma(in[v], wc, acc[c][v]);
                }
            }
        }
    }
    const reg lower = V::broadcast(r.lower), upper = V::broadcast(r.upper);
    for (int c = 0; c < kCo; ++c) {
        if (c >= r.channels) break;
        float *o = r.out + c * r.channel_stride + ox0;
        for (int v = 0; v < kVectors; ++v) {
            const int64_t left = r.out_w - ox0 - v * V::kLanes;
            if (left <= 0) break;
            const reg y = V::bound(acc[c][v], lower, upper);
            if (left >= V::kLanes) {
                V::store(o + v * V::kLanes, y);
            } else {
                V::store_first(o + v * V::kLanes, y, left);
            }
        }
    }
}

template <class V>
static void conv_row(const DenseConvRow &r) {
    constexpr int64_t kMaxColumns = 3 * V::kLanes;
    int64_t ox0 = 0;
    for (; ox0 + kMaxColumns <= r.out_w; ox0 += kMaxColumns) conv_tile<V, 3>(r, ox0);
    const int64_t left = r.out_w - ox0;
    if (left > 2 * V::kLanes) {
        conv_tile<V, 3>(r, ox0);
    } else if (left > V::kLanes) {
        conv_tile<V, 2>(r, ox0);
    } else if (left > 0) {
        conv_tile<V, 1>(r, ox0);
    }
}

// kRows rows of x times one panel, kSums independent sums per row (their k interleaved),
// added together at the end.
template <class V, int kRows, int kSums>
static inline void linear_rows(const float *x, int64_t in_features, const float *panel,
                               const float *bias, int64_t cols, typename V::reg lower,
                               typename V::reg upper, float *out, int64_t out_stride) {
    using reg = typename V::reg;
    constexpr int kVectors = kDensePanel / V::kLanes;
    reg acc[kSums][kRows][kVectors];
    for (int s = 0; s < kSums; ++s) {
        for (int m = 0; m < kRows; ++m) {
            for (int v = 0; v < kVectors; ++v) {
                acc[s][m][v] = s == 0 ? V::load(bias + v * V::kLanes) : V::broadcast(0.0f);
            }
        }
    }
    int64_t k = 0;
    for (; k + kSums <= in_features; k += kSums) {
        for (int s = 0; s < kSums; ++s) {
            const float *wk = panel + (k + s) * kDensePanel;
            reg w[kVectors];
            for (int v = 0; v < kVectors; ++v) w[v] = V::load(wk + v * V::kLanes);
            for (int m = 0; m < kRows; ++m) {
                const reg xm = V::broadcast(x[m * in_features + k + s]);
                for (int v = 0; v < kVectors; ++v) acc[s][m][v] = V::fma(xm, w[v], acc[s][m][v]);
            }
        }
    }
    for (; k < in_features; ++k) {
        const float *wk = panel + k * kDensePanel;
        for (int m = 0; m < kRows; ++m) {
            const reg xm = V::broadcast(x[m * in_features + k]);
            for (int v = 0; v < kVectors; ++v) {
                acc[0][m][v] = V::fma(xm, V::load(wk + v * V::kLanes), acc[0][m][v]);
            }
        }
    }
    for (int m = 0; m < kRows; ++m) {
        float *o = out + m * out_stride;
        for (int v = 0; v < kVectors; ++v) {
            reg y = acc[0][m][v];
            for (int s = 1; s < kSums; ++s) y = V::add(y, acc[s][m][v]);
            y = V::bound(y, lower, upper);
            const int64_t left = cols - v * V::kLanes;
            if (left >= V::kLanes) {
                V::store(o + v * V::kLanes, y);
            } else if (left > 0) {
                V::store_first(o + v * V::kLanes, y, left);
            }
        }
    }
}

template <class V>
static void linear_panel(const float *x, int64_t rows, int64_t in_features,
                         const float *panel, const float *bias, int64_t cols, float lower,
                         float upper, float *out, int64_t out_stride) {
    // The panel's bias, zero past cols (and for no bias): whole-vector loads.
    alignas(64) float b[kDensePanel] = {};
    if (bias) std::copy(bias, bias + cols, b);
    const typename V::reg lo = V::broadcast(lower), hi = V::broadcast(upper);
    constexpr int kRows = V::kLinearRows;
    int64_t m = 0;
    for (; m + kRows <= rows; m += kRows) {
        linear_rows<V, kRows, 1>(x + m * in_features, in_features, panel, b, cols, lo, hi,
                                 out + m * out_stride, out_stride);
    }
    for (; m < rows; ++m) {  // the last rows one at a time, with independent sums
        linear_rows<V, 1, V::kSingleRowSums>(x + m * in_features, in_features, panel, b, cols,
                                             lo, hi, out + m * out_stride, out_stride);
    }
}

template <class V>
static DenseKernels kernels() {
    return {V::kCoBlock, conv_row<V>, linear_panel<V>};
}

}  // namespace apb::dense_simd
