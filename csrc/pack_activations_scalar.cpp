// Portable activation packing: one element at a time, bits collected into words.
// Compiled without ISA flags.
#include "pack_activations.h"

#include <algorithm>
#include <cstring>

#include "pack_signs.h"

namespace apb {

namespace {

using pack_activations_detail::quantize_code;
using pack_activations_detail::tap;

uint32_t element_code(const float *p, const ActivationQuantizer &q) {
    if (q.signs) return static_cast<uint32_t>(pack_detail::sign_bit(p));
    return quantize_code(*p, q.scale, q.levels);
}

// Appends codes to one packed row, bit-plane by bit-plane, a word at a time.
class PlaneRowWriter {
  public:
    PlaneRowWriter(uint64_t *row, int64_t plane_stride, int planes)
        : row_(row), plane_stride_(plane_stride), planes_(planes) {}

    void push(uint32_t code) {
        for (int p = 0; p < planes_; ++p) {
            words_[p] |= static_cast<uint64_t>((code >> p) & 1u) << bit_;
        }
        if (++bit_ == 64) flush();
    }

    // Writes the last, partial word (its bits past K are 0).
    void finish() {
        if (bit_ > 0) flush();
    }

  private:
    void flush() {
        for (int p = 0; p < planes_; ++p) {
            row_[p * plane_stride_ + word_] = words_[p];
            words_[p] = 0;
        }
        ++word_;
        bit_ = 0;
    }

    uint64_t *row_;
    int64_t plane_stride_;
    int planes_;
    uint64_t words_[8] = {};
    int bit_ = 0;
    int64_t word_ = 0;
};

}  // namespace

void im2col_pack_row_scalar(const float *x, const Conv2dGeometry &g,
                            const ActivationQuantizer &q, int64_t row, uint64_t *out,
                            int64_t plane_stride) {
    const int64_t b = row / g.out_h;
    const int64_t oy = row % g.out_h;
    for (int64_t ox = 0; ox < g.out_w; ++ox) {
        PlaneRowWriter writer(out + (row * g.out_w + ox) * g.words(), plane_stride, q.planes);
        for (int64_t c = 0; c < g.channels; ++c) {
            for (int64_t dy = 0; dy < g.kernel_h; ++dy) {
                const int64_t iy = tap(oy, g.stride_h, g.pad_h, dy, g.dilation_h);
                const bool row_inside = 0 <= iy && iy < g.height;
                const float *line =
                    row_inside ? x + ((b * g.channels + c) * g.height + iy) * g.width : nullptr;
                for (int64_t dx = 0; dx < g.kernel_w; ++dx) {
                    const int64_t ix = tap(ox, g.stride_w, g.pad_w, dx, g.dilation_w);
                    const bool inside = row_inside && 0 <= ix && ix < g.width;
                    writer.push(inside ? element_code(line + ix, q) : 0u);
                }
            }
        }
        writer.finish();
    }
}

void quantize_pack_row_scalar(const float *x, int64_t K, const ActivationQuantizer &q,
                              int64_t n, uint64_t *out, int64_t plane_stride) {
    PlaneRowWriter writer(out + n * ((K + 63) / 64), plane_stride, q.planes);
    const float *row = x + n * K;
    for (int64_t k = 0; k < K; ++k) writer.push(element_code(row + k, q));
    writer.finish();
}

void pack_pixels_scalar(const float *x, int64_t channels, int64_t pixels,
                        const ActivationQuantizer &q, const PixelLayout &layout, int64_t b,
                        int64_t p0, int64_t p1, unsigned char *out) {
    const int64_t words = (channels + 63) / 64;
    const float *image = x + b * channels * pixels;
    const int64_t first_row = b * (pixels / layout.width);
    for (int64_t i = p0; i < p1; ++i) {
        const int64_t at = (first_row + i / layout.width) * layout.row_bytes +
                           layout.lead_bytes + i % layout.width * layout.pixel_bytes;
        for (int64_t w = 0; w < words; ++w) {
            uint64_t word[8] = {};
            const int64_t c1 = std::min(channels, 64 * w + 64);
            for (int64_t c = 64 * w; c < c1; ++c) {
                const uint32_t code = element_code(image + c * pixels + i, q);
                for (int p = 0; p < q.planes; ++p) {
                    word[p] |= static_cast<uint64_t>((code >> p) & 1u) << (c - 64 * w);
                }
            }
            // A dense pixel (little-endian targets only) keeps the first C/8 bytes.
            const auto n = static_cast<size_t>(std::min<int64_t>(8, layout.pixel_bytes - 8 * w));
            for (int p = 0; p < q.planes; ++p) {
                std::memcpy(out + p * layout.plane_bytes + at + 8 * w, &word[p], n);
            }
        }
    }
}

}  // namespace apb
