// sparse_conv2d with AVX2: spmm_csr's AVX2 sweep (64 outputs in 8 ymm accumulators per
// batch of nonzeros) over float phase planes, a twin that widens eight bytes to floats
// (vpmovzxbd/vpmovsxbd + vcvtdq2ps) over byte planes, and the epilogue and phase-row
// builders eight lanes at a time, operation for operation as the scalar path. Compiled with -mavx2
// -mfma; called only when cpu_features().avx2 is true.
#include <immintrin.h>

#include <type_traits>

#include "simd_avx2.h"
#include "sparse_conv2d.h"

// Full unrolling keeps the accumulators in registers (as in spmm_csr_avx2.cpp).
#define APB_UNROLL _Pragma("GCC unroll 8")

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

// y + residual (lanes `valid` read), then the bounds: see SparseConvEpilogue. max/min
// return their second operand when one is NaN, so a NaN y stays NaN.
inline __m256 finish8(__m256 y, const ChannelEpilogue &c, int64_t i, __m256i valid, bool full) {
    if (c.residual != nullptr) {
        y = _mm256_add_ps(y, full ? _mm256_loadu_ps(c.residual + i)
                                  : _mm256_maskload_ps(c.residual + i, valid));
    }
    return _mm256_min_ps(_mm256_set1_ps(c.upper), _mm256_max_ps(_mm256_set1_ps(c.lower), y));
}

void epilogue_avx2(const void *dot, bool dot_is_float, const ChannelEpilogue &c,
                   const float *acc, int64_t acc_stride, float *out, int64_t rows,
                   int64_t count) {
    const __m256 a = _mm256_set1_ps(c.dot_scale);
    const __m256 g = _mm256_set1_ps(c.sparse_scale);
    const __m256 s = _mm256_set1_ps(c.shift);
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
            _mm256_storeu_ps(out + i, finish8(_mm256_fmadd_ps(g, _mm256_loadu_ps(acc + i), base),
                                              c, row + i, all, true));
        }
        if (i < count) {  // the run's last vector
            const __m256i valid = avx2::first_lanes(total - row - i);
            const __m256 base =
                dot == nullptr
                    ? s
                    : _mm256_fmadd_ps(a, load_dot(dot, dot_is_float, row + i, valid, false), s);
            store_first(out + i, total - row - i,
                        finish8(_mm256_fmadd_ps(g, _mm256_maskload_ps(acc + i, valid), base),
                                c, row + i, valid, false));
        }
    }
}

// x^ of eight inputs: the quantizers of sparse_conv_detail::quantize_input.
// With units, codes stay codes (x^ / step, for the byte planes).
struct Quantize {
    InputQuantizer kind;
    __m256 scale, levels, step;
    bool units;

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
                return units ? code : _mm256_mul_ps(code, step);
            }
            default: return v;
        }
    }
};

// Eight quantized values as bytes: exact integers -1..255, narrowed to int16 (exact) and
// then to their low bytes (int8 -1 for a negative sign), in the low 8 bytes.
inline __m128i to_bytes(__m256 v) {
    const __m256i i = _mm256_cvtps_epi32(v);
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
    return _mm_shuffle_epi8(w, _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, -1, -1, -1, -1, -1, -1,
                                             -1, -1));
}

// The first n <= 8 of eight quantized values to dst, floats or bytes.
inline void store8(float *dst, int64_t n, __m256 v) {
    if (n >= 8) {
        _mm256_storeu_ps(dst, v);
    } else {
        store_first(dst, n, v);
    }
}
inline void store8(uint8_t *dst, int64_t n, __m256 v) {
    const __m128i b = to_bytes(v);
    if (n >= 8) {
        _mm_storel_epi64(reinterpret_cast<__m128i *>(dst), b);
    } else {
        alignas(16) uint8_t lanes[16];
        _mm_store_si128(reinterpret_cast<__m128i *>(lanes), b);
        for (int64_t i = 0; i < n; ++i) dst[i] = lanes[i];
    }
}

// dst[0, n) = 0.
template <typename T>
inline void zeros(T *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) store8(dst + i, 8, _mm256_setzero_ps());
    for (; i < n; ++i) dst[i] = 0;
}

// Inputs [0, n) of src as eight lanes (n may be <= 0 or >= 8), none past them read.
inline __m256 load_first(const float *src, int64_t n) {
    if (n >= 8) return _mm256_loadu_ps(src);
    return _mm256_maskload_ps(src, avx2::first_lanes(n < 0 ? 0 : n));
}

// One phase row (build_phases): dst[k] = x^(src[sw*(k - k_lo)]) on [k_lo, k_hi), 0 on the
// rest of [0, wq). Stride 2 takes the even lanes of two quantized registers with a
// shuffle and a 64-bit permute instead of a scalar gather.
template <typename T>
void phase_row(const float *src, int64_t sw, int64_t k_lo, int64_t k_hi, int64_t wq,
               const SparseConvInput &in, const Quantize &quantize, T *dst) {
    zeros(dst, k_lo);
    zeros(dst + k_hi, wq - k_hi);
    const int64_t n = k_hi - k_lo;
    T *d = dst + k_lo;
    if (sw == 1) {
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) store8(d + i, 8, quantize(_mm256_loadu_ps(src + i)));
        if (i < n) store8(d + i, n - i, quantize(load_first(src + i, n - i)));
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
            store8(d + i, n - i, even);
        }
    } else {
        for (int64_t k = 0; k < n; ++k) {
            d[k] = sparse_conv_detail::quantize_as<T>(src[sw * k], in);
        }
    }
}

