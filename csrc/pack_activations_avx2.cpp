// Activation packing with AVX2. Compiled with -mavx2; called only when
// cpu_features().avx2 is true.
//
// Rows (Linear): eight consecutive columns per vector; each plane's eight bits come
// out of one movemask and go straight into the word.
// im2col (convolution): a kernel tap's inputs are contiguous across output positions,
// not across columns (only kw of them are), so the vectors run over eight consecutive
// positions ox of one output row instead. For each column the eight positions' bits
// are one byte per plane; 64 columns' bytes are then transposed into the eight
// positions' words with shift + movemask (bit i of every byte -> one 32-bit mask).
#include <immintrin.h>

#include <cstdint>

#include "pack_activations.h"
#include "simd_avx2.h"

namespace apb {

namespace {

using pack_activations_detail::tap;

// The `x < 0` rule of pack_signs on the bit pattern, as a signed-integer range test
// (strictly between -0.0 = INT32_MIN and the first negative NaN): all-ones lanes.
inline __m256i negative_lanes(__m256 v) {
    const __m256i bits = _mm256_castps_si256(v);
    return _mm256_and_si256(
        _mm256_cmpgt_epi32(bits, _mm256_set1_epi32(static_cast<int32_t>(0x80000000u))),
        _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(0xff800001u)), bits));
}

// The codes of the quantizer of pack_activations.h, operation for operation.
inline __m256i quantize_codes(__m256 v, __m256 scale, __m256 levels) {
    // max/min return their second operand when the first is NaN: NaN -> 0.
    v = _mm256_max_ps(v, _mm256_setzero_ps());
    v = _mm256_min_ps(v, scale);
    const __m256 q = _mm256_mul_ps(_mm256_div_ps(v, scale), levels);
    return _mm256_cvtps_epi32(_mm256_round_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// Sign plane: negative_lanes as one movemask.
struct SignPlanes {
    int count() const { return 1; }

    void operator()(__m256 v, uint32_t *masks) const {
        const __m256 negative = _mm256_castsi256_ps(negative_lanes(v));
        masks[0] = static_cast<uint32_t>(_mm256_movemask_ps(negative));
    }
};

// Code planes: the quantizer of pack_activations.h, operation for operation.
struct CodePlanes {
    __m256 scale;
    __m256 levels;
    int planes;

    explicit CodePlanes(const ActivationQuantizer &q)
        : scale(_mm256_set1_ps(q.scale)), levels(_mm256_set1_ps(q.levels)), planes(q.planes) {}

    int count() const { return planes; }

    void operator()(__m256 v, uint32_t *masks) const {
        const __m256i code = quantize_codes(v, scale, levels);
        for (int p = 0; p < planes; ++p) {
            const __m256i top = _mm256_sll_epi32(code, _mm_cvtsi32_si128(31 - p));
            masks[p] = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(top)));
        }
    }
};

template <typename Planes>
void quantize_row(const float *x, int64_t K, const Planes &planes, uint64_t *out,
                  int64_t plane_stride) {
    const int count = planes.count();
    const int64_t words = (K + 63) / 64;
    for (int64_t w = 0; w < words; ++w) {
        const int64_t base = 64 * w;
        const int64_t n = K - base < 64 ? K - base : 64;
        uint64_t word[8] = {};
        uint32_t masks[8];
        for (int64_t j = 0; j < n; j += 8) {
            // The masked load reads nothing past x[K-1]; its zero lanes give bit 0.
            const __m256 v = n - j >= 8
                                 ? _mm256_loadu_ps(x + base + j)
                                 : _mm256_maskload_ps(x + base + j, avx2::first_lanes(n - j));
            planes(v, masks);
            for (int p = 0; p < count; ++p) word[p] |= static_cast<uint64_t>(masks[p]) << j;
        }
        for (int p = 0; p < count; ++p) out[p * plane_stride + w] = word[p];
    }
}

// Where kernel tap dx reads, for a group of eight output positions ox0 .. ox0+7 (lanes
// at and past `lanes` are unused): input column ix0 + i*stride for lane i, valid for
// lanes [first, last) and zero padding elsewhere. The range is contiguous because the
// column grows with i.
struct TapLanes {
    int64_t ix0;
    bool all_valid;
    bool none_valid;
    __m256i valid;  // lanes [first, last) all ones
};

