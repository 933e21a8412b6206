// Portable sparse_conv2d: spmm_csr's scalar sweep over the phase planes and a scalar
// epilogue, with the same FMAs in the same order as the SIMD paths (bit-identical).
// Compiled without ISA flags.
#include <cmath>

#include "sparse_conv2d.h"

namespace apb {

namespace {

void epilogue_scalar(const void *dot, bool dot_is_float, float dot_scale, float sparse_scale,
                     float shift, const float *acc, float *out, int64_t count) {
    for (int64_t i = 0; i < count; ++i) {
        float base = shift;
        if (dot != nullptr) {
            const float d = dot_is_float ? static_cast<const float *>(dot)[i]
                                         : static_cast<float>(static_cast<const int32_t *>(dot)[i]);
            base = std::fma(dot_scale, d, shift);
        }
        out[i] = std::fma(sparse_scale, acc[i], base);
    }
}

}  // namespace

void sparse_conv2d_quantize_scalar(const float *x, int64_t n, const SparseConvInput &in,
                                   float *out) {
    for (int64_t i = 0; i < n; ++i) out[i] = sparse_conv_detail::quantize_input(x[i], in);
}

void sparse_conv2d_tile_scalar(const SparseConvTile &t) {
    sparse_conv_detail::run_tile(t, spmm_detail::halves_to_floats_portable,
                                 spmm_csr_sweep_scalar, epilogue_scalar);
}

}  // namespace apb
