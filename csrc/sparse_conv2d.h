// Direct sparse convolution with the packed layer's epilogue: the S (x) x^ part of a
// packed APB convolution, W^ = alpha*B + S, computed without unfolding x^ (no im2col):
//
//   out[m, n] = dot_scale[m] * dot[m, n]
//             + sparse_scale[m] * sum_{e in row m} values[e] * x^(n, indices[e])
//             + shift[m]
//
// x float32 [B, C, H, W] is the layer's input and x^ its quantized value, the input the
// training layer computes with (InputQuantizer). Columns j = (c*kh + dy)*kw + dx as in
// weight.reshape(M, -1) of a Conv2d weight, positions n = (b*OH + oy)*OW + ox, and
// x^(n, j) = x^[b, c, oy*sh - ph + dy*dh, ox*sw - pw + dx*dw], 0 outside the image
// (zero padding, exact for every quantizer). dot is the binary product B (x) x^ (int32
// popcount result or float32), optional; dot_scale (alpha, the activation step and a
// folded BatchNorm scale), sparse_scale and shift are per output channel.
//
// Layout (why there is no im2col): x^ is written once into zero-bordered "stride
// phase" planes. For stride s, padded input row r = iy + ph goes to phase r % s, row
// r / s (columns likewise), so every kernel tap (dy, dx) of every output position reads
//   plane(c, (dy*dh) % sh, (dx*dw) % sw)[(oy + (dy*dh)/sh) * Wq + ox + (dx*dw)/sw]:
// a fixed offset from the output's own index oy*Wq + ox in a "wide" output of Wq >= OW
// columns. One nonzero is then one contiguous AXPY over all output positions (plus
// Wq - OW discarded columns per row), the inner loop of spmm_csr, and the epilogue
// keeps the OW real ones. The planes hold C * sh*sw * Hq*Wq elements, about as many as
// x itself instead of the kh*kw times larger unfolded matrix.
//
// Element type (PhaseType): quantized inputs are stored as bytes, a quarter of float32's
// cache traffic (the sweep streams the planes, mostly from L2, once per nonzero): codes
// as uint8 0..L, signs as int8 +-1. The sweeps widen them to
// float32 (exact) before each FMA, so the planes hold x^ / unit with unit = step (codes)
// or 1, and the epilogue multiplies unit into sparse_scale. Full-precision inputs keep
// float32 planes. The byte buffer has kPhaseSlack bytes past the last plane: byte sweeps
// load whole vectors of 8 (AVX2, which has no byte-masked load) or 16 bytes (AVX-512, the
// same way), so a tile's last vector may read up to 15 bytes past its range, at the end
// past the planes; those lanes feed only accumulator lanes past the tile, which the
// epilogue never keeps.
//
// Accumulation: each output is a chain of float32 FMAs, one per nonzero of its row in
// CSR order starting from 0, values[e] * (x^ / unit), then
// fma(sparse_scale * unit, acc, fma(dot_scale, dot, shift)) with the product
// sparse_scale * unit rounded to float32 once per channel: every ISA gives bit-identical
// results.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "pack_activations.h"
#include "spmm_csr.h"

