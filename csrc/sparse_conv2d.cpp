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
using QuantizeFn = void (*)(const float *, int64_t, const SparseConvInput &, float *);

struct Kernels {
    TileFn tile;
    QuantizeFn quantize;
};

Kernels kernels_for(Isa isa) {
    switch (isa) {
#if defined(APB_HAVE_X86_KERNELS)
        case Isa::avx512: return {sparse_conv2d_tile_avx512, sparse_conv2d_quantize_avx512};
        case Isa::avx2: return {sparse_conv2d_tile_avx2, sparse_conv2d_quantize_avx2};
#endif
        default: return {sparse_conv2d_tile_scalar, sparse_conv2d_quantize_scalar};
    }
}

// Output channels per tile: enough rows to reuse the chunk of phase planes they all
// read while it is in cache, few enough that small layers still split over threads.
constexpr int64_t kTileRows = 16;

// Inputs quantized per step of the phase-plane construction (a stack buffer: no
// allocation inside the parallel region, where an exception cannot escape).
constexpr int64_t kQuantizeBlock = 256;

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
// offset, so that output index i reads phases[offsets[j] + i].
std::vector<int64_t> column_offsets(const Conv2dGeometry &g, const PhaseLayout &p) {
    std::vector<int64_t> offsets(static_cast<size_t>(g.columns()));
    size_t j = 0;
    for (int64_t c = 0; c < g.channels; ++c) {
        for (int64_t dy = 0; dy < g.kernel_h; ++dy) {
            const int64_t ry = dy * g.dilation_h % g.stride_h;
            const int64_t qy = dy * g.dilation_h / g.stride_h;
            for (int64_t dx = 0; dx < g.kernel_w; ++dx) {
                const int64_t rx = dx * g.dilation_w % g.stride_w;
                const int64_t qx = dx * g.dilation_w / g.stride_w;
                offsets[j++] = ((c * p.phases_h + ry) * p.phases_w + rx) * p.plane +
                               qy * p.wq + qx;
            }
        }
    }
    return offsets;
}

// Whether some kernel tap reads phase `phase` along one axis: (d * dilation) % stride.
// A 1x1 stride-2 shortcut reads one phase of four; the others are never built.
bool phase_is_read(int64_t phase, int64_t kernel, int64_t dilation, int64_t stride) {
    for (int64_t d = 0; d < kernel && d < stride; ++d) {
        if (d * dilation % stride == phase) return true;
    }
    return false;
}

// Phase row i of phase py of channel bc = b*C + c, for every phase px: padded row
// r = py + sh*i, padded column q = px + sw*k. Every element of a phase some tap reads is
// written (x^ inside the image, 0 in the padding and past it), so the buffer needs no
// clearing; the phases no tap reads are neither written nor read.
void build_phase_row(const float *x, const Conv2dGeometry &g, const PhaseLayout &p,
                     const SparseConvInput &in, QuantizeFn quantize, int64_t bc, int64_t py,
                     int64_t i, float *phases) {
    if (!phase_is_read(py, g.kernel_h, g.dilation_h, g.stride_h)) return;
    const int64_t iy = py + p.phases_h * i - g.pad_h;
    float *rows = phases + (bc * p.phases_h + py) * p.phases_w * p.plane + i * p.wq;
    if (iy < 0 || iy >= g.height) {
        for (int64_t px = 0; px < p.phases_w; ++px) {
            if (!phase_is_read(px, g.kernel_w, g.dilation_w, g.stride_w)) continue;
            std::memset(rows + px * p.plane, 0, static_cast<size_t>(p.wq) * sizeof(float));
        }
        return;
    }
    const float *src = x + (bc * g.height + iy) * g.width;
    for (int64_t px = 0; px < p.phases_w; ++px) {
        if (!phase_is_read(px, g.kernel_w, g.dilation_w, g.stride_w)) continue;
        float *dst = rows + px * p.plane;
        // Columns k whose input ix = px + sw*k - pw lies in [0, W): [k_lo, k_hi).
        const int64_t k_lo = g.pad_w > px ? (g.pad_w - px + p.phases_w - 1) / p.phases_w : 0;
        const int64_t past = g.width + g.pad_w - px;  // k < ceil(past / sw)
        int64_t k_hi = past > 0 ? (past + p.phases_w - 1) / p.phases_w : 0;
        k_hi = k_hi < p.wq ? k_hi : p.wq;
        if (k_hi <= k_lo) {
            std::memset(dst, 0, static_cast<size_t>(p.wq) * sizeof(float));
            continue;
        }
        std::memset(dst, 0, static_cast<size_t>(k_lo) * sizeof(float));
        std::memset(dst + k_hi, 0, static_cast<size_t>(p.wq - k_hi) * sizeof(float));
        const int64_t ix_lo = px + p.phases_w * k_lo - g.pad_w;
        if (p.phases_w == 1) {
            quantize(src + ix_lo, k_hi - k_lo, in, dst + k_lo);
            continue;
        }
        // Strided: quantize consecutive inputs into a stack block, keep every sw-th.
        alignas(32) float block[kQuantizeBlock];
        const int64_t per_block =
            kQuantizeBlock / p.phases_w > 0 ? kQuantizeBlock / p.phases_w : 1;
        for (int64_t k0 = k_lo; k0 < k_hi; k0 += per_block) {
            const int64_t n = k_hi - k0 < per_block ? k_hi - k0 : per_block;
            const int64_t ix0 = px + p.phases_w * k0 - g.pad_w;
            quantize(src + ix0, (n - 1) * p.phases_w + 1, in, block);
            for (int64_t t = 0; t < n; ++t) dst[k0 + t] = block[t * p.phases_w];
        }
    }
}

