// The row of max_pool2d_channels_last, written once over a vector type and compiled three
// times (max_pool2d_cl_scalar.cpp, _avx2.cpp, _avx512.cpp): the channels of a pixel are
// contiguous in a channels-last map, so a window's maximum is a few vectors of channels
// held in registers over its taps. Include it from those files only, after defining the
// vector struct; everything is `static`.
//
// A vector struct V provides: reg, kLanes, load, store, broadcast, nan_max(a, b), which is
// b where b > a or b is NaN and a elsewhere, lane by lane (max_pool2d.cpp's rule: a NaN
// in a window wins, and ties keep the earlier tap), and bound(y, lower, upper), which is
// min(max(y, lower), upper) with NaN kept.
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "max_pool2d.h"

namespace apb::max_pool_cl {

#if defined(__AVX2__)
// dst[j * ds + i] = src[i * ss + j] for i, j < 8: an 8 x 8 block transposed in registers.
static inline void transpose8x8(const float *src, int64_t ss, float *dst, int64_t ds) {
    __m256 r[8], t[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ss);
    // Pairs of rows interleaved, then pairs of pairs: each 128-bit half of u[k] holds
    // column k (k < 4) or k + 4 of four rows; the halves of rows 0-3 and 4-7 then join.
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    __m256 u[8];
    for (int h = 0; h < 8; h += 4) {
        u[h] = _mm256_shuffle_ps(t[h], t[h + 2], 0x44);
        u[h + 1] = _mm256_shuffle_ps(t[h], t[h + 2], 0xee);
        u[h + 2] = _mm256_shuffle_ps(t[h + 1], t[h + 3], 0x44);
        u[h + 3] = _mm256_shuffle_ps(t[h + 1], t[h + 3], 0xee);
    }
    for (int k = 0; k < 4; ++k) {
        _mm256_storeu_ps(dst + k * ds, _mm256_permute2f128_ps(u[k], u[k + 4], 0x20));
        _mm256_storeu_ps(dst + (k + 4) * ds, _mm256_permute2f128_ps(u[k], u[k + 4], 0x31));
    }
}
#endif

// The window maximum of kVectors vectors of channels from c: independent chains, so that
// the taps' maxima overlap instead of waiting on one another.
template <class V, int kVectors>
static inline void window_max(const float *image, const MaxPool2dGeometry &g, int64_t C,
                              int64_t c, int64_t y0, int64_t y1, int64_t x0, int64_t x1,
                              typename V::reg lower, typename V::reg upper, float *r) {
    using reg = typename V::reg;
    reg m[kVectors];
    const float *first = image + (y0 * g.width + x0) * C + c;
    for (int q = 0; q < kVectors; ++q) m[q] = V::load(first + q * V::kLanes);
    for (int64_t iy = y0; iy < y1; ++iy) {
        const float *line = image + iy * g.width * C + c;
        for (int64_t ix = iy == y0 ? x0 + 1 : x0; ix < x1; ++ix) {
            for (int q = 0; q < kVectors; ++q) {
                m[q] = V::nan_max(m[q], V::load(line + ix * C + q * V::kLanes));
            }
        }
    }
    for (int q = 0; q < kVectors; ++q) {
        V::store(r + c + q * V::kLanes, V::bound(m[q], lower, upper));
    }
}

// Output row oy of one image: row[ox * C + c] = the maximum of channel c over the window
// of output column ox (channels-last, in L1), then out[c, oy, ox] = row[ox * C + c] in
// 8 x 8 blocks, so that both sides of the transposition stay within a few cache lines
// (in registers with AVX2).
template <class V>
static void pool_row(const float *image, const MaxPool2dGeometry &g, int64_t C, int64_t oy,
                     PoolBounds bounds, float *__restrict row, float *__restrict out) {
    constexpr int kChains = 4;
    const typename V::reg lower = V::broadcast(bounds.lower), upper = V::broadcast(bounds.upper);
    const int64_t y0 = std::max<int64_t>(0, oy * g.stride_h - g.pad_h);
    const int64_t y1 = std::min(g.height, oy * g.stride_h - g.pad_h + g.kernel_h);
    const int64_t OW = g.out_w;
    for (int64_t ox = 0; ox < OW; ++ox) {
        const int64_t x0 = std::max<int64_t>(0, ox * g.stride_w - g.pad_w);
        const int64_t x1 = std::min(g.width, ox * g.stride_w - g.pad_w + g.kernel_w);
        float *r = row + ox * C;
        int64_t c = 0;
        for (; c + kChains * V::kLanes <= C; c += kChains * V::kLanes) {
            window_max<V, kChains>(image, g, C, c, y0, y1, x0, x1, lower, upper, r);
        }
        for (; c + V::kLanes <= C; c += V::kLanes) {
            window_max<V, 1>(image, g, C, c, y0, y1, x0, x1, lower, upper, r);
        }
        for (; c < C; ++c) {  // past the last whole vector
            float m = image[(y0 * g.width + x0) * C + c];
            for (int64_t iy = y0; iy < y1; ++iy) {
                for (int64_t ix = iy == y0 ? x0 + 1 : x0; ix < x1; ++ix) {
                    m = max_pool_detail::nan_max_scalar(m,
                                                        image[(iy * g.width + ix) * C + c]);
                }
            }
            r[c] = max_pool_detail::bound(m, bounds.lower, bounds.upper);
        }
    }
    float *dst = out + oy * OW;
    const int64_t plane = g.out_h * OW;
    constexpr int64_t kTile = 8;
    for (int64_t c0 = 0; c0 < C; c0 += kTile) {
        const int64_t c1 = std::min(C, c0 + kTile);
        for (int64_t ox0 = 0; ox0 < OW; ox0 += kTile) {
            const int64_t ox1 = std::min(OW, ox0 + kTile);
#if defined(__AVX2__)
            if (c1 - c0 == kTile && ox1 - ox0 == kTile) {
                transpose8x8(row + ox0 * C + c0, C, dst + c0 * plane + ox0, plane);
                continue;
            }
#endif
            for (int64_t c = c0; c < c1; ++c) {
                for (int64_t ox = ox0; ox < ox1; ++ox) dst[c * plane + ox] = row[ox * C + c];
            }
        }
    }
}

}  // namespace apb::max_pool_cl