namespace apb {

// What x^ is: x itself (full-precision activations), its sign (x < 0 ? -1 : +1, NaN and
// -0.0 give +1), or code * step with code = round(min(max(x, 0), s) / s * L) as in
// pack_activations.h (NaN gives code 0) and step = s / L in float32.
enum class InputQuantizer : int { identity, signs, codes };

struct SparseConvInput {
    InputQuantizer kind;
    float scale;   // s (codes only)
    float levels;  // L = 2^bits - 1 (codes only)
    float step;    // s / L in float32 (codes only)
};

// Throws std::invalid_argument unless bits is 1..8 and scale finite and > 0.
SparseConvInput sparse_conv_codes(double scale, int64_t bits);

struct SparseConvEpilogue {
    const void *dot = nullptr;  // [M, N] int32 or float32, or null (then 0)
    bool dot_is_float = false;
    const float *dot_scale = nullptr;     // [M]; required when dot is given
    const float *sparse_scale = nullptr;  // [M] or null (1)
    const float *shift = nullptr;         // [M] or null (0)
    // Where out[m, b*OH*OW + l] goes: [M, B*OH*OW] as dot (false), or [B, M, OH, OW], the
    // layer's NCHW output (true; the same memory at batch 1).
    bool out_nchw = false;
    // Then out = min(max(out + residual, lower), upper): the end of a residual block,
    // act(conv(x) + shortcut), in the layer's epilogue (docs/design.md, "The packed
    // runtime"). residual (or null: nothing added) is laid out as out; the bounds are
    // applied as max(lower, y), min(upper, y), which keep a NaN y, so the defaults leave
    // every value as it is.
    const float *residual = nullptr;
    float lower = -std::numeric_limits<float>::infinity();
    float upper = std::numeric_limits<float>::infinity();
};

// One output channel's epilogue constants (SparseConvEpilogue's, per channel m) and
// where the residual of the epilogue's first output is (null when none).
struct ChannelEpilogue {
    float dot_scale, sparse_scale, shift, lower, upper;
    const float *residual;
};

// y + residual, then the bounds, as every ISA applies them (see SparseConvEpilogue).
static inline float finish_output(float y, const ChannelEpilogue &c, int64_t i) {
    if (c.residual != nullptr) y += c.residual[i];
    y = c.lower > y ? c.lower : y;
    return c.upper < y ? c.upper : y;
}

// Validates the CSR structure against K = C*kh*kw (spmm_csr_validate) and the size of
// the phase planes, then writes out [a.rows, g.positions()]. Dispatches to the active
// ISA and runs tiles of output channels x positions in parallel.
void sparse_conv2d(const float *x, const Conv2dGeometry &g, const SparseConvInput &in,
                   const CsrMatrix &a, const SparseConvEpilogue &e, float *out);
// The same without the CSR check, for a caller that made it (spmm_csr_validate(a,
// g.columns())): apb_conv2d checks once per call, not once per image. `offsets` are
// sparse_conv2d_offsets(g) made by the caller, or null (made here).
void sparse_conv2d_validated(const float *x, const Conv2dGeometry &g, const SparseConvInput &in,
                             const CsrMatrix &a, const SparseConvEpilogue &e, float *out,
                             const int64_t *offsets = nullptr);

// [g.columns()]: where column j reads in the phase planes, relative to the output index
// (SparseConvTile::offsets). They depend on the geometry but not on the batch, so
// apb_conv2d makes them once per call instead of once per image (an allocation and a
// loop over the columns: 4 % of ResNet-20's time at batch 64, when that loop still
// divided by the stride per column).
std::vector<int64_t> sparse_conv2d_offsets(const Conv2dGeometry &g);

// out float32 [rows, cols] = x^ (the quantized x, quantize_input below) for x float32
// [rows, cols], with the active ISA's vector code.
void sparse_conv_quantize(const float *x, int64_t rows, int64_t cols,
                          const SparseConvInput &in, float *out);

// The planes' element type (see the header comment): f32 for identity, u8 for codes, i8
// for signs.
enum class PhaseType : int { f32, u8, i8 };

// Bytes past the byte planes that a byte sweep may read (its last vector's tail).
constexpr int64_t kPhaseSlack = 64;

// Geometry of the phase planes (see the header comment).
struct PhaseLayout {
    int64_t phases_h, phases_w;  // sh, sw
    int64_t hq, wq;              // rows and columns of one phase plane
    int64_t plane;               // hq * wq
    int64_t image;               // C * sh * sw * plane: one batch item
    int64_t span;                // (OH - 1) * wq + OW: the wide output index range
};

// A block of output channels [m0, m1) of batch item b over the wide output indices
// [n0, n1) (n1 - n0 <= kSparseConvChunk).
struct SparseConvTile {
    const CsrMatrix *a;
    const Conv2dGeometry *g;
    const PhaseLayout *layout;
    const void *phases;       // this batch item's planes, of element type `type`
    PhaseType type;
    float unit;               // the value of one unit of a plane element (step or 1)
    const int64_t *offsets;   // [K]: where column j reads, relative to the output index
    const SparseConvEpilogue *e;
    float *out;
    int64_t b, m0, m1, n0, n1;
};

// Wide outputs per tile. With byte planes a row's per-chunk costs (its batch of nonzeros,
// the sweep and epilogue calls) weigh more than cache residency: 256 measured 0.9x of 512,
// 1024 1.06x on 56x56 and 28x28 layers, 2048 no better than 1024 and half the tiles.
constexpr int64_t kSparseConvChunk = 1024;

// Per ISA: one tile; and the phase planes of input plane bc = b*C + c (build_phases).
void sparse_conv2d_tile_scalar(const SparseConvTile &t);
void sparse_conv2d_tile_avx2(const SparseConvTile &t);
void sparse_conv2d_tile_avx512(const SparseConvTile &t);
void sparse_conv2d_build_scalar(const float *x, const Conv2dGeometry &g, const PhaseLayout &p,
                                const SparseConvInput &in, int64_t bc, float *phases);
void sparse_conv2d_build_avx2(const float *x, const Conv2dGeometry &g, const PhaseLayout &p,
                              const SparseConvInput &in, int64_t bc, float *phases);
void sparse_conv2d_build_avx512(const float *x, const Conv2dGeometry &g, const PhaseLayout &p,
                                const SparseConvInput &in, int64_t bc, float *phases);
// The same as bytes (codes or signs only): x^ / unit, uint8 codes or int8 signs.
void sparse_conv2d_build_bytes_scalar(const float *x, const Conv2dGeometry &g,
                                      const PhaseLayout &p, const SparseConvInput &in,
                                      int64_t bc, uint8_t *phases);
void sparse_conv2d_build_bytes_avx2(const float *x, const Conv2dGeometry &g,
                                    const PhaseLayout &p, const SparseConvInput &in,
                                    int64_t bc, uint8_t *phases);
void sparse_conv2d_build_bytes_avx512(const float *x, const Conv2dGeometry &g,
                                      const PhaseLayout &p, const SparseConvInput &in,
                                      int64_t bc, uint8_t *phases);

// Shared by the per-ISA files; `static` so each keeps its own copy (see pack_signs.h).
namespace sparse_conv_detail {

// A batch of nonzeros over byte planes (T uint8_t or int8_t), as spmm's NonzeroBatch.
template <typename T>
struct ByteBatch {
    float values[spmm_detail::kBatch];
    const T *rows[spmm_detail::kBatch];
    int64_t count;
};

template <typename T>
using BatchOf =
    std::conditional_t<std::is_same_v<T, float>, spmm_detail::NonzeroBatch, ByteBatch<T>>;

// One tile over planes of element type T (t.type), given the ISA's pieces:
// halves_to_floats(src, n, dst) (float16 values), sweep(batch, acc, c0, c1) (spmm_csr's
// inner loop, or its byte-widening twin; it may write up to 15 floats past c1 into acc's
// slack), sweep_fresh (the same from 0, for a row's first batch) and
// epilogue(dot, dot_is_float, channel, acc, acc_stride, out, rows, count): `rows` output
// rows of `count` values, contiguous in out, dot and the channel's residual, acc_stride
// apart in acc. It may read up to 16 floats past a row in acc (acc has the slack) and
// write past a row's end into the run's next rows, which it writes after.
template <typename T, typename HalvesToFloats, typename Sweep, typename SweepFresh,
          typename Epilogue>
static void run_tile(const SparseConvTile &t, HalvesToFloats &&halves_to_floats,
                     Sweep &&sweep, SweepFresh &&sweep_fresh, Epilogue &&epilogue) {
    using spmm_detail::kBatch;
    using spmm_detail::load_index;
    const CsrMatrix &a = *t.a;
    const Conv2dGeometry &g = *t.g;
    const SparseConvEpilogue &e = *t.e;
    const int64_t wq = t.layout->wq;
    const int64_t positions = g.positions();
    const int64_t image_positions = g.out_h * g.out_w;
    const int64_t length = t.n1 - t.n0;
    // Sixteen floats of slack: byte sweeps store whole vectors, up to 15 floats past the
    // tile. The epilogues mask their loads, so no slack value reaches an output.
    alignas(64) float acc[kSparseConvChunk + 16];
    for (int64_t i = kSparseConvChunk; i < kSparseConvChunk + 16; ++i) acc[i] = 0.0f;
    spmm_detail::with_csr_types(a, [&](auto indptr_tag, auto index_tag, auto value_tag) {
        using P = decltype(indptr_tag);
        using I = decltype(index_tag);
        using V = decltype(value_tag);
        const T *phases = static_cast<const T *>(t.phases);
        const auto row_of = [&](int64_t column) { return phases + t.offsets[column] + t.n0; };
        BatchOf<T> batch;
        for (int64_t m = t.m0; m < t.m1; ++m) {
            const int64_t e0 = load_index<P>(a.indptr, m);
            const int64_t e1 = load_index<P>(a.indptr, m + 1);
            if (e0 == e1) {
                for (int64_t i = 0; i < length; ++i) acc[i] = 0.0f;
            }
            for (int64_t e = e0; e < e1; e += kBatch) {
                spmm_detail::fill_batch<I, V>(a, e, e1 - e < kBatch ? e1 - e : kBatch,
                                              halves_to_floats, row_of, batch);
                if (e == e0) {
                    sweep_fresh(batch, acc, int64_t{0}, length);
                } else {
                    sweep(batch, acc, int64_t{0}, length);
                }
            }
            ChannelEpilogue channel{};
            channel.dot_scale = e.dot == nullptr ? 0.0f : e.dot_scale[m];
            // The planes' unit joins the channel's scale (exact when it is 1).
            channel.sparse_scale = e.sparse_scale == nullptr ? t.unit : e.sparse_scale[m] * t.unit;
            channel.shift = e.shift == nullptr ? 0.0f : e.shift[m];
            channel.lower = e.lower;
            channel.upper = e.upper;
            // The wide indices [n0, n1) cover output rows n0 / wq .. (n1-1) / wq, the first
            // and last maybe in part; columns ox >= OW of a row are the discarded ones. A
            // run of whole rows is one epilogue call, however short the rows (a 7x7 image
            // has rows of 7 outputs), the partial rows one call each.
            const auto rows = [&](int64_t oy, int64_t count_rows, int64_t lo, int64_t hi) {
                if (count_rows <= 0 || lo >= hi) return;
                const int64_t n = m * positions + t.b * image_positions + oy * g.out_w + lo;
                const int64_t o = e.out_nchw ? (t.b * a.rows + m) * image_positions +
                                                   oy * g.out_w + lo
                                             : n;
                const void *dot = nullptr;
                if (e.dot != nullptr) {
                    const size_t bytes = e.dot_is_float ? sizeof(float) : sizeof(int32_t);
                    dot = static_cast<const char *>(e.dot) + static_cast<size_t>(n) * bytes;
                }
                channel.residual = e.residual == nullptr ? nullptr : e.residual + o;
                epilogue(dot, e.dot_is_float, channel, acc + (oy * wq + lo - t.n0), wq,
                         t.out + o, count_rows, hi - lo);
            };
            const int64_t oy_last = (t.n1 - 1) / wq;
            int64_t whole_from = -1;  // the first of a run of whole rows, or -1
            for (int64_t oy = t.n0 / wq; oy <= oy_last; ++oy) {
                const int64_t lo = oy * wq < t.n0 ? t.n0 - oy * wq : 0;
                const int64_t row_end = t.n1 - oy * wq;
                const int64_t hi = row_end < g.out_w ? row_end : g.out_w;
                if (lo == 0 && hi == g.out_w) {
                    if (whole_from < 0) whole_from = oy;
                    continue;
                }
                if (whole_from >= 0) rows(whole_from, oy - whole_from, 0, g.out_w);
                whole_from = -1;
                rows(oy, 1, lo, hi);
            }
            if (whole_from >= 0) rows(whole_from, oy_last + 1 - whole_from, 0, g.out_w);
        }
    });
}

// x^ / unit of one input (the code, the sign or x), as every ISA computes it.
static inline float quantize_units(float x, const SparseConvInput &in) {
    switch (in.kind) {
        case InputQuantizer::signs: return x < 0.0f ? -1.0f : 1.0f;
        case InputQuantizer::codes:
            return static_cast<float>(
                pack_activations_detail::quantize_code(x, in.scale, in.levels));
        default: return x;
    }
}

// x^ of one input, as every ISA computes it.
static inline float quantize_input(float x, const SparseConvInput &in) {
    const float units = quantize_units(x, in);
    return in.kind == InputQuantizer::codes ? units * in.step : units;
}

// The byte a byte plane stores for x (codes or signs only): -1 wraps to 0xff, read back
// as int8 by the sweep.
static inline uint8_t quantize_byte(float x, const SparseConvInput &in) {
    return static_cast<uint8_t>(static_cast<int32_t>(quantize_units(x, in)));
}

// x^ as a phase plane of element type T stores it: quantize_byte for byte planes,
// quantize_input for float planes.
template <typename T>
static inline T quantize_as(float x, const SparseConvInput &in) {
    if constexpr (sizeof(T) == 1) {
        return quantize_byte(x, in);
    } else {
        return quantize_input(x, in);
    }
}

// Whether some kernel tap reads phase `phase` along one axis: (d * dilation) % stride.
// A 1x1 stride-2 shortcut reads one phase of four; the others are never built.
static inline bool phase_is_read(int64_t phase, int64_t kernel, int64_t dilation,
                                 int64_t stride) {
    for (int64_t d = 0; d < kernel && d < stride; ++d) {
        if (d * dilation % stride == phase) return true;
    }
    return false;
}

// The phase planes of input plane bc = b*C + c that some tap reads, row by row: phase
// (py, px) row i holds padded row r = py + sh*i, padded columns q = px + sw*k. Every
// element of a phase some tap reads is written (x^ inside the image, 0 in the padding
// and past it), so the buffer needs no clearing; the other phases are neither written
// nor read. The ISA's row(src, sw, k_lo, k_hi, wq, dst) writes one phase row:
// dst[k] = x^(src[sw*(k - k_lo)]) for k in [k_lo, k_hi), 0 for the rest of [0, wq);
// src is null when k_lo == k_hi == 0 (a row of padding).
template <typename T, typename Row>
static void build_phases(const float *x, const Conv2dGeometry &g, const PhaseLayout &p,
                         int64_t bc, T *phases, Row &&row) {
    const int64_t sh = p.phases_h, sw = p.phases_w;
    const float *image = x + bc * g.height * g.width;
    for (int64_t px = 0; px < sw; ++px) {
        if (!phase_is_read(px, g.kernel_w, g.dilation_w, g.stride_w)) continue;
        // Columns k whose input ix = px + sw*k - pw lies in [0, W): [k_lo, k_hi).
        const int64_t k_lo = g.pad_w > px ? (g.pad_w - px + sw - 1) / sw : 0;
        const int64_t past = g.width + g.pad_w - px;  // k < ceil(past / sw)
        int64_t k_hi = past > 0 ? (past + sw - 1) / sw : 0;
        k_hi = k_hi < p.wq ? k_hi : p.wq;
        const bool empty = k_hi <= k_lo;
        const int64_t ix_lo = px + sw * k_lo - g.pad_w;
        for (int64_t py = 0; py < sh; ++py) {
            if (!phase_is_read(py, g.kernel_h, g.dilation_h, g.stride_h)) continue;
            T *dst = phases + ((bc * sh + py) * sw + px) * p.plane;
            for (int64_t i = 0; i < p.hq; ++i, dst += p.wq) {
                const int64_t iy = py + sh * i - g.pad_h;
                if (empty || iy < 0 || iy >= g.height) {
                    row(nullptr, sw, int64_t{0}, int64_t{0}, p.wq, dst);
                } else {
                    row(image + iy * g.width + ix_lo, sw, k_lo, k_hi, p.wq, dst);
                }
            }
        }
    }
}

// Whether bc's phase plane is the input plane itself inside a zero border as wide as the
// padding (stride 1: one phase, input (y, x) at row y + pad_h, column x + pad_w).
static inline bool contiguous_phase_plane(const Conv2dGeometry &g, const PhaseLayout &p) {
    return p.phases_h == 1 && p.phases_w == 1 && p.hq == g.height + 2 * g.pad_h &&
           p.wq == g.width + 2 * g.pad_w;
}

// Byte plane bc of such a layer (contiguous_phase_plane): zeros, then the inputs in their
// own order, V at a time across row ends, each vector's codes stored row piece by row
// piece. build_phases goes row by row instead, and on small images its per-row cost is
// most of the time (8 x 8: 2.8 cycles an element, 0.7 at 32 x 32, AVX-512 on Zen 4).
// quantize(src, count) returns the codes of src[0, count) in a vector (lanes past count
// unspecified); store(dst, codes, first, count) writes lanes [first, first + count) of
// it to dst[0, count).
template <int V, typename Quantize, typename Store>
static void build_contiguous_plane(const float *x, const Conv2dGeometry &g,
                                   const PhaseLayout &p, int64_t bc, uint8_t *phases,
                                   Quantize &&quantize, Store &&store) {
    const int64_t n = g.height * g.width;
    const float *image = x + bc * n;
    uint8_t *plane = phases + bc * p.plane;
    std::memset(plane, 0, static_cast<size_t>(p.plane));
    uint8_t *row = plane + g.pad_h * p.wq + g.pad_w;  // input row 0
    int64_t col = 0;
    for (int64_t i = 0; i < n; i += V) {
        const int64_t count = n - i < V ? n - i : V;
        const auto codes = quantize(image + i, count);
        for (int64_t done = 0; done < count;) {
            const int64_t run = count - done < g.width - col ? count - done : g.width - col;
            store(row + col, codes, done, run);
            done += run;
            col += run;
            if (col == g.width) {
                col = 0;
                row += p.wq;
            }
        }
    }
}

}  // namespace sparse_conv_detail

}  // namespace apb