inline TapLanes tap_lanes(int64_t ix0, int64_t stride, int64_t lanes, int64_t width) {
    // first: smallest i with ix0 + i*stride >= 0; last: smallest i with it >= width.
    const auto lanes_below = [&](int64_t limit) {
        const int64_t i = limit <= ix0 ? 0 : (limit - ix0 + stride - 1) / stride;
        return i < lanes ? i : lanes;
    };
    const int64_t first = lanes_below(0);
    const int64_t last = lanes_below(width);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i valid =
        _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(first)), lane),
                            _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(last)), lane));
    return TapLanes{ix0, first == 0 && last == 8, first >= last, valid};
}

// The eight positions' inputs of one tap from one input row `line`, 0 in invalid lanes.
// Masked loads and gathers never touch the memory of a masked-off lane, so padding is
// never read; `offsets` holds i*stride as int32 (exact for every valid lane: its column
// is < width < 2^31, and int32 lane arithmetic wraps the same way for the others).
inline __m256 load_tap(const float *line, const TapLanes &t, int64_t stride, __m256i offsets) {
    if (t.none_valid) return _mm256_setzero_ps();
    if (stride == 1) {
        // Address arithmetic in integers: line + ix0 may lie before the row.
        const float *at = reinterpret_cast<const float *>(
            reinterpret_cast<uintptr_t>(line) + static_cast<uintptr_t>(t.ix0 * 4));
        return t.all_valid ? _mm256_loadu_ps(at) : _mm256_maskload_ps(at, t.valid);
    }
    const __m256i columns =
        _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(t.ix0))),
                         offsets);
    if (t.all_valid) return _mm256_i32gather_ps(line, columns, 4);
    return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), line, columns,
                                    _mm256_castsi256_ps(t.valid), 4);
}

// bytes[p][j]: bit i is plane p of position i, column j of the word. Writes word `w`
// of positions 0 .. lanes-1, whose rows start at out_rows.
inline void transpose_store(const uint8_t (*bytes)[64], int planes, int64_t lanes,
                            uint64_t *out_rows, int64_t words, int64_t w, int64_t plane_stride) {
    for (int p = 0; p < planes; ++p) {
        const __m256i lo = _mm256_load_si256(reinterpret_cast<const __m256i *>(bytes[p]));
        const __m256i hi = _mm256_load_si256(reinterpret_cast<const __m256i *>(bytes[p] + 32));
        for (int64_t i = 0; i < lanes; ++i) {
            // Shifting each 64-bit lane left by 7 - i < 8 brings bit i of every byte to
            // its bit 7 without crossing into the next byte.
            const __m128i shift = _mm_cvtsi32_si128(static_cast<int>(7 - i));
            const uint32_t low =
                static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_sll_epi64(lo, shift)));
            const uint32_t high =
                static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_sll_epi64(hi, shift)));
            out_rows[p * plane_stride + i * words + w] = low | static_cast<uint64_t>(high) << 32;
        }
    }
}

constexpr int64_t kCachedTaps = 16;

