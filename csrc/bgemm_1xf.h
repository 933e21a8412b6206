// Binary weights times full-precision activations (weight-only binarization).
//
//   out[m, n] = sum_j s(m, j) * x[n, j],   s(m, j) = -1 if bit j of row m is 1, else +1
//
// with the weights packed as pack_signs does (uint64 [M, ceil(K/64)], bit j of word w
// is column 64*w + j) and x float32 [N, K] row-major. No multiplication by a weight
// value is ever needed: each product is x or -x (sign-select), accumulated in float32.
// Bits past K are never read as columns, whatever they hold.
#pragma once

#include <cstdint>
#include <utility>

namespace apb {

// out is float32 [M, N] row-major. Dispatches to the active ISA, splits the output
// into blocks run in parallel. Reads exactly M*ceil(K/64) words and N*K floats.
void bgemm_1xf(const uint64_t *w, int64_t M, const float *x, int64_t N, int64_t K,
               float *out);

// One output block, rows [m0, m1) and columns [n0, n1) of out, per ISA. The x86 ones
// exist only in x86 builds (APB_HAVE_X86_KERNELS) and must only run when
// cpu_features() says so.
struct Bgemm1xfBlock {
    const uint64_t *w;  // [M, words]
    const float *x;     // [N, K]
    float *out;         // [M, N]
    int64_t N, K, words;
    int64_t m0, m1, n0, n1;
};
void bgemm_1xf_block_scalar(const Bgemm1xfBlock &b);
void bgemm_1xf_block_avx2(const Bgemm1xfBlock &b);
void bgemm_1xf_block_avx512(const Bgemm1xfBlock &b);

// Shared by the per-ISA files; `static` so that each file keeps its own copy, compiled
// with its own flags (see pack_signs.h).
namespace bgemm_1xf_detail {

// Weight row m as bytes: on a little-endian machine, bit j of the row is bit j % 8 of
// byte j / 8, so eight columns' signs are one byte load.
static inline const uint8_t *weight_bytes(const Bgemm1xfBlock &b, int64_t m) {
    return reinterpret_cast<const uint8_t *>(b.w + m * b.words);
}

// Walks a block in register tiles of up to MB weight rows x NB activation rows: the NB
// activation rows (NB*K floats) stay in cache while every weight row of the block
// passes over them. Tile<mb, nb>::run(b, m, n) computes out[m..m+mb, n..n+nb]; the
// remainders at the block's edges get smaller instantiations.
template <template <int, int> class Tile, int MB, int NB>
struct TileGrid {
    using Fn = void (*)(const Bgemm1xfBlock &, int64_t, int64_t);

    template <int mb, int nb>
    static constexpr Fn at() {
        return &Tile<mb, nb>::run;
    }
    template <int mb, int... nbs>
    static constexpr void fill_row(Fn (&row)[NB], std::integer_sequence<int, nbs...>) {
        ((row[nbs] = at<mb, nbs + 1>()), ...);
    }
    template <int... mbs>
    static constexpr void fill(Fn (&grid)[MB][NB], std::integer_sequence<int, mbs...>) {
        (fill_row<mbs + 1>(grid[mbs], std::make_integer_sequence<int, NB>{}), ...);
    }

    static void run_block(const Bgemm1xfBlock &b) {
        Fn grid[MB][NB] = {};
        fill(grid, std::make_integer_sequence<int, MB>{});
        for (int64_t n = b.n0; n < b.n1; n += NB) {
            const int64_t nb = b.n1 - n < NB ? b.n1 - n : NB;
            for (int64_t m = b.m0; m < b.m1; m += MB) {
                const int64_t mb = b.m1 - m < MB ? b.m1 - m : MB;
                grid[mb - 1][nb - 1](b, m, n);
            }
        }
    }
};

}  // namespace bgemm_1xf_detail

}  // namespace apb