// Eight bytes as floats (exact). The load is whole: see kPhaseSlack.
template <typename T>
inline __m256 widen8(const T *p) {
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i *>(p));
    if constexpr (std::is_signed_v<T>) return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
}

// acc[c, c + 8*V) += batch over byte rows (Fresh: =, the chains from 0), whole vectors:
// acc has 16 floats of slack past the tile and the planes kPhaseSlack bytes, and lanes
// past the tile are never kept. One FMA per element and nonzero in batch order.
template <typename T, int V, bool Fresh>
inline void sweep_bytes(const sparse_conv_detail::ByteBatch<T> &batch, float *acc, int64_t c) {
    __m256 sum[V];
    APB_UNROLL for (int q = 0; q < V; ++q) {
        sum[q] = Fresh ? _mm256_setzero_ps() : _mm256_loadu_ps(acc + c + 8 * q);
    }
    for (int64_t k = 0; k < batch.count; ++k) {
        const __m256 v = _mm256_set1_ps(batch.values[k]);
        const T *x = batch.rows[k] + c;
        APB_UNROLL for (int q = 0; q < V; ++q) {
            sum[q] = _mm256_fmadd_ps(v, widen8(x + 8 * q), sum[q]);
        }
    }
    APB_UNROLL for (int q = 0; q < V; ++q) _mm256_storeu_ps(acc + c + 8 * q, sum[q]);
}

// Columns [c0, c1) 64 at a time, the rest in one pass of ceil(n/8) vectors.
template <typename T, bool Fresh>
void sweep_bytes_columns(const sparse_conv_detail::ByteBatch<T> &batch, float *acc, int64_t c0,
                         int64_t c1) {
    int64_t c = c0;
    for (; c + 64 <= c1; c += 64) sweep_bytes<T, 8, Fresh>(batch, acc, c);
    if (c >= c1) return;
    switch ((c1 - c + 7) / 8) {
        case 1: return sweep_bytes<T, 1, Fresh>(batch, acc, c);
        case 2: return sweep_bytes<T, 2, Fresh>(batch, acc, c);
        case 3: return sweep_bytes<T, 3, Fresh>(batch, acc, c);
        case 4: return sweep_bytes<T, 4, Fresh>(batch, acc, c);
        case 5: return sweep_bytes<T, 5, Fresh>(batch, acc, c);
        case 6: return sweep_bytes<T, 6, Fresh>(batch, acc, c);
        case 7: return sweep_bytes<T, 7, Fresh>(batch, acc, c);
        default: return sweep_bytes<T, 8, Fresh>(batch, acc, c);
    }
}

}  // namespace

void sparse_conv2d_build_avx2(const float *x, const Conv2dGeometry &g, const PhaseLayout &p,
                              const SparseConvInput &in, int64_t bc, float *phases) {
    const Quantize quantize{in.kind, _mm256_set1_ps(in.scale), _mm256_set1_ps(in.levels),
                            _mm256_set1_ps(in.step), false};
    sparse_conv_detail::build_phases(
        x, g, p, bc, phases,
        [&](const float *src, int64_t sw, int64_t k_lo, int64_t k_hi, int64_t wq, float *dst) {
            phase_row(src, sw, k_lo, k_hi, wq, in, quantize, dst);
        });
}

void sparse_conv2d_build_bytes_avx2(const float *x, const Conv2dGeometry &g,
                                    const PhaseLayout &p, const SparseConvInput &in,
                                    int64_t bc, uint8_t *phases) {
    const Quantize quantize{in.kind, _mm256_set1_ps(in.scale), _mm256_set1_ps(in.levels),
                            _mm256_set1_ps(in.step), true};
    if (sparse_conv_detail::contiguous_phase_plane(g, p)) {
        sparse_conv_detail::build_contiguous_plane<8>(
            x, g, p, bc, phases,
            [&](const float *src, int64_t count) {
                return to_bytes(quantize(load_first(src, count)));
            },
            [](uint8_t *dst, __m128i codes, int64_t first, int64_t count) {
                if (count == 8) {
                    _mm_storel_epi64(reinterpret_cast<__m128i *>(dst), codes);
                    return;
                }
                alignas(16) uint8_t lanes[16];
                _mm_store_si128(reinterpret_cast<__m128i *>(lanes), codes);
                for (int64_t i = 0; i < count; ++i) dst[i] = lanes[first + i];
            });
        return;
    }
    sparse_conv_detail::build_phases(
        x, g, p, bc, phases,
        [&](const float *src, int64_t sw, int64_t k_lo, int64_t k_hi, int64_t wq,
            uint8_t *dst) { phase_row(src, sw, k_lo, k_hi, wq, in, quantize, dst); });
}

void sparse_conv2d_tile_avx2(const SparseConvTile &t) {
    using sparse_conv_detail::run_tile;
    const auto halves = spmm_csr_halves_to_floats_avx2;
    switch (t.type) {
        case PhaseType::u8:
            return run_tile<uint8_t>(t, halves, sweep_bytes_columns<uint8_t, false>,
                                     sweep_bytes_columns<uint8_t, true>, epilogue_avx2);
        case PhaseType::i8:
            return run_tile<int8_t>(t, halves, sweep_bytes_columns<int8_t, false>,
                                    sweep_bytes_columns<int8_t, true>, epilogue_avx2);
        default:
            return run_tile<float>(t, halves, spmm_csr_sweep_avx2, spmm_csr_sweep_fresh_avx2,
                                   epilogue_avx2);
    }
}

}  // namespace apb
