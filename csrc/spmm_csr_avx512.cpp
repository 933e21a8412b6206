// spmm_csr with AVX-512: as the AVX2 path with 16 lanes, 128 columns (8 zmm) per sweep
// and masked loads/stores for the last partial vector; float16 values converted with
// the AVX-512F vcvtph2ps. Compiled with -mavx512f (and friends); called only when
// cpu_features().avx512.

#include "simd_avx512.h"
#include "spmm_csr.h"

// Full unrolling keeps the accumulators in registers: left to its cost model, GCC 12
// kept some widths' accumulator arrays in memory, a store per vector and nonzero.
#define APB_UNROLL _Pragma("GCC unroll 8")

namespace apb {

using spmm_detail::NonzeroBatch;

// Full groups of 16 with plain loads; the last few through a zeroed buffer (a masked
// 16-bit load would need AVX-512VL, which cpu_features() does not check).
void spmm_csr_halves_to_floats_avx512(const uint16_t *src, int64_t n, float *dst) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(src + i));
        _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(h));
    }
    if (i < n) {
        alignas(32) uint16_t h[16] = {};
        for (int64_t k = i; k < n; ++k) h[k - i] = src[k];
        const __m256i packed = _mm256_load_si256(reinterpret_cast<const __m256i *>(h));
        const __mmask16 valid = static_cast<__mmask16>((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(dst + i, valid, _mm512_cvtph_ps(packed));
    }
}

namespace {

// out[c, c + 16*V) += batch, lanes of the last vector limited by `last`.
template <int V>
inline void sweep(const NonzeroBatch &batch, float *out, int64_t c, __mmask16 last) {
    const auto mask = [&](int q) { return q + 1 == V ? last : static_cast<__mmask16>(0xffff); };
    __m512 acc[V];
    APB_UNROLL for (int q = 0; q < V; ++q) {
        acc[q] = _mm512_maskz_loadu_ps(mask(q), out + c + 16 * q);
    }
    for (int64_t k = 0; k < batch.count; ++k) {
        const __m512 v = _mm512_set1_ps(batch.values[k]);
        const float *x = batch.rows[k] + c;
        APB_UNROLL for (int q = 0; q < V; ++q) {
            acc[q] = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(mask(q), x + 16 * q), acc[q]);
        }
    }
    APB_UNROLL for (int q = 0; q < V; ++q) {
        _mm512_mask_storeu_ps(out + c + 16 * q, mask(q), acc[q]);
    }
}

}  // namespace

void spmm_csr_sweep_avx512(const NonzeroBatch &batch, float *out, int64_t c0, int64_t c1) {
    const __mmask16 all = 0xffff;
    int64_t c = c0;
    for (; c + 128 <= c1; c += 128) sweep<8>(batch, out, c, all);
    for (; c + 16 <= c1; c += 16) sweep<1>(batch, out, c, all);
    if (c < c1) sweep<1>(batch, out, c, static_cast<__mmask16>((1u << (c1 - c)) - 1u));
}

void spmm_csr_tile_avx512(const SpmmTile &t) {
    spmm_detail::for_each_batch(t, spmm_csr_halves_to_floats_avx512,
                                [&](const NonzeroBatch &batch, float *out) {
                                    spmm_csr_sweep_avx512(batch, out, t.c0, t.c1);
                                });
}

}  // namespace apb
