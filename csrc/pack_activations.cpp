// Argument checks, dispatch and threading for activation packing; compiled without
// ISA flags.
#include "pack_activations.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include "cpu_features.h"
#include "threads.h"
#include "workspace.h"

namespace apb {

namespace {

using ImRowFn = void (*)(const float *, const Conv2dGeometry &, const ActivationQuantizer &,
                         int64_t, uint64_t *, int64_t);
using RowFn = void (*)(const float *, int64_t, const ActivationQuantizer &, int64_t,
                       uint64_t *, int64_t);
using PixelsFn = void (*)(const float *, int64_t, int64_t, const ActivationQuantizer &,
                          int64_t, int64_t, int64_t, uint64_t *, int64_t);

struct Packers {
    ImRowFn im2col_row;
    RowFn quantize_row;
    PixelsFn pixels;
};

// AVX-512 machines run the AVX2 packers: packing is a small share of a layer's time.
Packers packers_for(Isa isa) {
#if defined(APB_HAVE_X86_KERNELS)
    if (isa != Isa::scalar) {
        return {im2col_pack_row_avx2, quantize_pack_row_avx2, pack_pixels_avx2};
    }
#endif
    (void)isa;
    return {im2col_pack_row_scalar, quantize_pack_row_scalar, pack_pixels_scalar};
}

constexpr int64_t kMaxParameter = int64_t{1} << 31;

// Byte copies of bit rows assume little-endian words (every target apb builds for).
constexpr bool kLittleEndian = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;

void check_range(const char *name, int64_t value, int64_t lowest) {
    if (value < lowest || value >= kMaxParameter) {
        throw std::invalid_argument("im2col: " + std::string(name) + " must be in [" +
                                    std::to_string(lowest) + ", 2^31), got " +
                                    std::to_string(value));
    }
}

int64_t output_size(const char *axis, int64_t size, int64_t kernel, int64_t stride,
                    int64_t pad, int64_t dilation) {
    const int64_t span = dilation * (kernel - 1) + 1;
    const int64_t padded = size + 2 * pad;
    if (span > padded) {
        throw std::invalid_argument(
            "im2col: the kernel covers " + std::to_string(span) + " input " + axis +
            " (kernel " + std::to_string(kernel) + ", dilation " + std::to_string(dilation) +
            ") but the padded input has only " + std::to_string(padded) +
            " (size " + std::to_string(size) + " + 2 * padding " + std::to_string(pad) +
            "); use a smaller kernel or dilation, or more padding");
    }
    return (padded - span) / stride + 1;
}

// Appends bit strings to a packed row, 64-bit word by word. The row must have room
// for every bit appended; finish() writes the last partial word (zero past the end).
class BitRow {
  public:
    explicit BitRow(uint64_t *out) : out_(out) {}

    // `bits` bits from `src` (ceil(bits/64) words, zero past `bits` in the last one).
    void append(const uint64_t *src, int64_t bits) {
        if (used_ == 0 && bits % 64 == 0) {  // whole words at a word boundary
            for (int64_t w = 0; w < bits / 64; ++w) *out_++ = src[w];
            return;
        }
        for (; bits >= 64; bits -= 64) push(*src++, 64);
        if (bits > 0) push(*src, static_cast<int>(bits));
    }

    void append_zeros(int64_t bits) {
        for (; bits >= 64; bits -= 64) push(0, 64);
        if (bits > 0) push(0, static_cast<int>(bits));
    }

    void finish() {
        if (used_ > 0) *out_++ = pending_;
        used_ = 0;
        pending_ = 0;
    }

  private:
    // n in [1, 64] bits, the bits of `word` at and above n zero.
    void push(uint64_t word, int n) {
        pending_ |= word << used_;
        if (used_ + n < 64) {
            used_ += n;
            return;
        }
        *out_++ = pending_;
        pending_ = used_ == 0 ? 0 : word >> (64 - used_);
        used_ = used_ + n - 64;
    }

