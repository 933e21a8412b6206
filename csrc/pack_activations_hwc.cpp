// The hwc im2col (ColumnOrder::hwc), in two steps:
//   (1) every input pixel's C values quantized and packed once (the ISA's pack_pixels),
//       into image rows with a zero border (PixelLayout in pack_activations.h);
//   (2) each output position's row assembled from its kh*kw taps.
// Step 2 only moves bits, so it has one portable implementation; compiled without ISA
// flags.
//
// Why the border: with the padding stored as zero pixels, and input rows outside the
// image pointing at a zero row, step 2 copies every tap the same way, without a test
// per tap. Why dense pixels for C % 8 == 0 below 64 channels: a kernel row of taps is
// then one run of kw*C/8 bytes, copied at once (ResNet-20's 16- and 32-channel layers).
#include <algorithm>
#include <cstring>

#include "pack_activations.h"
#include "threads.h"
#include "workspace.h"

namespace apb {

namespace {

using pack_activations_detail::tap;

// Byte copies of bit rows assume little-endian words (every target apb builds for).
constexpr bool kLittleEndian = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;

int64_t round_up(int64_t n, int64_t step) { return (n + step - 1) / step * step; }

// Appends bit strings to a packed row, 64-bit word by word. The row must have room
// for every bit appended; finish() writes the last partial word (zero past the end).
class BitRow {
  public:
    explicit BitRow(uint64_t *out) : out_(out) {}

