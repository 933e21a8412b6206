// One packed APB (or binary) layer with quantized inputs in one call: the activation
// packing, the binary product, the sparse correction and the epilogue (docs/design.md §2).
//
// A packed convolution otherwise makes three kernel calls per forward (im2col packing,
// binary GEMM, sparse correction with the epilogue), each a crossing from Python into
// the extension with its own argument checks and result allocation; on ResNet-20's
// layers at batch 1 those crossings cost as much as the kernels. Here the packed bits
// and the integer product live in per-thread workspaces and never leave C++.
#pragma once

#include <cstdint>

#include "pack_activations.h"
#include "sparse_conv2d.h"
#include "spmm_csr.h"

namespace apb {

// The quantized-input product of a packed layer: ±1 signs (bits 1) or k-bit codes.
struct BinaryProduct {
    const uint64_t *sign_rows;  // [M, ceil(K/64)], columns in hwc order (pack_activations.h)
    int64_t rows;               // M
    int act_bits;               // 1 (signs) or 2..8 (codes)
    float scale;                // the clip scale s of k-bit codes (ignored for signs)
    // ±1 inputs with zero padding only: int32 [M, OH*OW], the padded positions' share of
    // the popcount product, subtracted from every batch item's (see ConvGeometry in
    // apb/pack/geometry.py); null when there is no padding.
    const int32_t *padding_correction;
};

// out float32 [B, M, OH, OW] (the layer's NCHW output: out[b, m, l] for n = b*OH*OW + l) =
// dot_scale[m] * dot[m, n] + sparse_scale[m] * (S conv x^)[m, n] + shift[m], dot the
// popcount product of the sign rows with x's packed im2col rows (hwc), x^ the quantized x.
// e.dot must be null: it is computed here (e.out_nchw is set here). Runs image by image
// (a batch splits over the threads by image). Throws std::invalid_argument on a bad
// quantizer or CSR matrix (before writing anything).
void apb_conv2d(const float *x, const Conv2dGeometry &g, const BinaryProduct &p,
                const CsrMatrix &a, const SparseConvEpilogue &e, float *out);

// The same for a Linear layer: out float32 [N, M] (rows of the layer's output, no
// transposition left to do) = dot_scale[m] * dot[m, n] + sparse_scale[m] * (S x^_n)[m] +
// shift[m] for x float32 [N, K], dot the popcount product of the sign rows with x's packed
// rows, S ⊗ x^ by spmm_csr. p.padding_correction must be null.
void apb_linear(const float *x, int64_t N, int64_t K, const BinaryProduct &p,
                const CsrMatrix &a, const SparseConvEpilogue &e, float *out);

}  // namespace apb