    uint64_t *out_;
    uint64_t pending_ = 0;
    int used_ = 0;  // bits in pending_, < 64
};

// The hwc rows of output row oy when C % 64 == 0: every tap is pixel_words whole words.
// A position whose kernel row lies inside the image (dilation 1) copies kw taps as one
// run of contiguous words; only border positions test each tap.
void gather_whole_words(const Conv2dGeometry &g, const uint64_t *image, int64_t pixel_words,
                        int64_t oy, uint64_t *row_out, int64_t words) {
    const int64_t run = g.kernel_w * pixel_words;
    for (int64_t ox = 0; ox < g.out_w; ++ox) {
        uint64_t *dst = row_out + ox * words;
        const int64_t ix0 = ox * g.stride_w - g.pad_w;
        const bool interior = g.dilation_w == 1 && ix0 >= 0 && ix0 + g.kernel_w <= g.width;
        for (int64_t dy = 0; dy < g.kernel_h; ++dy, dst += run) {
            const int64_t iy = pack_activations_detail::tap(oy, g.stride_h, g.pad_h, dy,
                                                            g.dilation_h);
            if (iy < 0 || iy >= g.height) {
                for (int64_t w = 0; w < run; ++w) dst[w] = 0;
                continue;
            }
            const uint64_t *line = image + iy * g.width * pixel_words;
            if (interior) {
                const uint64_t *src = line + ix0 * pixel_words;
                for (int64_t w = 0; w < run; ++w) dst[w] = src[w];
                continue;
            }
            for (int64_t dx = 0; dx < g.kernel_w; ++dx) {
                const int64_t ix = ix0 + dx * g.dilation_w;
                const bool inside = 0 <= ix && ix < g.width;
                for (int64_t w = 0; w < pixel_words; ++w) {
                    dst[dx * pixel_words + w] = inside ? line[ix * pixel_words + w] : 0;
                }
            }
        }
    }
}

// The hwc rows of output row oy when C % 8 == 0 but C % 64 != 0: every tap is C/8 whole
// bytes at byte offset t*C/8 of its row, because bit j of a row of little-endian words
// is bit j % 8 of byte j / 8 (and the pixel's bits are the first C/8 bytes of its
// words). Byte copies instead of BitRow's 64-bit shifts: measured 1.9-2.8x on ResNet-20's
// 16- and 32-channel layers (docs/performance.md). TapBytes is C/8 as a constant for the
// common widths, 0 for any other.
template <int TapBytes>
void gather_whole_bytes(const Conv2dGeometry &g, const uint64_t *image, int64_t pixel_words,
                        int64_t oy, uint64_t *row_out, int64_t words) {
    const int64_t tap_bytes = TapBytes > 0 ? TapBytes : g.channels / 8;
    const int64_t pixel_bytes = pixel_words * 8;
    const int64_t run = g.kernel_w * tap_bytes;  // one kernel row of taps
    const int64_t row_bytes = words * 8;
    const auto *pixels = reinterpret_cast<const unsigned char *>(image);
    auto *out = reinterpret_cast<unsigned char *>(row_out);
    // The 0-7 bytes past the last tap stay zero: the last word is cleared first.
    for (int64_t ox = 0; ox < g.out_w; ++ox) row_out[ox * words + words - 1] = 0;
    for (int64_t dy = 0; dy < g.kernel_h; ++dy) {
        const int64_t iy = pack_activations_detail::tap(oy, g.stride_h, g.pad_h, dy,
                                                        g.dilation_h);
        if (iy < 0 || iy >= g.height) {
            for (int64_t ox = 0; ox < g.out_w; ++ox) {
                std::memset(out + ox * row_bytes + dy * run, 0, static_cast<size_t>(run));
            }
            continue;
        }
        const unsigned char *line = pixels + iy * g.width * pixel_bytes;
        for (int64_t ox = 0; ox < g.out_w; ++ox) {
            unsigned char *dst = out + ox * row_bytes + dy * run;
            const int64_t ix0 = ox * g.stride_w - g.pad_w;
            if (g.dilation_w == 1 && ix0 >= 0 && ix0 + g.kernel_w <= g.width) {
                const unsigned char *src = line + ix0 * pixel_bytes;
                for (int64_t dx = 0; dx < g.kernel_w; ++dx) {
                    std::memcpy(dst + dx * tap_bytes, src + dx * pixel_bytes,
                                static_cast<size_t>(tap_bytes));
                }
                continue;
            }
            for (int64_t dx = 0; dx < g.kernel_w; ++dx) {
                const int64_t ix = ix0 + dx * g.dilation_w;
                if (0 <= ix && ix < g.width) {
                    std::memcpy(dst + dx * tap_bytes, line + ix * pixel_bytes,
                                static_cast<size_t>(tap_bytes));
                } else {
                    std::memset(dst + dx * tap_bytes, 0, static_cast<size_t>(tap_bytes));
                }
            }
        }
    }
}

void gather_bytes(const Conv2dGeometry &g, const uint64_t *image, int64_t pixel_words,
                  int64_t oy, uint64_t *row_out, int64_t words) {
    switch (g.channels) {
        case 8: return gather_whole_bytes<1>(g, image, pixel_words, oy, row_out, words);
        case 16: return gather_whole_bytes<2>(g, image, pixel_words, oy, row_out, words);
        case 32: return gather_whole_bytes<4>(g, image, pixel_words, oy, row_out, words);
        default: return gather_whole_bytes<0>(g, image, pixel_words, oy, row_out, words);
    }
}

struct PixelWorkspace;  // thread_workspace tag

// hwc im2col: (1) every pixel's C inputs quantized and packed once (C bits per plane
// and pixel, ceil(C/64) words);
// (2) each output position's row assembled from its kh*kw taps' pixel words, zeros
// for taps in the padding. Step (2) only moves bits (whole words for C % 64 == 0, whole
// bytes for C % 8 == 0, 64-bit shifts otherwise), so it has one portable implementation.
void im2col_pack_hwc(const float *x, const Conv2dGeometry &g, const ActivationQuantizer &q,
                     PixelsFn pack_pixels, uint64_t *out) {
    const int64_t image_pixels = g.height * g.width;
    const int64_t pixel_words = (g.channels + 63) / 64;
    const int64_t pixel_plane = g.batch * image_pixels * pixel_words;
    const int64_t words = g.words();
    const int64_t plane_stride = g.positions() * words;
    if (pixel_words == 0) return;  // C = 0 cannot happen with words() > 0; kept for safety
    uint64_t *packed = thread_workspace<PixelWorkspace, uint64_t>(
        static_cast<size_t>(q.planes * pixel_plane));
    // Blocks of pixels, a multiple of the SIMD width, so that the threads split them.
    constexpr int64_t kPixelBlock = 256;
    const int64_t blocks_per_image = (image_pixels + kPixelBlock - 1) / kPixelBlock;
    const int pack_threads = threads_for(g.batch * image_pixels * g.channels);
#pragma omp parallel for num_threads(pack_threads) schedule(static)
    for (int64_t block = 0; block < g.batch * blocks_per_image; ++block) {
        const int64_t b = block / blocks_per_image;
        const int64_t p0 = block % blocks_per_image * kPixelBlock;
        const int64_t p1 = p0 + kPixelBlock < image_pixels ? p0 + kPixelBlock : image_pixels;
        pack_pixels(x, g.channels, image_pixels, q, b, p0, p1, packed, pixel_plane);
    }
    const int64_t rows = g.batch * g.out_h;
    const int gather_threads = threads_for(g.positions() * words * 64);
#pragma omp parallel for num_threads(gather_threads) schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
        const int64_t b = row / g.out_h;
        const int64_t oy = row % g.out_h;
        for (int p = 0; p < q.planes; ++p) {
            const uint64_t *image = packed + p * pixel_plane + b * image_pixels * pixel_words;
            uint64_t *row_out = out + p * plane_stride + row * g.out_w * words;
            if (g.channels % 64 == 0) {
                gather_whole_words(g, image, pixel_words, oy, row_out, words);
                continue;
            }
            if (kLittleEndian && g.channels % 8 == 0) {
                gather_bytes(g, image, pixel_words, oy, row_out, words);
                continue;
            }
            for (int64_t ox = 0; ox < g.out_w; ++ox) {
                BitRow bits(row_out + ox * words);
                for (int64_t dy = 0; dy < g.kernel_h; ++dy) {
                    const int64_t iy = pack_activations_detail::tap(oy, g.stride_h, g.pad_h, dy,
                                                                    g.dilation_h);
                    const bool row_inside = 0 <= iy && iy < g.height;
                    for (int64_t dx = 0; dx < g.kernel_w; ++dx) {
                        const int64_t ix = pack_activations_detail::tap(ox, g.stride_w, g.pad_w,
                                                                        dx, g.dilation_w);
                        if (row_inside && 0 <= ix && ix < g.width) {
                            bits.append(image + (iy * g.width + ix) * pixel_words, g.channels);
                        } else {
                            bits.append_zeros(g.channels);
                        }
                    }
                }
                bits.finish();
            }
        }
    }
}

}  // namespace