// Small stride-1 images (H*W <= kQuantizeBlock, the deep layers): the whole channel
// quantized in one call, then copied row by row with its zero border. The row-by-row
// path would pay a call and two memsets per row of as few as 7 inputs.
void build_small_plane(const float *x, const Conv2dGeometry &g, const PhaseLayout &p,
                       const SparseConvInput &in, QuantizeFn quantize, int64_t bc,
                       float *phases) {
    alignas(32) float block[kQuantizeBlock];
    quantize(x + bc * g.height * g.width, g.height * g.width, in, block);
    float *plane = phases + bc * p.plane;
    for (int64_t r = 0; r < p.hq; ++r) {
        float *row = plane + r * p.wq;
        const int64_t iy = r - g.pad_h;
        const bool inside = 0 <= iy && iy < g.height;
        for (int64_t k = 0; k < p.wq; ++k) {
            const int64_t ix = k - g.pad_w;
            row[k] = inside && 0 <= ix && ix < g.width ? block[iy * g.width + ix] : 0.0f;
        }
    }
}

struct PhaseWorkspace;  // thread_workspace tag

}  // namespace

SparseConvInput sparse_conv_codes(double scale, int64_t bits) {
    const ActivationQuantizer q = code_quantizer(scale, bits);
    return SparseConvInput{InputQuantizer::codes, q.scale, q.levels, q.scale / q.levels};
}

void sparse_conv2d(const float *x, const Conv2dGeometry &g, const SparseConvInput &in,
                   const CsrMatrix &a, const SparseConvEpilogue &e, float *out) {
    spmm_csr_validate(a, g.columns());
    if (e.dot != nullptr && e.dot_scale == nullptr) {
        throw std::invalid_argument("sparse_conv2d: dot needs its dot_scale");
    }
    const PhaseLayout layout = phase_layout(g);
    const int64_t positions = g.positions();
    if (a.rows == 0 || positions == 0) return;
    const Kernels k = kernels_for(active_isa());  // may throw: outside the team
    const float *phase_data = nullptr;
    std::vector<int64_t> offsets;
    if (a.nnz > 0) {
        float *phases =
            thread_workspace<PhaseWorkspace, float>(static_cast<size_t>(g.batch * layout.image));
        offsets = column_offsets(g, layout);
        const int build_threads = threads_for(g.batch * layout.image);
        if (g.stride_h == 1 && g.stride_w == 1 && g.height * g.width <= kQuantizeBlock) {
            const int64_t planes = g.batch * g.channels;
#pragma omp parallel for num_threads(build_threads) schedule(static)
            for (int64_t bc = 0; bc < planes; ++bc) {
                build_small_plane(x, g, layout, in, k.quantize, bc, phases);
            }
        } else {
            const int64_t rows = g.batch * g.channels * layout.phases_h * layout.hq;
#pragma omp parallel for num_threads(build_threads) schedule(static)
            for (int64_t row = 0; row < rows; ++row) {
                const int64_t i = row % layout.hq;
                const int64_t py = row / layout.hq % layout.phases_h;
                build_phase_row(x, g, layout, in, k.quantize,
                                row / (layout.hq * layout.phases_h), py, i, phases);
            }
        }
        phase_data = phases;
    }
    const int64_t row_tiles = (a.rows + kTileRows - 1) / kTileRows;
    const int64_t chunks = (layout.span + kSparseConvChunk - 1) / kSparseConvChunk;
    const int64_t tiles = g.batch * chunks * row_tiles;
    const int nt = threads_for((a.nnz + a.rows) * positions);
    const int64_t *offset_data = offsets.data();
    // Channel blocks vary fastest, so the threads work on the same chunk of the planes.
#pragma omp parallel for num_threads(nt) schedule(dynamic)
    for (int64_t i = 0; i < tiles; ++i) {
        const int64_t b = i / (chunks * row_tiles);
        const int64_t n0 = (i / row_tiles % chunks) * kSparseConvChunk;
        const int64_t m0 = (i % row_tiles) * kTileRows;
        const SparseConvTile t{&a,
                               &g,
                               &layout,
                               phase_data == nullptr ? nullptr : phase_data + b * layout.image,
                               offset_data,
                               &e,
                               out,
                               b,
                               m0,
                               m0 + kTileRows < a.rows ? m0 + kTileRows : a.rows,
                               n0,
                               n0 + kSparseConvChunk < layout.span ? n0 + kSparseConvChunk
                                                                   : layout.span};
        k.tile(t);
    }
}

}  // namespace apb