template <typename Planes>
void im2col_row(const float *x, const Conv2dGeometry &g, const Planes &planes, int64_t row,
                uint64_t *out, int64_t plane_stride) {
    const int count = planes.count();
    const int64_t b = row / g.out_h;
    const int64_t oy = row % g.out_h;
    const int64_t words = g.words();
    const __m256i offsets = _mm256_mullo_epi32(
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        _mm256_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(g.stride_w))));
    // The taps of the current group, cached for ordinary kernel widths (no allocation
    // here: this runs inside the parallel region, where an exception cannot escape).
    TapLanes cached[kCachedTaps];
    const bool cache = g.kernel_w <= kCachedTaps;
    alignas(32) uint8_t bytes[8][64];
    uint32_t masks[8];
    for (int64_t ox0 = 0; ox0 < g.out_w; ox0 += 8) {
        const int64_t lanes = g.out_w - ox0 < 8 ? g.out_w - ox0 : 8;
        const auto lanes_of = [&](int64_t dx) {
            return tap_lanes(tap(ox0, g.stride_w, g.pad_w, dx, g.dilation_w), g.stride_w, lanes,
                             g.width);
        };
        for (int64_t dx = 0; cache && dx < g.kernel_w; ++dx) cached[dx] = lanes_of(dx);
        uint64_t *out_rows = out + (row * g.out_w + ox0) * words;
        int64_t j = 0;  // column within the current word
        int64_t w = 0;
        const auto push = [&](__m256 v) {
            planes(v, masks);
            for (int p = 0; p < count; ++p) bytes[p][j] = static_cast<uint8_t>(masks[p]);
            if (++j == 64) {
                transpose_store(bytes, count, lanes, out_rows, words, w++, plane_stride);
                j = 0;
            }
        };
        for (int64_t c = 0; c < g.channels; ++c) {
            for (int64_t dy = 0; dy < g.kernel_h; ++dy) {
                const int64_t iy = tap(oy, g.stride_h, g.pad_h, dy, g.dilation_h);
                if (iy < 0 || iy >= g.height) {
                    for (int64_t dx = 0; dx < g.kernel_w; ++dx) push(_mm256_setzero_ps());
                    continue;
                }
                const float *line = x + ((b * g.channels + c) * g.height + iy) * g.width;
                for (int64_t dx = 0; dx < g.kernel_w; ++dx) {
                    push(load_tap(line, cache ? cached[dx] : lanes_of(dx), g.stride_w, offsets));
                }
            }
        }
        if (j > 0) {
            // Columns past K in the last word are padding: bit 0.
            for (int p = 0; p < count; ++p) {
                for (int64_t k = j; k < 64; ++k) bytes[p][k] = 0;
            }
            transpose_store(bytes, count, lanes, out_rows, words, w, plane_stride);
        }
    }
}

// Pixels (hwc im2col): eight consecutive pixels per vector, one vector per channel
// (contiguous in [B, C, H, W]), so no transposition is needed: each channel's bit of
// plane p is shifted into place in eight 32-bit lanes, channels 0..31 of the word in
// `low`, 32..63 in `high`, and the two are interleaved into the eight pixels' words.
// Planes is a compile-time count so that the accumulators stay in registers.
// Channels [c_begin, c_end) (at most 32) of eight pixels: bit c - c_begin of each lane
// of acc[p] is plane p of channel c. Separate from the caller's other half so that the
// Planes accumulators stay in registers.
template <int Planes, typename Bits>
inline void pixel_bits(const float *src, int64_t channel_stride, int64_t c_begin,
                       int64_t c_end, int64_t lanes, __m256i valid, const Bits &bits,
                       __m256i *acc) {
    _Pragma("GCC unroll 8") for (int p = 0; p < Planes; ++p) acc[p] = _mm256_setzero_si256();
    for (int64_t c = c_begin; c < c_end; ++c) {
        // The masked load reads nothing past pixel p1 - 1; zero lanes are unused.
        const float *at = src + c * channel_stride;
        const __m256 v = lanes == 8 ? _mm256_loadu_ps(at) : _mm256_maskload_ps(at, valid);
        __m256i plane_bits[Planes];
        bits(v, plane_bits);
        const __m128i shift = _mm_cvtsi32_si128(static_cast<int>(c - c_begin));
        _Pragma("GCC unroll 8") for (int p = 0; p < Planes; ++p) {
            acc[p] = _mm256_or_si256(acc[p], _mm256_sll_epi32(plane_bits[p], shift));
        }
    }
}