Conv2dGeometry conv2d_geometry(int64_t batch, int64_t channels, int64_t height, int64_t width,
                               int64_t kernel_h, int64_t kernel_w, int64_t stride_h,
                               int64_t stride_w, int64_t pad_h, int64_t pad_w,
                               int64_t dilation_h, int64_t dilation_w) {
    const struct {
        const char *name;
        int64_t value, lowest;
    } parameters[] = {
        {"batch", batch, 0},          {"channels", channels, 0},     {"height", height, 0},
        {"width", width, 0},          {"kernel_size", kernel_h, 1},  {"kernel_size", kernel_w, 1},
        {"stride", stride_h, 1},      {"stride", stride_w, 1},       {"padding", pad_h, 0},
        {"padding", pad_w, 0},        {"dilation", dilation_h, 1},   {"dilation", dilation_w, 1},
    };
    for (const auto &p : parameters) check_range(p.name, p.value, p.lowest);
    Conv2dGeometry g{batch,    channels, height, width,      kernel_h,   kernel_w, stride_h,
                     stride_w, pad_h,    pad_w,  dilation_h, dilation_w, 0,        0};
    g.out_h = output_size("rows", height, kernel_h, stride_h, pad_h, dilation_h);
    g.out_w = output_size("columns", width, kernel_w, stride_w, pad_w, dilation_w);
    // Each parameter is < 2^31, but their products need not fit in int64: bound them
    // in floating point first (the output has at most 8 planes).
    const double columns = static_cast<double>(channels) * kernel_h * kernel_w;
    const double words = static_cast<double>(batch) * g.out_h * g.out_w * (columns / 64 + 1);
    if (columns >= 0x1p60 || words >= 0x1p59) {
        throw std::invalid_argument("im2col: the packed output would not fit in memory");
    }
    return g;
}

