// Full-precision (float32) layers of a packed model, for inference: a direct convolution
// for stems (few input channels, stride 1) and a linear layer for small batches, each
// with the epilogue min(max(y + bias, lower), upper) (a folded BatchNorm's shift and the
// ReLU / Hardtanh after it; NaN kept).
//
// Why by hand (docs/design.md, "Full-precision layers"): a packed network keeps its first
// and last layers in float32, and torch runs those shapes badly at batch 1. LeNet-5's
// 1 -> 6 5x5 stem costs 16-48 us in torch (oneDNN or im2col + GEMM) for 118k multiply-adds,
// ResNet-20's 3 -> 16 3x3 54 us, and F.linear of the MLP's 784 -> 256 layer 18 us for a
// product that reads 0.8 MB of weights. Both kernels here are plain loops over registers:
//
//   dense_conv2d: each output row of kCoBlock channels x up to 3 vectors of columns is a
//   block of accumulators; every tap (input channel, kernel row, kernel column) adds one
//   unaligned load of the zero-bordered input row times a broadcast weight. Inputs are
//   copied once into zero-bordered rows of row_stride floats, so no load leaves them and
//   there is no border case; the last vector of a row is stored masked.
//
//   dense_linear: weights packed once into panels of kDensePanel output features,
//   [panel][in_feature][kDensePanel], so a row of inputs streams one panel contiguously;
//   up to four rows share each weight load, and one row keeps several independent sums
//   (the FMA latency chain, not the loads, bounds a single-row product otherwise).
//
// Results differ from torch's only by float rounding (sums in another order): a
// convolution output is a chain of FMAs from the bias over the taps in (input channel,
// kernel row, kernel column) order on every ISA; a linear output is one such chain over
// the inputs, except a lone row's (a batch's last rows past the 2- or 4-row tiles), whose
// 2 (AVX2) or 4 (AVX-512) interleaved chains are added at the end. The ISAs can therefore
// differ in the last bits of a linear layer's output, never by more than rounding.
#pragma once

#include <cstdint>

namespace apb {

struct DenseConv2dGeometry {
    int64_t batch, in_channels, height, width;
    int64_t out_channels, kernel_h, kernel_w, pad_h, pad_w;
    int64_t out_h, out_w;  // height + 2*pad_h - kernel_h + 1 (stride 1), likewise width
};

// out [B, Cout, OH, OW] = conv(x [B, Cin, H, W], weight [Cout, Cin, KH, KW]) + bias
// (stride 1, no dilation, zero padding), then min(max(., lower), upper). bias may be
// null. All C-contiguous; the geometry must be consistent (the binding checks it).
void dense_conv2d(const float *x, const DenseConv2dGeometry &g, const float *weight,
                  const float *bias, float lower, float upper, float *out);

// Output features per panel of a packed linear weight.
constexpr int64_t kDensePanel = 32;

// Floats of the packed form of an [out_features, in_features] weight.
int64_t dense_linear_packed_size(int64_t out_features, int64_t in_features);

// packed[p][k][j] = weight[p * kDensePanel + j, k], 0 past out_features.
void dense_linear_pack(const float *weight, int64_t out_features, int64_t in_features,
                       float *packed);

// out [M, N] = x [M, K] @ weight^T + bias, then min(max(., lower), upper); weight given
// packed by dense_linear_pack; bias may be null.
void dense_linear(const float *x, int64_t rows, int64_t in_features, const float *packed,
                  int64_t out_features, const float *bias, float lower, float upper,
                  float *out);

// ---- per instruction set (dense_<isa>.cpp) ------------------------------------------

// One output row of one block of output channels, from zero-bordered input.
struct DenseConvRow {
    const float *in;        // the image's bordered input: [Cin][H + 2*pad_h][row_stride]
    int64_t in_channels, kernel_h, kernel_w;
    int64_t row_stride, plane_stride;  // plane_stride = (H + 2*pad_h) * row_stride
    const float *weights;   // the block's taps: [Cin*KH*KW][co_block]
    const float *bias;      // [co_block]
    int64_t channels;       // output channels of the block that exist (<= co_block)
    int64_t oy, out_w;
    float lower, upper;
    float *out;             // out[c * channel_stride + ox] for c < channels, ox < out_w
    int64_t channel_stride;
};

struct DenseKernels {
    int64_t co_block;  // output channels per DenseConvRow
    void (*conv_row)(const DenseConvRow &);
    // out[r, j] for r < rows, j < cols (<= kDensePanel) from one packed panel.
    void (*linear_panel)(const float *x, int64_t rows, int64_t in_features,
                         const float *panel, const float *bias, int64_t cols, float lower,
                         float upper, float *out, int64_t out_stride);
};

DenseKernels dense_kernels_scalar();
DenseKernels dense_kernels_avx2();
DenseKernels dense_kernels_avx512();

// Readable columns past the last output column of a bordered row: row_stride is
// round_up(out_w, kDenseMaxVector) + kernel_w - 1, so whole vectors never leave the row.
constexpr int64_t kDenseMaxVector = 16;

}  // namespace apb