template <int Planes, typename Bits>
void pack_pixels_impl(const float *x, int64_t channels, int64_t pixels, const Bits &bits,
                      int64_t b, int64_t p0, int64_t p1, uint64_t *out, int64_t plane_stride) {
    const int64_t words = (channels + 63) / 64;
    const float *image = x + b * channels * pixels;
    uint64_t *image_out = out + b * pixels * words;
    alignas(32) uint64_t lanes_out[Planes][8];
    for (int64_t i0 = p0; i0 < p1; i0 += 8) {
        const int64_t lanes = p1 - i0 < 8 ? p1 - i0 : 8;
        const __m256i valid = avx2::first_lanes(lanes);
        for (int64_t w = 0; w < words; ++w) {
            const int64_t c0 = 64 * w;
            const int64_t count = channels - c0 < 64 ? channels - c0 : 64;
            __m256i low[Planes], high[Planes];
            const int64_t split = count < 32 ? count : 32;
            pixel_bits<Planes>(image + c0 * pixels + i0, pixels, 0, split, lanes, valid, bits,
                               low);
            pixel_bits<Planes>(image + c0 * pixels + i0, pixels, split, count, lanes, valid,
                               bits, high);
            for (int p = 0; p < Planes; ++p) {
                // Lanes (low_i, high_i) -> 64-bit words, pixel order restored across
                // the two 128-bit halves.
                const __m256i a = _mm256_unpacklo_epi32(low[p], high[p]);  // 0 1 | 4 5
                const __m256i c = _mm256_unpackhi_epi32(low[p], high[p]);  // 2 3 | 6 7
                _mm256_store_si256(reinterpret_cast<__m256i *>(lanes_out[p]),
                                   _mm256_permute2x128_si256(a, c, 0x20));
                _mm256_store_si256(reinterpret_cast<__m256i *>(lanes_out[p] + 4),
                                   _mm256_permute2x128_si256(a, c, 0x31));
                uint64_t *dst = image_out + p * plane_stride + i0 * words + w;
                for (int64_t i = 0; i < lanes; ++i) dst[i * words] = lanes_out[p][i];
            }
        }
    }
}

// Bit 0 of each lane: plane p of the code (or the sign bit).
struct SignBits {
    void operator()(__m256 v, __m256i *out) const {
        out[0] = _mm256_srli_epi32(negative_lanes(v), 31);
    }
};

template <int Planes>
struct CodeBits {
    __m256 scale;
    __m256 levels;

    void operator()(__m256 v, __m256i *out) const {
        const __m256i code = quantize_codes(v, scale, levels);
        const __m256i one = _mm256_set1_epi32(1);
        _Pragma("GCC unroll 8") for (int p = 0; p < Planes; ++p) {
            out[p] = _mm256_and_si256(_mm256_srli_epi32(code, p), one);
        }
    }
};

template <int Planes>
void pack_code_pixels(const float *x, int64_t channels, int64_t pixels,
                      const ActivationQuantizer &q, int64_t b, int64_t p0, int64_t p1,
                      uint64_t *out, int64_t plane_stride) {
    const CodeBits<Planes> bits{_mm256_set1_ps(q.scale), _mm256_set1_ps(q.levels)};
    pack_pixels_impl<Planes>(x, channels, pixels, bits, b, p0, p1, out, plane_stride);
}

}  // namespace

void im2col_pack_row_avx2(const float *x, const Conv2dGeometry &g,
                          const ActivationQuantizer &q, int64_t row, uint64_t *out,
                          int64_t plane_stride) {
    if (q.signs) {
        im2col_row(x, g, SignPlanes{}, row, out, plane_stride);
    } else {
        im2col_row(x, g, CodePlanes(q), row, out, plane_stride);
    }
}

void quantize_pack_row_avx2(const float *x, int64_t K, const ActivationQuantizer &q,
                            int64_t n, uint64_t *out, int64_t plane_stride) {
    uint64_t *row_out = out + n * ((K + 63) / 64);
    if (q.signs) {
        quantize_row(x + n * K, K, SignPlanes{}, row_out, plane_stride);
    } else {
        quantize_row(x + n * K, K, CodePlanes(q), row_out, plane_stride);
    }
}

void pack_pixels_avx2(const float *x, int64_t channels, int64_t pixels,
                      const ActivationQuantizer &q, int64_t b, int64_t p0, int64_t p1,
                      uint64_t *out, int64_t plane_stride) {
    if (q.signs) {
        pack_pixels_impl<1>(x, channels, pixels, SignBits{}, b, p0, p1, out, plane_stride);
        return;
    }
    using Fn = void (*)(const float *, int64_t, int64_t, const ActivationQuantizer &, int64_t,
                        int64_t, int64_t, uint64_t *, int64_t);
    static constexpr Fn by_planes[8] = {pack_code_pixels<1>, pack_code_pixels<2>,
                                        pack_code_pixels<3>, pack_code_pixels<4>,
                                        pack_code_pixels<5>, pack_code_pixels<6>,
                                        pack_code_pixels<7>, pack_code_pixels<8>};
    by_planes[q.planes - 1](x, channels, pixels, q, b, p0, p1, out, plane_stride);
}

}  // namespace apb
