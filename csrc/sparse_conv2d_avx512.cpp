// sparse_conv2d with AVX-512: spmm_csr's AVX-512 sweep over the phase planes, and the
// epilogue and phase-row builder sixteen lanes at a time with masked tails, operation for
// operation as the scalar path. Stride-2 phase rows take every other input with one
// two-register permute instead of a scalar gather. Compiled with -mavx512f (and friends);
// called only when cpu_features().avx512.
#include "simd_avx512.h"
#include "sparse_conv2d.h"

namespace apb {

namespace {

// Lanes [0, n) of sixteen: none for n <= 0, all for n >= 16.
inline __mmask16 first_lanes(int64_t n) {
    if (n <= 0) return 0;
    return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
}

void epilogue_avx512(const void *dot, bool dot_is_float, float dot_scale, float sparse_scale,
                     float shift, const float *acc, int64_t acc_stride, float *out,
                     int64_t rows, int64_t count) {
    const __m512 a = _mm512_set1_ps(dot_scale);
    const __m512 g = _mm512_set1_ps(sparse_scale);
    const __m512 s = _mm512_set1_ps(shift);
    // Lanes past a row's end run into the next rows of the run (written after, so they
    // end right): only the run's last vector is partial, short rows (a 7x7 image's) do
    // not make every store a masked one.
    const int64_t total = rows * count;
    for (int64_t r = 0; r < rows; ++r, acc += acc_stride, out += count) {
        const int64_t row = r * count;  // this row's first dot value
        for (int64_t i = 0; i < count; i += 16) {
            const __mmask16 valid = first_lanes(total - row - i);
            __m512 base = s;
            if (dot != nullptr) {
                const __m512 d =
                    dot_is_float
                        ? _mm512_maskz_loadu_ps(valid, static_cast<const float *>(dot) + row + i)
                        : _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(
                              valid, static_cast<const int32_t *>(dot) + row + i));
                base = _mm512_fmadd_ps(a, d, s);
            }
            _mm512_mask_storeu_ps(out + i, valid,
                                  _mm512_fmadd_ps(g, _mm512_maskz_loadu_ps(valid, acc + i), base));
        }
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

// dst[0, n) = 0, sixteen at a time.
inline void zeros(float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        _mm512_mask_storeu_ps(dst + i, first_lanes(n - i), _mm512_setzero_ps());
    }
}

// One phase row (build_phases): dst[k] = x^(src[sw*(k - k_lo)]) on [k_lo, k_hi), 0 on the
// rest of [0, wq). Masked loads read no input past the last one used.
void phase_row(const float *src, int64_t sw, int64_t k_lo, int64_t k_hi, int64_t wq,
               const SparseConvInput &in, float *dst) {
    zeros(dst, k_lo);
    zeros(dst + k_hi, wq - k_hi);
    const int64_t n = k_hi - k_lo;
    float *d = dst + k_lo;
    if (sw == 1) {
        for (int64_t i = 0; i < n; i += 16) {
            const __mmask16 valid = first_lanes(n - i);
            _mm512_mask_storeu_ps(d + i, valid,
                                  quantize16(_mm512_maskz_loadu_ps(valid, src + i), in));
        }
    } else if (sw == 2) {
        const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24,
                                               26, 28, 30);
        for (int64_t i = 0; i < n; i += 16) {
            // Outputs i.. read inputs 2i, 2i + 2, ..., the last 2(n - 1).
            const int64_t inputs = 2 * (n - i) - 1;
            const __m512 lo =
                quantize16(_mm512_maskz_loadu_ps(first_lanes(inputs), src + 2 * i), in);
            const __m512 hi =
                quantize16(_mm512_maskz_loadu_ps(first_lanes(inputs - 16), src + 2 * i + 16), in);
            _mm512_mask_storeu_ps(d + i, first_lanes(n - i),
                                  _mm512_permutex2var_ps(lo, even, hi));
        }
    } else {
        for (int64_t k = 0; k < n; ++k) d[k] = sparse_conv_detail::quantize_input(src[sw * k], in);
    }
}

}  // namespace

void sparse_conv2d_build_avx512(const float *x, const Conv2dGeometry &g, const PhaseLayout &p,
                                const SparseConvInput &in, int64_t bc, float *phases) {
    sparse_conv_detail::build_phases(
        x, g, p, bc, phases,
        [&](const float *src, int64_t sw, int64_t k_lo, int64_t k_hi, int64_t wq, float *dst) {
            phase_row(src, sw, k_lo, k_hi, wq, in, dst);
        });
}

void sparse_conv2d_tile_avx512(const SparseConvTile &t) {
    sparse_conv_detail::run_tile(t, spmm_csr_halves_to_floats_avx512, spmm_csr_sweep_avx512,
                                 spmm_csr_sweep_fresh_avx512,
                                 epilogue_avx512);
}

}  // namespace apb
