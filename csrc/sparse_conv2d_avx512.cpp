// sparse_conv2d with AVX-512: spmm_csr's AVX-512 sweep over float phase planes, a twin
// that widens sixteen bytes to floats (vpmovzxbd/vpmovsxbd + vcvtdq2ps) over byte planes,
// and the epilogue and phase-row builders sixteen lanes at a time with masked tails,
// operation for operation as the scalar path. Stride-2 phase rows take every other input with one
// two-register permute instead of a scalar gather. Compiled with -mavx512f (and friends);
// called only when cpu_features().avx512.
#include <type_traits>

#include "simd_avx512.h"
#include "sparse_conv2d.h"

// Full unrolling keeps the accumulators in registers (as in spmm_csr_avx512.cpp).
#define APB_UNROLL _Pragma("GCC unroll 8")

namespace apb {

namespace {

// Lanes [0, n) of sixteen: none for n <= 0, all for n >= 16.
inline __mmask16 first_lanes(int64_t n) {
    if (n <= 0) return 0;
    return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
}

void epilogue_avx512(const void *dot, bool dot_is_float, const ChannelEpilogue &c,
                     const float *acc, int64_t acc_stride, float *out, int64_t rows,
                     int64_t count) {
    const __m512 a = _mm512_set1_ps(c.dot_scale);
    const __m512 g = _mm512_set1_ps(c.sparse_scale);
    const __m512 s = _mm512_set1_ps(c.shift);
    const __m512 lower = _mm512_set1_ps(c.lower), upper = _mm512_set1_ps(c.upper);
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
            __m512 y = _mm512_fmadd_ps(g, _mm512_maskz_loadu_ps(valid, acc + i), base);
            if (c.residual != nullptr) {
                y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(valid, c.residual + row + i));
            }
            // max/min return their second operand when one is NaN: a NaN y stays NaN.
            y = _mm512_min_ps(upper, _mm512_max_ps(lower, y));
            _mm512_mask_storeu_ps(out + i, valid, y);
        }
    }
}

// x^ (units: x^ / unit, the code itself) of sixteen inputs.
__m512 quantize16(__m512 v, const SparseConvInput &in, bool units) {
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
            return units ? code : _mm512_mul_ps(code, _mm512_set1_ps(in.step));
        }
        default: return v;
    }
}

// Lanes `valid` of sixteen quantized values to dst: floats, or bytes (exact integers
// -1..255, truncated to their low byte by vpmovdb, int8 -1 for a negative sign).
inline void store16(float *dst, __mmask16 valid, __m512 v) {
    _mm512_mask_storeu_ps(dst, valid, v);
}
inline void store16(uint8_t *dst, __mmask16 valid, __m512 v) {
    const __m512i codes = _mm512_cvtps_epi32(v);
    // vpmovdb to memory with a mask is slow on AMD cores: narrow in a register and store
    // whole vectors plainly, only a row's last few bytes through the masked form.
    if (valid == 0xffff) {
        _mm_storeu_si128(reinterpret_cast<__m128i *>(dst), _mm512_cvtepi32_epi8(codes));
    } else {
        _mm512_mask_cvtepi32_storeu_epi8(dst, valid, codes);
    }
}

// dst[0, n) = 0, sixteen at a time.
template <typename T>
inline void zeros(T *dst, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) store16(dst + i, first_lanes(n - i), _mm512_setzero_ps());
}

// One phase row (build_phases): dst[k] = x^(src[sw*(k - k_lo)]) on [k_lo, k_hi), 0 on the
// rest of [0, wq). Masked loads read no input past the last one used.
template <typename T>
void phase_row(const float *src, int64_t sw, int64_t k_lo, int64_t k_hi, int64_t wq,
               const SparseConvInput &in, T *dst) {
    constexpr bool kBytes = sizeof(T) == 1;
    zeros(dst, k_lo);
    zeros(dst + k_hi, wq - k_hi);
    const int64_t n = k_hi - k_lo;
    T *d = dst + k_lo;
    if (sw == 1) {
        for (int64_t i = 0; i < n; i += 16) {
            const __mmask16 valid = first_lanes(n - i);
            store16(d + i, valid, quantize16(_mm512_maskz_loadu_ps(valid, src + i), in, kBytes));
        }
    } else if (sw == 2) {
        const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24,
                                               26, 28, 30);
        for (int64_t i = 0; i < n; i += 16) {
            // Outputs i.. read inputs 2i, 2i + 2, ..., the last 2(n - 1).
            const int64_t inputs = 2 * (n - i) - 1;
            const __m512 lo = quantize16(
                _mm512_maskz_loadu_ps(first_lanes(inputs), src + 2 * i), in, kBytes);
            const __m512 hi = quantize16(
                _mm512_maskz_loadu_ps(first_lanes(inputs - 16), src + 2 * i + 16), in, kBytes);
            store16(d + i, first_lanes(n - i), _mm512_permutex2var_ps(lo, even, hi));
        }
    } else {
        for (int64_t k = 0; k < n; ++k) {
            d[k] = sparse_conv_detail::quantize_as<T>(src[sw * k], in);
        }
    }
}