ActivationQuantizer code_quantizer(double scale, int64_t bits) {
    if (bits < 1 || bits > 8) {
        throw std::invalid_argument("codes: bits must be in [1, 8], got " +
                                    std::to_string(bits));
    }
    const float s = static_cast<float>(scale);
    if (!(std::isfinite(s) && s > 0.0f)) {
        throw std::invalid_argument("codes: scale must be finite and > 0 in float32, got " +
                                    std::to_string(scale));
    }
    const int planes = static_cast<int>(bits);
    return ActivationQuantizer{false, planes, s, static_cast<float>((1 << planes) - 1)};
}

ActivationQuantizer sign_quantizer() { return ActivationQuantizer{true, 1, 1.0f, 1.0f}; }

void im2col_pack(const float *x, const Conv2dGeometry &g, const ActivationQuantizer &q,
                 ColumnOrder order, uint64_t *out) {
    const int64_t rows = g.batch * g.out_h;
    if (rows == 0 || g.words() == 0) return;
    const Packers packers = packers_for(active_isa());  // may throw: outside the team
    const ImRowFn pack_row = packers.im2col_row;
    const int64_t plane_stride = g.positions() * g.words();
    if (order == ColumnOrder::hwc) {
        im2col_pack_hwc(x, g, q, packers.pixels, out);
        return;
    }
    const int nt = threads_for(g.positions() * g.columns());
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t row = 0; row < rows; ++row) pack_row(x, g, q, row, out, plane_stride);
}

void quantize_pack(const float *x, int64_t N, int64_t K, const ActivationQuantizer &q,
                   uint64_t *out) {
    const int64_t words = (K + 63) / 64;
    if (N <= 0 || words == 0) return;
    const RowFn pack_row = packers_for(active_isa()).quantize_row;  // may throw: outside the team
    const int nt = threads_for(N * K);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t n = 0; n < N; ++n) pack_row(x, K, q, n, out, N * words);
}

}  // namespace apb
