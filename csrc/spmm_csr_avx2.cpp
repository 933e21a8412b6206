// spmm_csr with AVX2: each batch of nonzeros is swept across the columns 64 at a time
// with the output slice held in 8 ymm accumulators, so out is loaded and stored once
// per batch while every nonzero costs a broadcast and 8 FMAs. float16 values are
// converted with F16C. Compiled with -mavx2 -mfma; called only when
// cpu_features().avx2 is true (which includes F16C).
#include <immintrin.h>

#include "simd_avx2.h"
#include "spmm_csr.h"

namespace apb {

namespace {

using spmm_detail::NonzeroBatch;

// The build's AVX2 flags do not include F16C, so only this function enables it.
__attribute__((target("f16c"))) void halves_to_floats_f16c(const uint16_t *src, int64_t n,
                                                           float *dst) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i *>(src + i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
    if (i < n) {
        alignas(16) uint16_t h[8] = {};
        alignas(32) float f[8];
        for (int64_t k = i; k < n; ++k) h[k - i] = src[k];
        _mm256_store_ps(f, _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i *>(h))));
        for (int64_t k = i; k < n; ++k) dst[k] = f[k - i];
    }
}

// out[c, c + 8*V) += batch, V full vectors.
template <int V>
inline void sweep(const NonzeroBatch &batch, float *out, int64_t c) {
    __m256 acc[V];
    for (int q = 0; q < V; ++q) acc[q] = _mm256_loadu_ps(out + c + 8 * q);
    for (int64_t k = 0; k < batch.count; ++k) {
        const __m256 v = _mm256_set1_ps(batch.values[k]);
        const float *x = batch.rows[k] + c;
        for (int q = 0; q < V; ++q) acc[q] = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + 8 * q), acc[q]);
    }
    for (int q = 0; q < V; ++q) _mm256_storeu_ps(out + c + 8 * q, acc[q]);
}

// The last n < 8 columns: masked loads and store touch nothing past them.
inline void sweep_tail(const NonzeroBatch &batch, float *out, int64_t c, int64_t n) {
    const __m256i valid = avx2::first_lanes(n);
    __m256 acc = _mm256_maskload_ps(out + c, valid);
    for (int64_t k = 0; k < batch.count; ++k) {
        const __m256 v = _mm256_set1_ps(batch.values[k]);
        acc = _mm256_fmadd_ps(v, _mm256_maskload_ps(batch.rows[k] + c, valid), acc);
    }
    _mm256_maskstore_ps(out + c, valid, acc);
}

}  // namespace

void spmm_csr_tile_avx2(const SpmmTile &t) {
    spmm_detail::for_each_batch(t, halves_to_floats_f16c, [&](const NonzeroBatch &batch,
                                                              float *out) {
        int64_t c = t.c0;
        for (; c + 64 <= t.c1; c += 64) sweep<8>(batch, out, c);
        for (; c + 8 <= t.c1; c += 8) sweep<1>(batch, out, c);
        if (c < t.c1) sweep_tail(batch, out, c, t.c1 - c);
    });
}

}  // namespace apb