    // `bits` bits from `src` (ceil(bits/64) words, zero past `bits` in the last one).
    void append(const uint64_t *src, int64_t bits) {
        for (; bits >= 64; bits -= 64) push(*src++, 64);
        if (bits > 0) push(*src, static_cast<int>(bits));
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

int64_t kernel_span(int64_t kernel, int64_t dilation) { return dilation * (kernel - 1) + 1; }

// A position whose kernel row touches the image reads at most span - 1 columns of
// padding on either side (and never more than pad_w); positions that touch it nowhere
// (padding at least a kernel wide) are written as zeros without reading.
PixelLayout pixel_layout(const Conv2dGeometry &g) {
    const int64_t words = (g.channels + 63) / 64;
    const bool dense = kLittleEndian && g.channels % 8 == 0 && g.channels < 64;
    PixelLayout l{};
    l.width = g.width;
    l.pixel_bytes = dense ? g.channels / 8 : 8 * words;
    const int64_t border =
        std::min(g.pad_w, kernel_span(g.kernel_w, g.dilation_w) - 1) * l.pixel_bytes;
    l.lead_bytes = border;
    // 8 bytes or more after the last pixel: the room pack_pixels may write zeros into.
    l.row_bytes = round_up(border + g.width * l.pixel_bytes + std::max<int64_t>(border, 8), 8);
    l.plane_bytes = g.batch * g.height * l.row_bytes;
    return l;
}

// What step 2 needs besides the geometry: where plane p of image b starts, the zero
// row, the positions [ox_lo, ox_hi) that touch the image, and the output row size.
struct Gather {
    const Conv2dGeometry &g;
    const PixelLayout &l;
    const unsigned char *zero_row;
    int64_t ox_lo, ox_hi;
    int64_t out_bytes;      // 8 * words
    int64_t content_bytes;  // kh * kw * C / 8 when C % 8 == 0
};

// Output row oy of one plane of one image: for each kernel row dy and each run of
// taps in it, the run's bytes for every position. `runs` runs per kernel row, `run`
// bytes each, `run_step` bytes apart in the pixel rows; Run is `run` as a constant
// for the common sizes (the copies then compile to a few moves), 0 for any other.
// `slack`: bytes that may be read past the end of the row's last run (kWide below).
template <int Run>
void gather_runs(const Gather &s, const unsigned char *image, int64_t oy, int64_t runs,
                 int64_t run, int64_t run_step, int64_t slack, unsigned char *out) {
    const Conv2dGeometry &g = s.g;
    const int64_t size = Run > 0 ? Run : run;
    // A single run of 6 or 12 bytes a kernel row (3 x 3 taps of 16 or 32 channels) is
    // copied as 8 or 16, two moves instead of three or four, in every kernel row but
    // the last: the extra bytes land on the next kernel row's run of the same position,
    // which is written after them (dy is the outer loop), and are read from the pixel
    // row's room past the run when `slack` allows (the whole hwc im2col of 16 x 32 x 32
    // and 32 x 16 x 16 images at batch 64, one thread, in C++: 9.45 -> 9.08 and
    // 3.08 -> 2.96 us an image).
    // (Only these two: a wider copy must spill no further than the next run, and for
    // runs of 2 or 4 bytes one move copies them already.)
    constexpr int64_t kWide = Run == 6 ? 8 : Run == 12 ? 16 : Run;
    const bool widen = kWide != Run && runs == 1 && slack >= kWide - Run;
    const int64_t step = g.stride_w * s.l.pixel_bytes;
    // Locals, not members: stores through unsigned char may alias s, which would
    // otherwise be read again after every copy.
    const int64_t out_bytes = s.out_bytes, ox_lo = s.ox_lo, ox_hi = s.ox_hi;
    const int64_t first = s.l.lead_bytes + (s.ox_lo * g.stride_w - g.pad_w) * s.l.pixel_bytes;
    unsigned char *at = out + ox_lo * out_bytes;
    for (int64_t dy = 0; dy < g.kernel_h; ++dy) {
        const int64_t iy = tap(oy, g.stride_h, g.pad_h, dy, g.dilation_h);
        const unsigned char *line =
            (0 <= iy && iy < g.height ? image + iy * s.l.row_bytes : s.zero_row) + first;
        if (widen && dy + 1 < g.kernel_h) {
            const unsigned char *src = line;
            unsigned char *dst = at;
            for (int64_t ox = ox_lo; ox < ox_hi; ++ox, dst += out_bytes, src += step) {
                std::memcpy(dst, src, static_cast<size_t>(kWide));
            }
            at += size;
            continue;
        }
        for (int64_t r = 0; r < runs; ++r, at += size, line += run_step) {
            const unsigned char *src = line;
            unsigned char *dst = at;
            for (int64_t ox = ox_lo; ox < ox_hi; ++ox, dst += out_bytes, src += step) {
                std::memcpy(dst, src, static_cast<size_t>(size));
            }
        }
    }
}

// Whether a kernel row's taps fit one word (kw*C <= 64 bits, LeNet-5's 6 channels times
// 5 taps) where pixels are not whole bytes: the rows are then gathered from strips.
bool uses_strips(const Conv2dGeometry &g) {
    return (!kLittleEndian || g.channels % 8 != 0) && g.channels < 64 &&
           g.kernel_w * g.channels <= 64;
}

// Strips: for each input row and each output column ox, the kernel row's taps or-ed into
// one word (tap dx at bit dx*C). Each strip serves the kh output rows whose window covers
// that input row, so a tap is read once per input row, not once per output row, and an
// output position takes kh appends instead of kh*kw.
void build_strips(const Gather &s, const unsigned char *pixel_row, uint64_t *strips) {
    const Conv2dGeometry &g = s.g;
    const int64_t pixel_bytes = s.l.pixel_bytes;
    const int64_t tap_step = g.dilation_w * pixel_bytes;
    const int c = static_cast<int>(g.channels);
    for (int64_t ox = s.ox_lo; ox < s.ox_hi; ++ox) {
        const unsigned char *pixel =
            pixel_row + s.l.lead_bytes + (ox * g.stride_w - g.pad_w) * pixel_bytes;
        uint64_t word = 0;
        for (int64_t dx = 0; dx < g.kernel_w; ++dx, pixel += tap_step) {
            uint64_t p;
            std::memcpy(&p, pixel, sizeof p);  // C < 64: one word, zero above C bits
            word |= p << (dx * c);
        }
        strips[ox] = word;
    }
}

// Output row oy from an image's strips (uses_strips): kh words per position.
void gather_strips(const Gather &s, const uint64_t *strips, int64_t oy, unsigned char *out) {
    const Conv2dGeometry &g = s.g;
    const int64_t row_bits = g.kernel_w * g.channels;
    for (int64_t ox = s.ox_lo; ox < s.ox_hi; ++ox) {
        BitRow bits(reinterpret_cast<uint64_t *>(out + ox * s.out_bytes));
        for (int64_t dy = 0; dy < g.kernel_h; ++dy) {
            const int64_t iy = tap(oy, g.stride_h, g.pad_h, dy, g.dilation_h);
            const uint64_t word = 0 <= iy && iy < g.height ? strips[iy * g.out_w + ox] : 0;
            bits.append(&word, row_bits);
        }
        bits.finish();
    }
}

// The same for any C: taps appended bit by bit (64-bit shifts).
void gather_bits(const Gather &s, const unsigned char *image, int64_t oy, unsigned char *out) {
    const Conv2dGeometry &g = s.g;
    const int64_t pixel_bytes = s.l.pixel_bytes;
    for (int64_t ox = s.ox_lo; ox < s.ox_hi; ++ox) {
        BitRow bits(reinterpret_cast<uint64_t *>(out + ox * s.out_bytes));
        const int64_t first = s.l.lead_bytes + (ox * g.stride_w - g.pad_w) * pixel_bytes;
        for (int64_t dy = 0; dy < g.kernel_h; ++dy) {
            const int64_t iy = tap(oy, g.stride_h, g.pad_h, dy, g.dilation_h);
            const unsigned char *line =
                (0 <= iy && iy < g.height ? image + iy * s.l.row_bytes : s.zero_row) + first;
            for (int64_t dx = 0; dx < g.kernel_w; ++dx) {
                const auto *pixel = line + dx * g.dilation_w * pixel_bytes;
                bits.append(reinterpret_cast<const uint64_t *>(pixel), g.channels);
            }
        }
        bits.finish();
    }
}

// `strips`: the image's strips where uses_strips, else null.
void gather_row(const Gather &s, const unsigned char *image, const uint64_t *strips, int64_t oy,
                unsigned char *out) {
    const Conv2dGeometry &g = s.g;
    // Positions that touch no pixel are zero; the others get their last word cleared
    // first, so the bytes past the last tap are zero (a store, not a call per position).
    const int64_t ox_lo = s.ox_lo, ox_hi = std::max(s.ox_lo, s.ox_hi);
    std::memset(out, 0, static_cast<size_t>(ox_lo * s.out_bytes));
    std::memset(out + ox_hi * s.out_bytes, 0, static_cast<size_t>((g.out_w - ox_hi) * s.out_bytes));
    if (s.content_bytes < s.out_bytes) {
        auto *last = reinterpret_cast<uint64_t *>(out + s.out_bytes - 8);
        const int64_t words = s.out_bytes / 8;
        for (int64_t ox = ox_lo; ox < ox_hi; ++ox) last[ox * words] = 0;
    }
    if (strips != nullptr) return gather_strips(s, strips, oy, out);
    if (!kLittleEndian || g.channels % 8 != 0) return gather_bits(s, image, oy, out);
    const int64_t tap_bytes = g.channels / 8;
    if (g.dilation_w != 1 || s.l.pixel_bytes != tap_bytes) {
        return gather_runs<0>(s, image, oy, g.kernel_w, tap_bytes,
                              g.dilation_w * s.l.pixel_bytes, 0, out);
    }
    const int64_t run = g.kernel_w * tap_bytes;
    // Where the last position's run ends in its pixel row, and the room after it.
    const int64_t end = s.l.lead_bytes +
                        ((ox_hi - 1) * g.stride_w - g.pad_w) * s.l.pixel_bytes + run;
    const int64_t slack = ox_hi > ox_lo ? s.l.row_bytes - end : 0;
    switch (run) {  // 1 x 1 and 3 x 3 kernels over 16, 32 and 64 channels
        case 2: return gather_runs<2>(s, image, oy, 1, run, 0, slack, out);
        case 4: return gather_runs<4>(s, image, oy, 1, run, 0, slack, out);
        case 6: return gather_runs<6>(s, image, oy, 1, run, 0, slack, out);
        case 8: return gather_runs<8>(s, image, oy, 1, run, 0, slack, out);
        case 12: return gather_runs<12>(s, image, oy, 1, run, 0, slack, out);
        case 24: return gather_runs<24>(s, image, oy, 1, run, 0, slack, out);
        default: return gather_runs<0>(s, image, oy, 1, run, 0, slack, out);
    }
}

struct PixelWorkspace;  // thread_workspace tags
struct StripWorkspace;

}  // namespace

void im2col_pack_hwc(const float *x, const Conv2dGeometry &g, const ActivationQuantizer &q,
                     PackPixelsFn pack_pixels, uint64_t *out) {
    const PixelLayout l = pixel_layout(g);
    const int64_t planes_bytes = q.planes * l.plane_bytes;
    // 64-bit words, so that gather_bits reads aligned words.
    unsigned char *pixels = reinterpret_cast<unsigned char *>(thread_workspace<PixelWorkspace, uint64_t>(
        static_cast<size_t>((planes_bytes + l.row_bytes) / 8)));
    const unsigned char *zero_row = pixels + planes_bytes;
    std::memset(pixels + planes_bytes, 0, static_cast<size_t>(l.row_bytes));
    const int64_t image_pixels = g.height * g.width;
    const int64_t span = kernel_span(g.kernel_w, g.dilation_w);
    const int64_t ox_lo = g.pad_w < span ? 0 : (g.pad_w - span) / g.stride_w + 1;
    const int64_t ox_hi = (g.width + g.pad_w + g.stride_w - 1) / g.stride_w;
    const Gather s{g, l, zero_row, std::min(ox_lo, g.out_w), std::min(ox_hi, g.out_w),
                   8 * g.words(), g.columns() / 8};
    const int64_t rows = g.batch * g.out_h;
    const int64_t plane_words = g.positions() * g.words();
    // One team for the three steps, sized by the larger of their works: split by their
    // own sizes, the pixel packing of a 14 x 14 or 7 x 7 layer ran on one thread while
    // the gather after it ran on two, in separate regions.
    const int nt = std::max(threads_for(image_pixels * g.batch * g.channels),
                            threads_for(plane_words * 64));
    // Blocks of whole image rows (pack_pixels's contract), about 256 pixels each, and at
    // least one per thread, so that the threads split them.
    int64_t block_rows = std::max<int64_t>(1, 256 / std::max<int64_t>(1, g.width));
    if (g.batch < nt) block_rows = std::min(block_rows, (g.height + nt - 1) / nt);
    const int64_t blocks_per_image = (g.height + block_rows - 1) / block_rows;
    const int64_t blocks = g.batch * blocks_per_image;
    const int64_t right = l.lead_bytes + g.width * l.pixel_bytes;
    const auto pack_block = [&](int64_t block) {
        const int64_t b = block / blocks_per_image;
        const int64_t y0 = block % blocks_per_image * block_rows;
        const int64_t y1 = std::min(g.height, y0 + block_rows);
        for (int p = 0; p < q.planes; ++p) {
            for (int64_t y = y0; y < y1; ++y) {
                unsigned char *row = pixels + p * l.plane_bytes + (b * g.height + y) * l.row_bytes;
                std::memset(row, 0, static_cast<size_t>(l.lead_bytes));
                std::memset(row + right, 0, static_cast<size_t>(l.row_bytes - right));
            }
        }
        if (image_pixels > 0) {
            pack_pixels(x, g.channels, image_pixels, q, l, b, y0 * g.width, y1 * g.width, pixels);
        }
    };
    // Strips (uses_strips): one word per input row and output column, per plane.
    uint64_t *strips = nullptr;
    const int64_t strip_plane = g.batch * g.height * g.out_w;
    const int64_t input_rows = uses_strips(g) ? q.planes * g.batch * g.height : 0;
    if (input_rows > 0) {
        strips = thread_workspace<StripWorkspace, uint64_t>(
            static_cast<size_t>(q.planes * strip_plane));
    }
    const auto strip_row = [&](int64_t r) {
        const int64_t p = r / (g.batch * g.height), by = r % (g.batch * g.height);
        build_strips(s, pixels + p * l.plane_bytes + by * l.row_bytes,
                     strips + p * strip_plane + by * g.out_w);
    };
    const auto gather = [&](int64_t row) {
        const int64_t b = row / g.out_h;
        for (int p = 0; p < q.planes; ++p) {
            const unsigned char *image = pixels + p * l.plane_bytes + b * g.height * l.row_bytes;
            const uint64_t *image_strips =
                strips == nullptr ? nullptr : strips + p * strip_plane + b * g.height * g.out_w;
            uint64_t *row_out = out + p * plane_words + row * g.out_w * g.words();
            gather_row(s, image, image_strips, row % g.out_h,
                       reinterpret_cast<unsigned char *>(row_out));
        }
    };
    if (nt <= 1) {
        for (int64_t i = 0; i < blocks; ++i) pack_block(i);
        for (int64_t r = 0; r < input_rows; ++r) strip_row(r);
        for (int64_t row = 0; row < rows; ++row) gather(row);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < blocks; ++i) pack_block(i);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < input_rows; ++r) strip_row(r);
#pragma omp for schedule(static)
        for (int64_t row = 0; row < rows; ++row) gather(row);
    }
}

}  // namespace apb
