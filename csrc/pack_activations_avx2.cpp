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
#include <cstring>

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

// Pixels (hwc im2col): sixteen consecutive pixels per step, two vectors per channel
// (contiguous in [B, C, H, W]), so no transposition is needed: each plane's bits are
// all-ones lanes (masks), shifted into 32-bit accumulators channel by channel,
// channels 0..31 of a word in `low`, 32..63 in `high`, then interleaved into the
// pixels' words. Sixteen pixels are one cache line of each channel: with the channels
// 4 KiB apart (a 32 x 32 image) all of them fall in one L1 set, and eight pixels per
// step fetched every line twice. Planes is a compile-time count so that the
// accumulators stay in registers.
constexpr int64_t kPixelStep = 16;

// Channels [c_begin, c_end) (at most 32) of pixels [0, lanes) of the step: bit
// c - c_begin of lane i of acc[i / 8][p] is plane p of channel c of pixel i. Channels
// run downwards, so that doubling an accumulator and subtracting the mask (-1 where
// the bit is set) is the whole update.
template <int Planes, typename Bits>
inline void pixel_bits(const float *src, int64_t channel_stride, int64_t c_begin,
                       int64_t c_end, int64_t lanes, const Bits &bits, __m256i (*acc)[Planes]) {
    // Masked loads read nothing past pixel p1 - 1 (an empty mask reads nothing at all).
    const __m256i valid[2] = {avx2::first_lanes(lanes), avx2::first_lanes(lanes - 8)};
    // Local accumulators, stored to acc once at the end: updated through the pointer,
    // they went through the stack at every channel (im2col of 64 x 8 x 8 images at batch
    // 64, one thread, in C++: 1.76 -> 1.19 us an image; 16 and 32 channels unchanged).
    __m256i sum[2][Planes];
    _Pragma("GCC unroll 8") for (int p = 0; p < Planes; ++p) {
        sum[0][p] = _mm256_setzero_si256();
        sum[1][p] = _mm256_setzero_si256();
    }
    for (int64_t c = c_end - 1; c >= c_begin; --c) {
        const float *at = src + c * channel_stride;
        // Each channel is its own stream, more streams than the hardware prefetcher
        // follows on wide layers: fetch this channel's line four steps ahead (batch 64,
        // 128 x 32 x 32 and 256 x 16 x 16: 1.6x faster; no change at 16 to 64 channels,
        // eight steps ahead no better; docs/performance.md). A prefetch never faults.
        _mm_prefetch(reinterpret_cast<const char *>(at + 4 * kPixelStep), _MM_HINT_T0);
        _Pragma("GCC unroll 2") for (int h = 0; h < 2; ++h) {
            const __m256 v = lanes == kPixelStep ? _mm256_loadu_ps(at + 8 * h)
                                                 : _mm256_maskload_ps(at + 8 * h, valid[h]);
            __m256i masks[Planes];
            bits(v, masks);
            _Pragma("GCC unroll 8") for (int p = 0; p < Planes; ++p) {
                sum[h][p] = _mm256_sub_epi32(_mm256_add_epi32(sum[h][p], sum[h][p]), masks[p]);
            }
        }
    }
    _Pragma("GCC unroll 8") for (int p = 0; p < Planes; ++p) {
        acc[0][p] = sum[0][p];
        acc[1][p] = sum[1][p];
    }
}

// The byte offsets (in a plane) of pixels i0 .. i0 + lanes - 1 as `layout` places
// them, advancing the input row and column of pixel i0 (`y`, `col`).
inline void pixel_offsets(const PixelLayout &layout, int64_t lanes, int64_t &y, int64_t &col,
                          int64_t *at) {
    for (int64_t i = 0; i < lanes; ++i) {
        at[i] = y * layout.row_bytes + layout.lead_bytes + col * layout.pixel_bytes;
        if (++col == layout.width) {
            col = 0;
            ++y;
        }
    }
}

