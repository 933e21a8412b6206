// sparse_conv2d with AVX2: spmm_csr's AVX2 sweep (64 outputs in 8 ymm accumulators per
// batch of nonzeros) over the phase planes, and the epilogue and phase-row builder eight
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
                   float shift, const float *acc, int64_t acc_stride, float *out, int64_t rows,
                   int64_t count) {
    const __m256 a = _mm256_set1_ps(dot_scale);
    const __m256 g = _mm256_set1_ps(sparse_scale);
    const __m256 s = _mm256_set1_ps(shift);
    const __m256i all = _mm256_set1_epi32(-1);
    // Lanes past a row's end run into the next rows of the run (written after, so they
    // end right): only the run's last vector is partial.
    const int64_t total = rows * count;
    for (int64_t r = 0; r < rows; ++r, acc += acc_stride, out += count) {
        const int64_t row = r * count;  // this row's first dot value
        // Whole vectors while one starts in this row and ends in the run.
        const int64_t stop = total - row < count + 7 ? total - row : count + 7;
        int64_t i = 0;
        for (; i + 8 <= stop; i += 8) {
            const __m256 base =
                dot == nullptr
                    ? s
                    : _mm256_fmadd_ps(a, load_dot(dot, dot_is_float, row + i, all, true), s);
            _mm256_storeu_ps(out + i, _mm256_fmadd_ps(g, _mm256_loadu_ps(acc + i), base));
        }
        if (i < count) {  // the run's last vector
            const __m256i valid = avx2::first_lanes(total - row - i);
            const __m256 base =
                dot == nullptr
                    ? s
                    : _mm256_fmadd_ps(a, load_dot(dot, dot_is_float, row + i, valid, false), s);
            store_first(out + i, total - row - i,
                        _mm256_fmadd_ps(g, _mm256_maskload_ps(acc + i, valid), base));
        }
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

// dst[0, n) = 0.
inline void zeros(float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_setzero_ps());
    for (; i < n; ++i) dst[i] = 0.0f;
}

// Inputs [0, n) of src as eight lanes (n may be <= 0 or >= 8), none past them read.
inline __m256 load_first(const float *src, int64_t n) {
    if (n >= 8) return _mm256_loadu_ps(src);
    return _mm256_maskload_ps(src, avx2::first_lanes(n < 0 ? 0 : n));
}

// One phase row (build_phases): dst[k] = x^(src[sw*(k - k_lo)]) on [k_lo, k_hi), 0 on the
// rest of [0, wq). Stride 2 takes the even lanes of two quantized registers with a
// shuffle and a 64-bit permute instead of a scalar gather.
void phase_row(const float *src, int64_t sw, int64_t k_lo, int64_t k_hi, int64_t wq,
               const SparseConvInput &in, const Quantize &quantize, float *dst) {
    zeros(dst, k_lo);
    zeros(dst + k_hi, wq - k_hi);
    const int64_t n = k_hi - k_lo;
    float *d = dst + k_lo;
    if (sw == 1) {
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, quantize(_mm256_loadu_ps(src + i)));
        if (i < n) store_first(d + i, n - i, quantize(load_first(src + i, n - i)));
    } else if (sw == 2) {
        for (int64_t i = 0; i < n; i += 8) {
            // Outputs i.. read inputs 2i, 2i + 2, ..., the last 2(n - 1).
            const int64_t inputs = 2 * (n - i) - 1;
            const __m256 lo = quantize(load_first(src + 2 * i, inputs));
            const __m256 hi = quantize(load_first(src + 2 * i + 8, inputs - 8));
            // [lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6] -> [lo0 lo2 lo4 lo6 hi0 hi2 hi4 hi6]
            const __m256 mixed = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
            const __m256 even = _mm256_castpd_ps(
                _mm256_permute4x64_pd(_mm256_castps_pd(mixed), _MM_SHUFFLE(3, 1, 2, 0)));
            if (n - i >= 8) {
                _mm256_storeu_ps(d + i, even);
            } else {
                store_first(d + i, n - i, even);
            }
        }
    } else {
        for (int64_t k = 0; k < n; ++k) d[k] = sparse_conv_detail::quantize_input(src[sw * k], in);
    }
}

}  // namespace

void sparse_conv2d_build_avx2(const float *x, const Conv2dGeometry &g, const PhaseLayout &p,
                              const SparseConvInput &in, int64_t bc, float *phases) {
    const Quantize quantize{in.kind, _mm256_set1_ps(in.scale), _mm256_set1_ps(in.levels),
                            _mm256_set1_ps(in.step)};
    sparse_conv_detail::build_phases(
        x, g, p, bc, phases,
        [&](const float *src, int64_t sw, int64_t k_lo, int64_t k_hi, int64_t wq, float *dst) {
            phase_row(src, sw, k_lo, k_hi, wq, in, quantize, dst);
        });
}

void sparse_conv2d_tile_avx2(const SparseConvTile &t) {
    sparse_conv_detail::run_tile(t, spmm_csr_halves_to_floats_avx2, spmm_csr_sweep_avx2,
                                 spmm_csr_sweep_fresh_avx2,
                                 epilogue_avx2);
}

}  // namespace apb
