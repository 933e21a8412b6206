// Validation, phase-plane construction, dispatch and threading for sparse_conv2d;
// compiled without ISA flags.
#include "sparse_conv2d.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "threads.h"
#include "workspace.h"

namespace apb {

namespace {

using TileFn = void (*)(const SparseConvTile &);
using BuildFn = void (*)(const float *, const Conv2dGeometry &, const PhaseLayout &,
                         const SparseConvInput &, int64_t, float *);
using BuildBytesFn = void (*)(const float *, const Conv2dGeometry &, const PhaseLayout &,
                              const SparseConvInput &, int64_t, uint8_t *);

struct Kernels {
    TileFn tile;
    BuildFn build;
    BuildBytesFn build_bytes;
};

Kernels kernels_for(Isa isa) {
    switch (isa) {
#if defined(APB_HAVE_X86_KERNELS)
        case Isa::avx512:
            return {sparse_conv2d_tile_avx512, sparse_conv2d_build_avx512,
                    sparse_conv2d_build_bytes_avx512};
        case Isa::avx2:
            return {sparse_conv2d_tile_avx2, sparse_conv2d_build_avx2,
                    sparse_conv2d_build_bytes_avx2};
#endif
        default:
            return {sparse_conv2d_tile_scalar, sparse_conv2d_build_scalar,
                    sparse_conv2d_build_bytes_scalar};
    }
}

// Output channels per tile: enough rows to reuse the chunk of phase planes they all
// read while it is in cache, few enough that small layers still split over threads.
constexpr int64_t kTileRows = 16;

PhaseLayout phase_layout(const Conv2dGeometry &g) {
    PhaseLayout p{};
    p.phases_h = g.stride_h;
    p.phases_w = g.stride_w;
    // Tap (dy, dx) of output (oy, ox) reads phase row oy + (dy*dh)/sh, column
    // ox + (dx*dw)/sw: the largest are these minus one.
    p.hq = g.out_h + (g.kernel_h - 1) * g.dilation_h / g.stride_h;
    p.wq = g.out_w + (g.kernel_w - 1) * g.dilation_w / g.stride_w;
    const double image = static_cast<double>(g.channels) * p.phases_h * p.phases_w *
                         static_cast<double>(p.hq) * static_cast<double>(p.wq);
    if (image * static_cast<double>(g.batch > 0 ? g.batch : 1) >= 0x1p40) {
        throw std::invalid_argument("sparse_conv2d: the input's phase planes would not fit "
                                    "in memory; use a smaller batch or input");
    }
    p.plane = p.hq * p.wq;
    p.image = g.channels * p.phases_h * p.phases_w * p.plane;
    p.span = (g.out_h - 1) * p.wq + g.out_w;
    return p;
}

// Where column j = (c*kh + dy)*kw + dx reads: its plane's start plus the tap's fixed
// offset, so that output index i reads phases[offsets[j] + i]. The taps' offsets are the
// same in every channel: computed once (their divisions by the stride were per column,
// a serial 0.6 % of a two-thread ResNet-18 forward), then shifted by whole channels.
std::vector<int64_t> column_offsets(const Conv2dGeometry &g, const PhaseLayout &p) {
    const int64_t taps = g.kernel_h * g.kernel_w;
    std::vector<int64_t> offsets(static_cast<size_t>(g.columns()));
    if (offsets.empty()) return offsets;
    for (int64_t dy = 0; dy < g.kernel_h; ++dy) {
        const int64_t ry = dy * g.dilation_h % g.stride_h;
        const int64_t qy = dy * g.dilation_h / g.stride_h;
        for (int64_t dx = 0; dx < g.kernel_w; ++dx) {
            const int64_t rx = dx * g.dilation_w % g.stride_w;
            const int64_t qx = dx * g.dilation_w / g.stride_w;
            offsets[static_cast<size_t>(dy * g.kernel_w + dx)] =
                (ry * p.phases_w + rx) * p.plane + qy * p.wq + qx;
        }
    }
    const int64_t channel = p.phases_h * p.phases_w * p.plane;
    for (int64_t c = 1; c < g.channels; ++c) {
        for (int64_t t = 0; t < taps; ++t) {
            offsets[static_cast<size_t>(c * taps + t)] =
                offsets[static_cast<size_t>(t)] + c * channel;
        }
    }
    return offsets;
}

struct PhaseWorkspace;       // thread_workspace tags
struct PhaseBytesWorkspace;

}  // namespace

SparseConvInput sparse_conv_codes(double scale, int64_t bits) {
    const ActivationQuantizer q = code_quantizer(scale, bits);
    return SparseConvInput{InputQuantizer::codes, q.scale, q.levels, q.scale / q.levels};
}

void sparse_conv_quantize(const float *x, int64_t rows, int64_t cols,
                          const SparseConvInput &in, float *out) {
    if (rows <= 0 || cols <= 0) return;
    // x as one image of one channel, rows x cols, under a 1x1 kernel: its only phase plane
    // is x^ itself, built by the active ISA's vector row builder.
    const Conv2dGeometry g = conv2d_geometry(1, 1, rows, cols, 1, 1, 1, 1, 0, 0, 1, 1);
    kernels_for(active_isa()).build(x, g, phase_layout(g), in, 0, out);
}

void sparse_conv2d(const float *x, const Conv2dGeometry &g, const SparseConvInput &in,
                   const CsrMatrix &a, const SparseConvEpilogue &e, float *out) {
    spmm_csr_validate(a, g.columns());
    sparse_conv2d_validated(x, g, in, a, e, out);
}

std::vector<int64_t> sparse_conv2d_offsets(const Conv2dGeometry &g) {
    return column_offsets(g, phase_layout(g));
}

void sparse_conv2d_validated(const float *x, const Conv2dGeometry &g, const SparseConvInput &in,
                             const CsrMatrix &a, const SparseConvEpilogue &e, float *out,
                             const int64_t *offsets) {
    if (e.dot != nullptr && e.dot_scale == nullptr) {
        throw std::invalid_argument("sparse_conv2d: dot needs its dot_scale");
    }
    const PhaseLayout layout = phase_layout(g);
    const int64_t positions = g.positions();
    if (a.rows == 0 || positions == 0) return;
    const Kernels k = kernels_for(active_isa());  // may throw: outside the team
    // Quantized inputs go into byte planes, x^ / unit (the header comment).
    const PhaseType type = in.kind == InputQuantizer::codes   ? PhaseType::u8
                           : in.kind == InputQuantizer::signs ? PhaseType::i8
                                                              : PhaseType::f32;
    const float unit = in.kind == InputQuantizer::codes ? in.step : 1.0f;
    const size_t element = type == PhaseType::f32 ? sizeof(float) : 1;
    const char *phase_data = nullptr;
    std::vector<int64_t> own_offsets;
    float *floats = nullptr;
    uint8_t *bytes = nullptr;
    if (a.nnz > 0) {
        const size_t count = static_cast<size_t>(g.batch * layout.image);
        if (type == PhaseType::f32) {
            floats = thread_workspace<PhaseWorkspace, float>(count);
            phase_data = reinterpret_cast<const char *>(floats);
        } else {
            bytes = thread_workspace<PhaseBytesWorkspace, uint8_t>(count + kPhaseSlack);
            // The slack is only read into lanes that are discarded; zero keeps it tidy.
            std::memset(bytes + count, 0, kPhaseSlack);
            phase_data = reinterpret_cast<const char *>(bytes);
        }
        if (offsets == nullptr) {
            own_offsets = column_offsets(g, layout);
            offsets = own_offsets.data();
        }
    }
    const int64_t planes = a.nnz > 0 ? g.batch * g.channels : 0;
    const int64_t row_tiles = (a.rows + kTileRows - 1) / kTileRows;
    const int64_t chunks = (layout.span + kSparseConvChunk - 1) / kSparseConvChunk;
    const int64_t tiles = g.batch * chunks * row_tiles;
    // One team for both phases, sized by the sweeps' work: the planes are split over it
    // whenever the sweeps are, however small they are. Sized by their own elements they
    // stayed on one thread below 128 Ki elements (every VGG-Small layer after the first)
    // while the other thread waited at the region's start: the sparse part scaled
    // 1.02-1.5x on two threads.
    const int nt = threads_for((a.nnz + a.rows) * positions);
    const auto build = [&](int64_t bc) {
        if (floats != nullptr) {
            k.build(x, g, layout, in, bc, floats);
        } else {
            k.build_bytes(x, g, layout, in, bc, bytes);
        }
    };
    const auto tile = [&](int64_t i) {
        const int64_t b = i / (chunks * row_tiles);
        const int64_t n0 = (i / row_tiles % chunks) * kSparseConvChunk;
        const int64_t m0 = (i % row_tiles) * kTileRows;
        const SparseConvTile t{&a,
                               &g,
                               &layout,
                               phase_data == nullptr
                                   ? nullptr
                                   : phase_data + static_cast<size_t>(b * layout.image) * element,
                               type,
                               unit,
                               offsets,
                               &e,
                               out,
                               b,
                               m0,
                               m0 + kTileRows < a.rows ? m0 + kTileRows : a.rows,
                               n0,
                               n0 + kSparseConvChunk < layout.span ? n0 + kSparseConvChunk
                                                                   : layout.span};
        k.tile(t);
    };
    if (nt <= 1) {
        for (int64_t bc = 0; bc < planes; ++bc) build(bc);
        for (int64_t i = 0; i < tiles; ++i) tile(i);
        return;
    }
    // Channel blocks vary fastest, so the threads work on the same chunk of the planes.
#pragma omp parallel num_threads(nt)
    {
#pragma omp for schedule(static)
        for (int64_t bc = 0; bc < planes; ++bc) build(bc);
#pragma omp for schedule(dynamic)
        for (int64_t i = 0; i < tiles; ++i) tile(i);
    }
}

}  // namespace apb
