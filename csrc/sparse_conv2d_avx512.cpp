// sparse_conv2d with AVX-512: spmm_csr's AVX-512 sweep over the phase planes, and the
// epilogue and input quantizer sixteen lanes at a time with masked tails, operation for
// operation as the scalar path. Compiled with -mavx512f (and friends); called only when
// cpu_features().avx512.
#include "simd_avx512.h"
#include "sparse_conv2d.h"

namespace apb {

namespace {

inline __mmask16 first_lanes(int64_t n) {
    return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
}

void epilogue_avx512(const void *dot, bool dot_is_float, float dot_scale, float sparse_scale,
                     float shift, const float *acc, float *out, int64_t count) {
    const __m512 a = _mm512_set1_ps(dot_scale);
    const __m512 g = _mm512_set1_ps(sparse_scale);
    const __m512 s = _mm512_set1_ps(shift);
    for (int64_t i = 0; i < count; i += 16) {
        const __mmask16 valid = first_lanes(count - i);
        __m512 base = s;
        if (dot != nullptr) {
            const __m512 d =
                dot_is_float
                    ? _mm512_maskz_loadu_ps(valid, static_cast<const float *>(dot) + i)
                    : _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(
                          valid, static_cast<const int32_t *>(dot) + i));
            base = _mm512_fmadd_ps(a, d, s);
        }
        _mm512_mask_storeu_ps(out + i, valid,
                              _mm512_fmadd_ps(g, _mm512_maskz_loadu_ps(valid, acc + i), base));
    }
}

__m512 quantize16(__m512 v, const SparseConvInput &in) {
    switch (in.kind) {
        case InputQuantizer::signs: {
            const __mmask16 negative = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ);
            return _mm512_mask_blend_ps(negative, _mm512_set1_ps(1.0f), _mm512_set1_ps(-1.0f));
        }
        case InputQuantizer::codes: {
            const __m512 scale = _mm512_set1_ps(in.scale);
            // max/min return their second operand when the first is NaN: NaN -> 0.
            v = _mm512_max_ps(v, _mm512_setzero_ps());
            v = _mm512_min_ps(v, scale);
            const __m512 q = _mm512_mul_ps(_mm512_div_ps(v, scale), _mm512_set1_ps(in.levels));
            const __m512 code =
                _mm512_roundscale_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            return _mm512_mul_ps(code, _mm512_set1_ps(in.step));
        }
        default: return v;
    }
}

}  // namespace

void sparse_conv2d_quantize_avx512(const float *x, int64_t n, const SparseConvInput &in,
                                   float *out) {
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 valid = first_lanes(n - i);
        _mm512_mask_storeu_ps(out + i, valid,
                              quantize16(_mm512_maskz_loadu_ps(valid, x + i), in));
    }
}

void sparse_conv2d_tile_avx512(const SparseConvTile &t) {
    sparse_conv_detail::run_tile(t, spmm_csr_halves_to_floats_avx512, spmm_csr_sweep_avx512,
                                 epilogue_avx512);
}

}  // namespace apb