template <int Planes, typename Bits>
void pack_pixels_impl(const float *x, int64_t channels, int64_t pixels, const Bits &bits,
                      const PixelLayout &layout, int64_t b, int64_t p0, int64_t p1,
                      unsigned char *out) {
    const int64_t words = (channels + 63) / 64;
    const float *image = x + b * channels * pixels;
    int64_t y = b * (pixels / layout.width) + p0 / layout.width;
    int64_t col = p0 % layout.width;
    alignas(32) uint64_t lanes_out[Planes][8];
    int64_t at[kPixelStep];
    for (int64_t i0 = p0; i0 < p1; i0 += kPixelStep) {
        const int64_t lanes = p1 - i0 < kPixelStep ? p1 - i0 : kPixelStep;
        pixel_offsets(layout, lanes, y, col, at);
        for (int64_t w = 0; w < words; ++w) {
            const int64_t c0 = 64 * w;
            const int64_t count = channels - c0 < 64 ? channels - c0 : 64;
            __m256i low[2][Planes], high[2][Planes];
            const int64_t split = count < 32 ? count : 32;
            const float *src = image + c0 * pixels + i0;
            pixel_bits<Planes>(src, pixels, 0, split, lanes, bits, low);
            pixel_bits<Planes>(src, pixels, split, count, lanes, bits, high);
            for (int h = 0; h < 2 && 8 * h < lanes; ++h) {
                const int64_t n = lanes - 8 * h < 8 ? lanes - 8 * h : 8;
                for (int p = 0; p < Planes; ++p) {
                    // Lanes (low_i, high_i) -> 64-bit words, pixel order restored across
                    // the two 128-bit halves.
                    const __m256i a = _mm256_unpacklo_epi32(low[h][p], high[h][p]);  // 0 1 | 4 5
                    const __m256i c = _mm256_unpackhi_epi32(low[h][p], high[h][p]);  // 2 3 | 6 7
                    _mm256_store_si256(reinterpret_cast<__m256i *>(lanes_out[p]),
                                       _mm256_permute2x128_si256(a, c, 0x20));
                    _mm256_store_si256(reinterpret_cast<__m256i *>(lanes_out[p] + 4),
                                       _mm256_permute2x128_si256(a, c, 0x31));
                    // Whole words even for a dense pixel of fewer bytes: the zeros past
                    // its C bits land on the next pixel of its row, written after it, or
                    // on the 8 bytes after the row's last pixel, which the layout reserves.
                    unsigned char *dst = out + p * layout.plane_bytes + 8 * w;
                    for (int64_t i = 0; i < n; ++i) {
                        std::memcpy(dst + at[8 * h + i], &lanes_out[p][i], 8);
                    }
                }
            }
        }
    }
}

// All-ones lanes where plane p of the code (or the sign bit) is set.
struct SignBits {
    void operator()(__m256 v, __m256i *out) const { out[0] = negative_lanes(v); }
};

// Codes by division, as quantize_codes.
template <int Planes>
struct CodeBits {
    __m256 scale;
    __m256 levels;

    explicit CodeBits(const ActivationQuantizer &q)
        : scale(_mm256_set1_ps(q.scale)), levels(_mm256_set1_ps(q.levels)) {}

    void operator()(__m256 v, __m256i *out) const {
        const __m256i code = quantize_codes(v, scale, levels);
        _Pragma("GCC unroll 8") for (int p = 0; p < Planes; ++p) {
            out[p] = _mm256_srai_epi32(_mm256_slli_epi32(code, 31 - p), 31);
        }
    }
};

// Codes by comparison with the thresholds T_k of pack_activations.h: c_k = x >= T_k
// (false for NaN), and since c_k implies c_j for j < k, the code is the number of c_k
// set and its bit p the parity of the c_k with k a multiple of 2^p.
template <int Planes>
struct ThresholdCodeBits {
    static constexpr int kLevels = (1 << Planes) - 1;
    __m256 thresholds[kLevels];

    explicit ThresholdCodeBits(const ActivationQuantizer &q) {
        for (int k = 0; k < kLevels; ++k) thresholds[k] = _mm256_set1_ps(q.thresholds[k]);
    }

    void operator()(__m256 v, __m256i *out) const {
        _Pragma("GCC unroll 4") for (int p = 0; p < Planes; ++p) {
            const int step = 1 << p;
            __m256i parity = _mm256_setzero_si256();
            for (int k = step; k <= kLevels; k += step) {
                const __m256 at_least = _mm256_cmp_ps(v, thresholds[k - 1], _CMP_GE_OQ);
                parity = _mm256_xor_si256(parity, _mm256_castps_si256(at_least));
            }
            out[p] = parity;
        }
    }
};

template <int Planes>
void pack_code_pixels(const float *x, int64_t channels, int64_t pixels,
                      const ActivationQuantizer &q, const PixelLayout &layout, int64_t b,
                      int64_t p0, int64_t p1, unsigned char *out) {
    if constexpr (Planes <= kMaxThresholdPlanes) {
        const ThresholdCodeBits<Planes> bits(q);
        pack_pixels_impl<Planes>(x, channels, pixels, bits, layout, b, p0, p1, out);
    } else {
        const CodeBits<Planes> bits(q);
        pack_pixels_impl<Planes>(x, channels, pixels, bits, layout, b, p0, p1, out);
    }
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
                      const ActivationQuantizer &q, const PixelLayout &layout, int64_t b,
                      int64_t p0, int64_t p1, unsigned char *out) {
    if (q.signs) {
        pack_pixels_impl<1>(x, channels, pixels, SignBits{}, layout, b, p0, p1, out);
        return;
    }
    static constexpr PackPixelsFn by_planes[8] = {pack_code_pixels<1>, pack_code_pixels<2>,
                                        pack_code_pixels<3>, pack_code_pixels<4>,
                                        pack_code_pixels<5>, pack_code_pixels<6>,
                                        pack_code_pixels<7>, pack_code_pixels<8>};
    by_planes[q.planes - 1](x, channels, pixels, q, layout, b, p0, p1, out);
}

}  // namespace apb
