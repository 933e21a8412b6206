// sparse_conv2d with AVX2: spmm_csr's AVX2 sweep (64 outputs in 8 ymm accumulators per
// batch of nonzeros) over the phase planes, and the epilogue and input quantizer eight
// lanes at a time, operation for operation as the scalar path. Compiled with -mavx2
// -mfma; called only when cpu_features().avx2 is true.
#include <immintrin.h>

#include "simd_avx2.h"
#include "sparse_conv2d.h"

namespace apb {

namespace {

// The first n < 8 lanes of v to dst. Through the stack rather than vmaskmovps, whose
// store form is slow on AMD cores; tails are frequent here (rows of 28, 14, 7 outputs).
inline void store_first(float *dst, int64_t n, __m256 v) {
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, v);
    for (int64_t i = 0; i < n; ++i) dst[i] = lanes[i];
}

// Eight dot values as floats, lanes past `valid` not read.
inline __m256 load_dot(const void *dot, bool is_float, int64_t i, __m256i valid, bool full) {
    if (is_float) {
        const float *d = static_cast<const float *>(dot) + i;
        return full ? _mm256_loadu_ps(d) : _mm256_maskload_ps(d, valid);
    }
    const int *d = static_cast<const int *>(dot) + i;
    const __m256i v = full ? _mm256_loadu_si256(reinterpret_cast<const __m256i *>(d))
                           : _mm256_maskload_epi32(d, valid);
    return _mm256_cvtepi32_ps(v);
}

void epilogue_avx2(const void *dot, bool dot_is_float, float dot_scale, float sparse_scale,
                   float shift, const float *acc, float *out, int64_t count) {
    const __m256 a = _mm256_set1_ps(dot_scale);
    const __m256 g = _mm256_set1_ps(sparse_scale);
    const __m256 s = _mm256_set1_ps(shift);
    const __m256i all = _mm256_set1_epi32(-1);
    int64_t i = 0;
    for (; i + 8 <= count; i += 8) {
        const __m256 base =
            dot == nullptr ? s : _mm256_fmadd_ps(a, load_dot(dot, dot_is_float, i, all, true), s);
        _mm256_storeu_ps(out + i, _mm256_fmadd_ps(g, _mm256_loadu_ps(acc + i), base));
    }
    if (i < count) {
        const __m256i valid = avx2::first_lanes(count - i);
        const __m256 base =
            dot == nullptr ? s
                           : _mm256_fmadd_ps(a, load_dot(dot, dot_is_float, i, valid, false), s);
        store_first(out + i, count - i,
                    _mm256_fmadd_ps(g, _mm256_maskload_ps(acc + i, valid), base));
    }
}

// x^ of eight inputs: the quantizers of sparse_conv_detail::quantize_input.
struct Quantize {
    InputQuantizer kind;
    __m256 scale, levels, step;

    __m256 operator()(__m256 v) const {
        switch (kind) {
            case InputQuantizer::signs: {
                const __m256 negative = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ);
                return _mm256_blendv_ps(_mm256_set1_ps(1.0f), _mm256_set1_ps(-1.0f), negative);
            }
            case InputQuantizer::codes: {
                // max/min return their second operand when the first is NaN: NaN -> 0.
                v = _mm256_max_ps(v, _mm256_setzero_ps());
                v = _mm256_min_ps(v, scale);
                const __m256 q = _mm256_mul_ps(_mm256_div_ps(v, scale), levels);
                const __m256 code =
                    _mm256_round_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                return _mm256_mul_ps(code, step);
            }
            default: return v;
        }
    }
};

}  // namespace

void sparse_conv2d_quantize_avx2(const float *x, int64_t n, const SparseConvInput &in,
                                 float *out) {
    const Quantize quantize{in.kind, _mm256_set1_ps(in.scale), _mm256_set1_ps(in.levels),
                            _mm256_set1_ps(in.step)};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, quantize(_mm256_loadu_ps(x + i)));
    if (i < n) {
        const __m256i valid = avx2::first_lanes(n - i);
        store_first(out + i, n - i, quantize(_mm256_maskload_ps(x + i, valid)));
    }
}

void sparse_conv2d_tile_avx2(const SparseConvTile &t) {
    sparse_conv_detail::run_tile(t, spmm_csr_halves_to_floats_avx2, spmm_csr_sweep_avx2,
                                 epilogue_avx2);
}

}  // namespace apb
