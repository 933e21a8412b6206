// Portable sparse_conv2d: spmm_csr's scalar sweep over the phase planes, a scalar
// epilogue and phase-row builder, with the same FMAs in the same order as the SIMD paths
// (bit-identical). Compiled without ISA flags.
#include <cmath>

#include "sparse_conv2d.h"

namespace apb {

namespace {

void epilogue_scalar(const void *dot, bool dot_is_float, float dot_scale, float sparse_scale,
                     float shift, const float *acc, int64_t acc_stride, float *out,
                     int64_t rows, int64_t count) {
    for (int64_t r = 0; r < rows; ++r, acc += acc_stride) {
        for (int64_t i = 0; i < count; ++i) {
            const int64_t n = r * count + i;
            float base = shift;
            if (dot != nullptr) {
                const float d =
                    dot_is_float ? static_cast<const float *>(dot)[n]
                                 : static_cast<float>(static_cast<const int32_t *>(dot)[n]);
                base = std::fma(dot_scale, d, shift);
            }
            out[n] = std::fma(sparse_scale, acc[i], base);
        }
    }
}

}  // namespace

void sparse_conv2d_build_scalar(const float *x, const Conv2dGeometry &g, const PhaseLayout &p,
                                const SparseConvInput &in, int64_t bc, float *phases) {
    sparse_conv_detail::build_phases(
        x, g, p, bc, phases,
        [&](const float *src, int64_t sw, int64_t k_lo, int64_t k_hi, int64_t wq, float *dst) {
            for (int64_t k = 0; k < k_lo; ++k) dst[k] = 0.0f;
            for (int64_t k = k_lo; k < k_hi; ++k) {
                dst[k] = sparse_conv_detail::quantize_input(src[sw * (k - k_lo)], in);
            }
            for (int64_t k = k_hi; k < wq; ++k) dst[k] = 0.0f;
        });
}

void sparse_conv2d_tile_scalar(const SparseConvTile &t) {
    sparse_conv_detail::run_tile(t, spmm_detail::halves_to_floats_portable,
                                 spmm_csr_sweep_scalar, spmm_csr_sweep_fresh_scalar,
                                 epilogue_scalar);
}

}  // namespace apb
