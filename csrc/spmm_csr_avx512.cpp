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

// out[c, c + 16*V) += batch (Fresh: = batch, the chains starting from 0 instead of
// out), lanes of the last vector limited by `last`.
template <int V, bool Fresh>
inline void sweep(const NonzeroBatch &batch, float *out, int64_t c, __mmask16 last) {
    const auto mask = [&](int q) { return q + 1 == V ? last : static_cast<__mmask16>(0xffff); };
    __m512 acc[V];
    APB_UNROLL for (int q = 0; q < V; ++q) {
        acc[q] = Fresh ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask(q), out + c + 16 * q);
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

// The last n < 128 columns in one pass of ceil(n/16) accumulators: V independent FMA
// chains whatever the width of the remainder (sixteen columns at a time, the rows of 7,
// 14 or 28 outputs of a deep convolution's phase planes ran one latency-bound chain).
template <bool Fresh>
inline void sweep_remainder(const NonzeroBatch &batch, float *out, int64_t c, int64_t n) {
    const __mmask16 last = static_cast<__mmask16>((1u << (n % 16 == 0 ? 16 : n % 16)) - 1u);
    switch ((n + 15) / 16) {
        case 1: return sweep<1, Fresh>(batch, out, c, last);
        case 2: return sweep<2, Fresh>(batch, out, c, last);
        case 3: return sweep<3, Fresh>(batch, out, c, last);
        case 4: return sweep<4, Fresh>(batch, out, c, last);
        case 5: return sweep<5, Fresh>(batch, out, c, last);
        case 6: return sweep<6, Fresh>(batch, out, c, last);
        case 7: return sweep<7, Fresh>(batch, out, c, last);
        default: return sweep<8, Fresh>(batch, out, c, last);
    }
}

template <bool Fresh>
void sweep_columns(const NonzeroBatch &batch, float *out, int64_t c0, int64_t c1) {
    int64_t c = c0;
    for (; c + 128 <= c1; c += 128) {
        sweep<8, Fresh>(batch, out, c, static_cast<__mmask16>(0xffff));
    }
    if (c < c1) sweep_remainder<Fresh>(batch, out, c, c1 - c);
}

}  // namespace

void spmm_csr_sweep_avx512(const NonzeroBatch &batch, float *out, int64_t c0, int64_t c1) {
    sweep_columns<false>(batch, out, c0, c1);
}

void spmm_csr_sweep_fresh_avx512(const NonzeroBatch &batch, float *out, int64_t c0,
                                 int64_t c1) {
    sweep_columns<true>(batch, out, c0, c1);
}

void spmm_csr_tile_avx512(const SpmmTile &t) {
    spmm_detail::for_each_batch(t, spmm_csr_halves_to_floats_avx512,
                                [&](const NonzeroBatch &batch, float *out) {
                                    spmm_csr_sweep_avx512(batch, out, t.c0, t.c1);
                                });
}

}  // namespace apb
