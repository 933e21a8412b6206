// Portable spmm_csr: one fused multiply-add per element and nonzero, in nonzero order,
// exactly as the SIMD paths do, so every ISA gives bit-identical results.
// Compiled without ISA flags.
#include <cmath>

#include "spmm_csr.h"

namespace apb {

void spmm_csr_sweep_scalar(const spmm_detail::NonzeroBatch &batch, float *out, int64_t c0,
                           int64_t c1) {
    for (int64_t k = 0; k < batch.count; ++k) {
        const float v = batch.values[k];
        const float *x = batch.rows[k];
        for (int64_t c = c0; c < c1; ++c) out[c] = std::fma(v, x[c], out[c]);
    }
}

void spmm_csr_sweep_fresh_scalar(const spmm_detail::NonzeroBatch &batch, float *out,
                                 int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) out[c] = 0.0f;
    spmm_csr_sweep_scalar(batch, out, c0, c1);
}

void spmm_csr_tile_scalar(const SpmmTile &t) {
    spmm_detail::for_each_batch(t, spmm_detail::halves_to_floats_portable,
                                [&](const spmm_detail::NonzeroBatch &batch, float *out) {
                                    spmm_csr_sweep_scalar(batch, out, t.c0, t.c1);
                                });
}

}  // namespace apb