// Sixteen bytes as floats (exact). The load is whole: see kPhaseSlack.
template <typename T>
inline __m512 widen16(const T *p) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i *>(p));
    if constexpr (std::is_signed_v<T>) return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b));
}

// acc[c, c + 16*V) += batch over byte rows (Fresh: =, the chains from 0), whole vectors:
// acc has 16 floats of slack past the tile and the planes kPhaseSlack bytes, and lanes
// past the tile are never kept. One FMA per element and nonzero in batch order.
template <typename T, int V, bool Fresh>
inline void sweep_bytes(const sparse_conv_detail::ByteBatch<T> &batch, float *acc, int64_t c) {
    __m512 sum[V];
    APB_UNROLL for (int q = 0; q < V; ++q) {
        sum[q] = Fresh ? _mm512_setzero_ps() : _mm512_loadu_ps(acc + c + 16 * q);
    }
    for (int64_t k = 0; k < batch.count; ++k) {
        const __m512 v = _mm512_set1_ps(batch.values[k]);
        const T *x = batch.rows[k] + c;
        APB_UNROLL for (int q = 0; q < V; ++q) {
            sum[q] = _mm512_fmadd_ps(v, widen16(x + 16 * q), sum[q]);
        }
    }
    APB_UNROLL for (int q = 0; q < V; ++q) _mm512_storeu_ps(acc + c + 16 * q, sum[q]);
}

// Columns [c0, c1) 128 at a time, the rest in one pass of ceil(n/16) vectors.
template <typename T, bool Fresh>
void sweep_bytes_columns(const sparse_conv_detail::ByteBatch<T> &batch, float *acc, int64_t c0,
                         int64_t c1) {
    int64_t c = c0;
    for (; c + 128 <= c1; c += 128) sweep_bytes<T, 8, Fresh>(batch, acc, c);
    if (c >= c1) return;
    switch ((c1 - c + 15) / 16) {
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

void sparse_conv2d_build_avx512(const float *x, const Conv2dGeometry &g, const PhaseLayout &p,
                                const SparseConvInput &in, int64_t bc, float *phases) {
    sparse_conv_detail::build_phases(
        x, g, p, bc, phases,
        [&](const float *src, int64_t sw, int64_t k_lo, int64_t k_hi, int64_t wq, float *dst) {
            phase_row(src, sw, k_lo, k_hi, wq, in, dst);
        });
}

void sparse_conv2d_build_bytes_avx512(const float *x, const Conv2dGeometry &g,
                                      const PhaseLayout &p, const SparseConvInput &in,
                                      int64_t bc, uint8_t *phases) {
    if (sparse_conv_detail::contiguous_phase_plane(g, p)) {
        sparse_conv_detail::build_contiguous_plane<16>(
            x, g, p, bc, phases,
            [&](const float *src, int64_t count) {
                const __m512 v = _mm512_maskz_loadu_ps(first_lanes(count), src);
                return _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(quantize16(v, in, true)));
            },
            [](uint8_t *dst, __m128i codes, int64_t first, int64_t count) {
                if (count == 16) {
                    _mm_storeu_si128(reinterpret_cast<__m128i *>(dst), codes);
                } else {
                    // Lanes [first, first + count) of a store at dst - first: the lanes
                    // outside the mask are not touched.
                    _mm_mask_storeu_epi8(dst - first,
                                         static_cast<__mmask16>(first_lanes(count) << first),
                                         codes);
                }
            });
        return;
    }
    sparse_conv_detail::build_phases(
        x, g, p, bc, phases,
        [&](const float *src, int64_t sw, int64_t k_lo, int64_t k_hi, int64_t wq,
            uint8_t *dst) { phase_row(src, sw, k_lo, k_hi, wq, in, dst); });
}

void sparse_conv2d_tile_avx512(const SparseConvTile &t) {
    using sparse_conv_detail::run_tile;
    const auto halves = spmm_csr_halves_to_floats_avx512;
    switch (t.type) {
        case PhaseType::u8:
            return run_tile<uint8_t>(t, halves, sweep_bytes_columns<uint8_t, false>,
                                     sweep_bytes_columns<uint8_t, true>, epilogue_avx512);
        case PhaseType::i8:
            return run_tile<int8_t>(t, halves, sweep_bytes_columns<int8_t, false>,
                                    sweep_bytes_columns<int8_t, true>, epilogue_avx512);
        default:
            return run_tile<float>(t, halves, spmm_csr_sweep_avx512, spmm_csr_sweep_fresh_avx512,
                                   epilogue_avx512);
    }
}

}  // namespace apb
