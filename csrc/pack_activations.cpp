// Argument checks, dispatch and threading for activation packing; compiled without
// ISA flags.
#include "pack_activations.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cpu_features.h"
#include "threads.h"

namespace apb {

namespace {

using ImRowFn = void (*)(const float *, const Conv2dGeometry &, const ActivationQuantizer &,
                         int64_t, uint64_t *, int64_t);
using RowFn = void (*)(const float *, int64_t, const ActivationQuantizer &, int64_t,
                       uint64_t *, int64_t);

struct Packers {
    ImRowFn im2col_row;
    RowFn quantize_row;
    PackPixelsFn pixels;
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

float float_of_bits(uint32_t bits) {
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

uint32_t bits_of_float(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    return bits;
}

// T_k, the smallest float whose code is at least k (1 <= k <= L), by bisection over
// the bit patterns of [0, s], which order non-negative floats as their values; code(0)
// = 0 < k <= L = code(s). The bracket starts a few units in the last place around
// s (k - 1/2) / L, where the rounded quotient crosses k - 1/2, and widens to all of
// [0, s] if that guess was off, so the result does not depend on the guess.
float code_threshold(const ActivationQuantizer &q, uint32_t k) {
    const auto code_at = [&](uint32_t bits) {
        return pack_activations_detail::quantize_code(float_of_bits(bits), q.scale, q.levels);
    };
    const uint32_t top = bits_of_float(q.scale);
    const double guess = static_cast<double>(q.scale) * (k - 0.5) / q.levels;
    const uint32_t mid = std::min(bits_of_float(static_cast<float>(guess)), top);
    constexpr uint32_t kReach = 16;
    uint32_t lo = mid > kReach ? mid - kReach : 0;  // code(lo) < k
    uint32_t hi = top - mid > kReach ? mid + kReach : top;  // code(hi) >= k
    if (code_at(lo) >= k || code_at(hi) < k) {
        lo = 0;
        hi = top;
    }
    while (hi - lo > 1) {
        const uint32_t m = lo + (hi - lo) / 2;
        (code_at(m) >= k ? hi : lo) = m;
    }
    return float_of_bits(hi);
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
    ActivationQuantizer q{false, planes, s, static_cast<float>((1 << planes) - 1), {}};
    if (planes <= kMaxThresholdPlanes) {
        for (int k = 1; k < 1 << planes; ++k) q.thresholds[k - 1] = code_threshold(q, k);
    }
    return q;
}

ActivationQuantizer sign_quantizer() { return ActivationQuantizer{true, 1, 1.0f, 1.0f, {}}; }

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
    parallel_for(nt, rows, [&](int64_t row) { pack_row(x, g, q, row, out, plane_stride); });
}

void quantize_pack(const float *x, int64_t N, int64_t K, const ActivationQuantizer &q,
                   uint64_t *out) {
    const int64_t words = (K + 63) / 64;
    if (N <= 0 || words == 0) return;
    const RowFn pack_row = packers_for(active_isa()).quantize_row;  // may throw: outside the team
    const int nt = threads_for(N * K);
    parallel_for(nt, N, [&](int64_t n) { pack_row(x, K, q, n, out, N * words); });
}

}  // namespace apb
