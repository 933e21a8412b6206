// Portable sparse_conv2d: spmm_csr's scalar sweep over float phase planes (its byte twin
// over byte planes), a scalar epilogue and phase-row builders, with the same FMAs in the
// same order as the SIMD paths (bit-identical). Compiled without ISA flags.
#include <cmath>

#include "sparse_conv2d.h"

namespace apb {

namespace {

void epilogue_scalar(const void *dot, bool dot_is_float, const ChannelEpilogue &c,
                     const float *acc, int64_t acc_stride, float *out, int64_t rows,
                     int64_t count) {
    for (int64_t r = 0; r < rows; ++r, acc += acc_stride) {
        for (int64_t i = 0; i < count; ++i) {
            const int64_t n = r * count + i;
            float base = c.shift;
            if (dot != nullptr) {
                const float d =
                    dot_is_float ? static_cast<const float *>(dot)[n]
                                 : static_cast<float>(static_cast<const int32_t *>(dot)[n]);
                base = std::fma(c.dot_scale, d, c.shift);
            }
            out[n] = finish_output(std::fma(c.sparse_scale, acc[i], base), c, n);
        }
    }
}

// acc[c0, c1) += batch over byte rows: each byte widened to float32 (exact), then one
// FMA per element and nonzero in batch order, as spmm_csr_sweep_scalar.
template <typename T>
void sweep_bytes(const sparse_conv_detail::ByteBatch<T> &batch, float *out, int64_t c0,
                 int64_t c1) {
    for (int64_t k = 0; k < batch.count; ++k) {
        const float v = batch.values[k];
        const T *x = batch.rows[k];
        for (int64_t c = c0; c < c1; ++c) out[c] = std::fma(v, static_cast<float>(x[c]), out[c]);
    }
}

template <typename T>
void sweep_bytes_fresh(const sparse_conv_detail::ByteBatch<T> &batch, float *out, int64_t c0,
                       int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) out[c] = 0.0f;
    sweep_bytes(batch, out, c0, c1);
}

// Phase rows of element type T (float x^ or byte codes / signs), zero outside the image.
template <typename T>
void build_phase_rows(const float *x, const Conv2dGeometry &g, const PhaseLayout &p,
                      const SparseConvInput &in, int64_t bc, T *phases) {
    sparse_conv_detail::build_phases(
        x, g, p, bc, phases,
        [&](const float *src, int64_t sw, int64_t k_lo, int64_t k_hi, int64_t wq, T *dst) {
            for (int64_t k = 0; k < k_lo; ++k) dst[k] = T(0);
            for (int64_t k = k_lo; k < k_hi; ++k) {
                dst[k] = sparse_conv_detail::quantize_as<T>(src[sw * (k - k_lo)], in);
            }
            for (int64_t k = k_hi; k < wq; ++k) dst[k] = T(0);
        });
}

}  // namespace

void sparse_conv2d_build_bytes_scalar(const float *x, const Conv2dGeometry &g,
                                      const PhaseLayout &p, const SparseConvInput &in,
                                      int64_t bc, uint8_t *phases) {
    build_phase_rows(x, g, p, in, bc, phases);
}

void sparse_conv2d_build_scalar(const float *x, const Conv2dGeometry &g, const PhaseLayout &p,
                                const SparseConvInput &in, int64_t bc, float *phases) {
    build_phase_rows(x, g, p, in, bc, phases);
}

void sparse_conv2d_tile_scalar(const SparseConvTile &t) {
    using sparse_conv_detail::run_tile;
    const auto halves = spmm_detail::halves_to_floats_portable;
    switch (t.type) {
        case PhaseType::u8:
            return run_tile<uint8_t>(t, halves, sweep_bytes<uint8_t>, sweep_bytes_fresh<uint8_t>,
                                     epilogue_scalar);
        case PhaseType::i8:
            return run_tile<int8_t>(t, halves, sweep_bytes<int8_t>, sweep_bytes_fresh<int8_t>,
                                    epilogue_scalar);
        default:
            return run_tile<float>(t, halves, spmm_csr_sweep_scalar, spmm_csr_sweep_fresh_scalar,
                                   epilogue_scalar);
    }
}

}  // namespace apb
