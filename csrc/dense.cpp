// Dispatch, weight and input preparation and threading of the float32 layers (dense.h);
// compiled without ISA flags.
#include "dense.h"

#include <algorithm>
#include <cstring>

#include "cpu_features.h"
#include "threads.h"
#include "workspace.h"

namespace apb {

namespace {

DenseKernels kernels_for(Isa isa) {
    switch (isa) {
#if defined(APB_HAVE_X86_KERNELS)
        case Isa::avx512: return dense_kernels_avx512();
        case Isa::avx2: return dense_kernels_avx2();
#endif
        default: return dense_kernels_scalar();
    }
}

struct ConvWeightsTag {};
struct ConvInputTag {};

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

}  // namespace

void dense_conv2d(const float *x, const DenseConv2dGeometry &g, const float *weight,
                  const float *bias, float lower, float upper, float *out) {
    const DenseKernels k = kernels_for(active_isa());
    const int64_t cb = k.co_block;
    const int64_t blocks = (g.out_channels + cb - 1) / cb;
    const int64_t taps = g.in_channels * g.kernel_h * g.kernel_w;
    const int64_t row_stride = round_up(g.out_w, kDenseMaxVector) + g.kernel_w - 1;
    const int64_t rows = g.height + 2 * g.pad_h;
    const int64_t plane = rows * row_stride;
    const int64_t image = g.in_channels * plane;

    // Weights as [block][tap][cb] and the bias as [block][cb], zero past out_channels:
    // the row kernel broadcasts cb consecutive floats per tap. A few thousand floats
    // (VGG-Small's stem: 3.5k), rebuilt per call.
    float *w = thread_workspace<ConvWeightsTag, float>(
        static_cast<size_t>(blocks * cb * (taps + 1)));
    float *b = w + blocks * cb * taps;
    std::fill(w, w + blocks * cb * (taps + 1), 0.0f);
    for (int64_t co = 0; co < g.out_channels; ++co) {
        float *dst = w + (co / cb) * cb * taps + co % cb;
        const float *src = weight + co * taps;
        for (int64_t t = 0; t < taps; ++t) dst[t * cb] = src[t];
        b[co] = bias ? bias[co] : 0.0f;
    }

    // Zero-bordered input rows, every image; row_stride leaves room for whole vectors.
    float *in = thread_workspace<ConvInputTag, float>(static_cast<size_t>(g.batch * image));
    const int64_t in_planes = g.batch * g.in_channels;
    const int64_t out_plane = g.out_h * g.out_w;
    const int copy_threads = threads_for(in_planes * plane);
    parallel_for(copy_threads, in_planes, [&](int64_t p) {
        float *dst = in + p * plane;
        std::memset(dst, 0, static_cast<size_t>(plane) * sizeof(float));
        const float *src = x + p * g.height * g.width;
        for (int64_t y = 0; y < g.height; ++y) {
            std::memcpy(dst + (y + g.pad_h) * row_stride + g.pad_w, src + y * g.width,
                        static_cast<size_t>(g.width) * sizeof(float));
        }
    });

    // Tasks (image, output row, channel block), the block innermost: the rows an output
    // row reads stay in L1 across the blocks, and every block's weights fit there too.
    const int64_t tasks = g.batch * g.out_h * blocks;
    const int threads = threads_for(g.batch * g.out_channels * out_plane * taps / 16);
    parallel_for(threads, tasks, [&](int64_t t) {
        const int64_t block = t % blocks, oy = (t / blocks) % g.out_h, n = t / (blocks * g.out_h);
        DenseConvRow r{};
        r.in = in + n * image;
        r.in_channels = g.in_channels;
        r.kernel_h = g.kernel_h;
        r.kernel_w = g.kernel_w;
        r.row_stride = row_stride;
        r.plane_stride = plane;
        r.weights = w + block * cb * taps;
        r.bias = b + block * cb;
        r.channels = std::min(cb, g.out_channels - block * cb);
        r.oy = oy;
        r.out_w = g.out_w;
        r.lower = lower;
        r.upper = upper;
        r.out = out + (n * g.out_channels + block * cb) * out_plane + oy * g.out_w;
        r.channel_stride = out_plane;
        k.conv_row(r);
    });
}

int64_t dense_linear_packed_size(int64_t out_features, int64_t in_features) {
    return round_up(out_features, kDensePanel) * in_features;
}

void dense_linear_pack(const float *weight, int64_t out_features, int64_t in_features,
                       float *packed) {
    const int64_t panels = (out_features + kDensePanel - 1) / kDensePanel;
    std::fill(packed, packed + panels * kDensePanel * in_features, 0.0f);
    for (int64_t n = 0; n < out_features; ++n) {
        float *dst = packed + (n / kDensePanel) * kDensePanel * in_features + n % kDensePanel;
        const float *src = weight + n * in_features;
        for (int64_t k = 0; k < in_features; ++k) dst[k * kDensePanel] = src[k];
    }
}

void dense_linear(const float *x, int64_t rows, int64_t in_features, const float *packed,
                  int64_t out_features, const float *bias, float lower, float upper,
                  float *out) {
    const DenseKernels k = kernels_for(active_isa());
    const int64_t panels = (out_features + kDensePanel - 1) / kDensePanel;
    const int threads = threads_for(rows * in_features * out_features / 4);
    parallel_for(threads, panels, [&](int64_t p) {
        const int64_t col0 = p * kDensePanel;
        k.linear_panel(x, rows, in_features, packed + col0 * in_features,
                       bias ? bias + col0 : nullptr, std::min(kDensePanel, out_features - col0),
                       lower, upper, out + col0, out_features);
    });
}

}  // namespace apb
