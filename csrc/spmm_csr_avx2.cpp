// spmm_csr with AVX2: each batch of nonzeros is swept across the columns 64 at a time
// (the last < 64 in one masked pass) with the output slice held in ymm accumulators,
// so out is loaded and stored once per batch while every nonzero costs a broadcast and
// up to 8 independent FMAs. float16 values are
// converted with F16C. Compiled with -mavx2 -mfma; called only when
// cpu_features().avx2 is true (which includes F16C).
#include <immintrin.h>

#include "simd_avx2.h"
#include "spmm_csr.h"

// Full unrolling keeps the accumulators in registers: left to its cost model, GCC 12
// kept some widths' accumulator arrays in memory, a store per vector and nonzero.
#define APB_UNROLL _Pragma("GCC unroll 8")

namespace apb {

using spmm_detail::NonzeroBatch;

// The build's AVX2 flags do not include F16C, so only this function enables it.
__attribute__((target("f16c"))) void spmm_csr_halves_to_floats_avx2(const uint16_t *src,
                                                                    int64_t n, float *dst) {
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

namespace {

// out[c, c + 8*V) += batch, the last of the V vectors limited to the lanes in `last`
// (masked loads and store touch nothing past them). V independent accumulators, so
// that up to 8 FMA chains are in flight whatever the width of the remainder.
// Fresh: out = batch, the chains starting from 0 instead of out.
template <int V, bool Masked, bool Fresh>
inline void sweep(const NonzeroBatch &batch, float *out, int64_t c, __m256i last) {
    constexpr int kFull = Masked ? V - 1 : V;  // vectors loaded whole
    __m256 acc[V];
    if constexpr (Fresh) {
        APB_UNROLL for (int q = 0; q < V; ++q) acc[q] = _mm256_setzero_ps();
    } else {
        APB_UNROLL for (int q = 0; q < kFull; ++q) acc[q] = _mm256_loadu_ps(out + c + 8 * q);
        if constexpr (Masked) acc[V - 1] = _mm256_maskload_ps(out + c + 8 * (V - 1), last);
    }
    for (int64_t k = 0; k < batch.count; ++k) {
        const __m256 v = _mm256_set1_ps(batch.values[k]);
        const float *x = batch.rows[k] + c;
        APB_UNROLL for (int q = 0; q < kFull; ++q) {
            acc[q] = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + 8 * q), acc[q]);
        }
        if constexpr (Masked) {
            acc[V - 1] =
                _mm256_fmadd_ps(v, _mm256_maskload_ps(x + 8 * (V - 1), last), acc[V - 1]);
        }
    }
    APB_UNROLL for (int q = 0; q < kFull; ++q) _mm256_storeu_ps(out + c + 8 * q, acc[q]);
    if constexpr (Masked) _mm256_maskstore_ps(out + c + 8 * (V - 1), last, acc[V - 1]);
}

// The last n < 64 columns in one pass of ceil(n/8) accumulators.
template <bool Fresh>
inline void sweep_remainder(const NonzeroBatch &batch, float *out, int64_t c, int64_t n) {
    const __m256i last = avx2::first_lanes(n % 8 == 0 ? 8 : n % 8);
    switch ((n + 7) / 8) {
        case 1: return sweep<1, true, Fresh>(batch, out, c, last);
        case 2: return sweep<2, true, Fresh>(batch, out, c, last);
        case 3: return sweep<3, true, Fresh>(batch, out, c, last);
        case 4: return sweep<4, true, Fresh>(batch, out, c, last);
        case 5: return sweep<5, true, Fresh>(batch, out, c, last);
        case 6: return sweep<6, true, Fresh>(batch, out, c, last);
        case 7: return sweep<7, true, Fresh>(batch, out, c, last);
        default: return sweep<8, true, Fresh>(batch, out, c, last);
    }
}

template <bool Fresh>
void sweep_columns(const NonzeroBatch &batch, float *out, int64_t c0, int64_t c1) {
    int64_t c = c0;
    for (; c + 64 <= c1; c += 64) sweep<8, false, Fresh>(batch, out, c, __m256i{});
    if (c < c1) sweep_remainder<Fresh>(batch, out, c, c1 - c);
}

}  // namespace

void spmm_csr_sweep_avx2(const NonzeroBatch &batch, float *out, int64_t c0, int64_t c1) {
    sweep_columns<false>(batch, out, c0, c1);
}

void spmm_csr_sweep_fresh_avx2(const NonzeroBatch &batch, float *out, int64_t c0, int64_t c1) {
    sweep_columns<true>(batch, out, c0, c1);
}

void spmm_csr_tile_avx2(const SpmmTile &t) {
    spmm_detail::for_each_batch(t, spmm_csr_halves_to_floats_avx2,
                                [&](const NonzeroBatch &batch, float *out) {
                                    spmm_csr_sweep_avx2(batch, out, t.c0, t.c1);
                                });
}

}  // namespace apb
