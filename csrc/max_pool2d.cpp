// Max pooling, portable C++. Why by hand: at batch 1 torch's NCHW max_pool2d costs
// 6-11 µs on LeNet-5's maps (dispatch and index bookkeeping), more than the packed
// convolution before it spends on its sparse part; this kernel is a loop over planes.
// The common 2x2 stride-2 window has its own loop, which the compiler vectorizes.
#include "max_pool2d.h"

#include <algorithm>
#include <cmath>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "cpu_features.h"
#include "threads.h"

namespace apb {

namespace {

int64_t thread_index() {
#if defined(_OPENMP)
    return omp_get_thread_num();
#else
    return 0;
#endif
}

using max_pool_detail::bound;
using max_pool_detail::nan_max_scalar;

// max_pool_detail::nan_max_scalar's rule in the form the compiler vectorizes in loops over
// a row (the 2 x 2 windows, the vertical pass), where the two-select form vectorized worse
// (0.63x on 2 x 2 windows).
inline float nan_max(float a, float b) { return (b > a || std::isnan(b)) ? b : a; }

void pool_plane_2x2(const float *x, const MaxPool2dGeometry &g, float lower, float upper,
                    float *out) {
    for (int64_t oy = 0; oy < g.out_h; ++oy) {
        const float *r0 = x + 2 * oy * g.width;
        const float *r1 = r0 + g.width;
        float *o = out + oy * g.out_w;
        for (int64_t ox = 0; ox < g.out_w; ++ox) {
            const float top = nan_max(r0[2 * ox], r0[2 * ox + 1]);
            o[ox] = bound(nan_max(top, nan_max(r1[2 * ox], r1[2 * ox + 1])), lower, upper);
        }
    }
}

// Any window: per output row, the maximum over the window's rows first (a vertical pass
// over whole image rows into `col`), then over each window's columns: 3x faster than
// torch's NCHW kernel on ResNet-18's 3x3 stride-2 pool (a channels-last stem output goes
// to max_pool2d_channels_last instead).
void pool_plane(const float *x, const MaxPool2dGeometry &g, float lower, float upper,
                float *out, float *col) {
    for (int64_t oy = 0; oy < g.out_h; ++oy) {
        const int64_t y0 = std::max<int64_t>(0, oy * g.stride_h - g.pad_h);
        const int64_t y1 = std::min(g.height, oy * g.stride_h - g.pad_h + g.kernel_h);
        std::copy(x + y0 * g.width, x + (y0 + 1) * g.width, col);
        for (int64_t iy = y0 + 1; iy < y1; ++iy) {
            const float *row = x + iy * g.width;
            for (int64_t ix = 0; ix < g.width; ++ix) col[ix] = nan_max(col[ix], row[ix]);
        }
        for (int64_t ox = 0; ox < g.out_w; ++ox) {
            const int64_t x0 = std::max<int64_t>(0, ox * g.stride_w - g.pad_w);
            const int64_t x1 = std::min(g.width, ox * g.stride_w - g.pad_w + g.kernel_w);
            float m = col[x0];
            for (int64_t ix = x0 + 1; ix < x1; ++ix) m = nan_max_scalar(m, col[ix]);
            out[oy * g.out_w + ox] = bound(m, lower, upper);
        }
    }
}

using ClRowFn = void (*)(const float *, const MaxPool2dGeometry &, int64_t, int64_t, PoolBounds,
                        float *, float *);

ClRowFn cl_row_for(Isa isa) {
    switch (isa) {
#if defined(APB_HAVE_X86_KERNELS)
        case Isa::avx512: return max_pool2d_cl_row_avx512;
        case Isa::avx2: return max_pool2d_cl_row_avx2;
#endif
        default: return max_pool2d_cl_row_scalar;
    }
}

}  // namespace

int64_t max_pool2d_out_size(int64_t size, int64_t kernel, int64_t stride, int64_t pad) {
    const int64_t span = size + 2 * pad - kernel;
    return span < 0 ? -1 : span / stride + 1;
}

void max_pool2d(const float *x, const MaxPool2dGeometry &g, float *out, float lower,
                float upper) {
    const bool two_by_two = g.kernel_h == 2 && g.kernel_w == 2 && g.stride_h == 2 &&
                            g.stride_w == 2 && g.pad_h == 0 && g.pad_w == 0;
    const int64_t in_plane = g.height * g.width, out_plane = g.out_h * g.out_w;
    const int threads = threads_for(g.planes * in_plane);
    // One image row of scratch per thread, allocated here: a throw inside the parallel
    // region would end the process.
    std::vector<float> cols(two_by_two ? 0 : static_cast<size_t>(threads * g.width));
    parallel_for(threads, g.planes, [&](int64_t p) {
        const float *src = x + p * in_plane;
        float *dst = out + p * out_plane;
        // One thread runs the loop itself, in no team of its own (parallel_for): inside
        // another region thread_index() would be that region's, past this scratch.
        float *col = cols.data() + (threads > 1 ? thread_index() : 0) * g.width;
        if (two_by_two) {
            pool_plane_2x2(src, g, lower, upper, dst);
        } else {
            pool_plane(src, g, lower, upper, dst, col);
        }
    });
}

void max_pool2d_channels_last(const float *x, const MaxPool2dGeometry &g, int64_t channels,
                              float *out, float lower, float upper) {
    if (g.planes <= 0 || channels <= 0) return;
    const ClRowFn pool_row = cl_row_for(active_isa());  // may throw: outside the team
    const int64_t batch = g.planes / channels;
    const int64_t in_image = g.height * g.width * channels;
    const int64_t out_image = channels * g.out_h * g.out_w;
    const int64_t row_floats = g.out_w * channels;
    const int threads = threads_for(g.planes * g.height * g.width);
    // One output row of scratch per thread, allocated here (see max_pool2d).
    std::vector<float> rows(static_cast<size_t>(threads * row_floats));
    parallel_for(threads, batch * g.out_h, [&](int64_t i) {
        const int64_t b = i / g.out_h;
        float *row = rows.data() + (threads > 1 ? thread_index() : 0) * row_floats;
        pool_row(x + b * in_image, g, channels, i % g.out_h, PoolBounds{lower, upper}, row,
                 out + b * out_image);
    });
}

}  // namespace apb
