// Bitwise GEMM: dot products of packed bit rows through XOR/AND + popcount.
//
// Operands are rows of W little-endian uint64 words (bit j of word w is column
// 64*w + j), stacked into bit-planes [planes, rows, W] (a single-plane operand is
// [rows, W]). All three public kernels are one computation,
//
//   acc[m, n] = sum_{q < Q, p < P} 2^(q+p) * sum_{w < W} popcount(op(w[q,m,w], x[p,n,w]) & mask_w)
//
// with op = XOR (1x1) or AND (1x2, 2x2) and mask_w all ones except for the last word,
// whose mask selects the columns below K, followed by an affine epilogue per output:
//
//   bgemm_1x1: out = K - 2*acc                 (Q = P = 1, XOR)    = sum_j s_w * s_x
//   bgemm_1x2: out = sum_p 2^p popcount(x[p,n]) - 2*acc   (Q = 1, AND) = sum_j s_w * code_x
//   bgemm_2x2: out = acc                       (AND)               = sum_j code_w * code_x
//
// Bits past K in the last word are masked away, so padding bits that are not zero
// change nothing and no word outside an operand is ever read.
//
// Structure, for the benefit of speed work (the hot loop is the microkernel):
//   - bgemm.cpp, compiled without ISA flags: dispatch, cache blocking over M and N,
//     OpenMP over independent output blocks, the epilogue's per-column constants.
//   - Three kinds of ISA kernel:
//     * packed (AVX2, bgemm_avx2.h): the ISA repacks both operands into panels laid
//       out for its microkernel (PackedPopcountGemmKernel below); bgemm.cpp allocates
//       the panels and runs the packing and the blocks on its threads.
//     * in place (scalar, AVX-512): a "kernel set" struct with the register tile
//       (kMR weight rows x kNR activation rows) and the microkernel
//       `tile<op, MR, NR>` that counts one MR x NR tile over all W words of the
//       operands as given, loading each word once per tile. The block loop over tiles
//       and plane pairs (popcount_gemm_block below) is shared by those ISAs.
//     * lanes (AVX-512, bgemm_lanes_avx512.cpp): activation columns across the vector
//       lanes, one weight word broadcast against 8 columns, per-lane sums; it packs a
//       tile of columns at a time (LanesPopcountGemmKernel below). AVX-512 CPUs run it
//       for one weight plane and up to two activation planes (see use_lanes).
#pragma once

#include <cstdint>

namespace apb {

enum class BitOp : int { Xor = 0, And = 1 };

// out[m, n] = constant + per_n[n] + scale * acc[m, n], computed in int64 and stored as
// int32; the caller guarantees it fits. per_n[n] is the code sum
// sum_p 2^p popcount(x[p, n]) (over the columns below K) when add_code_sums is set,
// else 0. The driver computes it: into per_n for in-place kernels, while packing for
// packed ones.
struct BgemmEpilogue {
    int64_t constant = 0;
    int64_t scale = 1;
    bool add_code_sums = false;
    const int64_t *per_n = nullptr;  // in-place kernels only, filled by the driver
};

struct PopcountGemm {
    const uint64_t *w = nullptr;  // [Q, M, W]
    const uint64_t *x = nullptr;  // [P, N, W]
    int64_t M = 0, N = 0, W = 0;
    int Q = 1, P = 1;
    BitOp op = BitOp::Xor;
    uint64_t last_mask = ~uint64_t{0};  // applied to word W-1 of both operands
    BgemmEpilogue epilogue;
};

// ---- the public kernels (checked arguments; see bind_bgemm.cpp) -------------------

// out[M, N] = K - 2 popcount(w[m] ^ x[n]); W = ceil(K/64); bits past K ignored.
void bgemm_1x1(const uint64_t *w, const uint64_t *x, int64_t M, int64_t N, int64_t W,
               int64_t K, int32_t *out);

// out[M, N] = sum_p 2^p (popcount(x[p,n]) - 2 popcount(w[m] & x[p,n])); x is [P, N, W].
// Columns at or past K (K <= 64*W) are ignored in both operands.
void bgemm_1x2(const uint64_t *w, const uint64_t *x, int64_t M, int64_t N, int64_t W, int P,
               int64_t K, int32_t *out);

// out[M, N] = sum_{q,p} 2^(q+p) popcount(w[q,m] & x[p,n]); w is [Q, M, W], x [P, N, W].
void bgemm_2x2(const uint64_t *w, const uint64_t *x, int64_t M, int64_t N, int64_t W, int Q,
               int P, int64_t K, int32_t *out);

// Mask of the valid bits of the last word of a K-column row (all ones when 64 | K).
inline uint64_t last_word_mask(int64_t K) {
    const int rest = static_cast<int>(K % 64);
    return rest == 0 ? ~uint64_t{0} : (uint64_t{1} << rest) - 1;
}

// ---- per-ISA block kernels --------------------------------------------------------

// Computes rows [m0, m1) x columns [n0, n1) of the output of `g` into out (row stride
// g.N). The x86 ones exist only in builds for x86 (APB_HAVE_X86_KERNELS) and must only
// be called when cpu_features() says so.
using PopcountGemmBlockFn = void (*)(const PopcountGemm &g, int64_t m0, int64_t m1,
                                     int64_t n0, int64_t n1, int32_t *out);

struct PopcountGemmKernel {
    PopcountGemmBlockFn block;
    int mr;  // register tile, for choosing block sizes
    int nr;
};

PopcountGemmKernel popcount_gemm_kernel_scalar();
PopcountGemmKernel popcount_gemm_kernel_avx512();

// A kernel that reads its operands from panels it packs itself. Weight panel: the
// whole of w, packed by row ranges in parallel. Activation panels: one per block of
// columns, packed by the thread that computes the block.
struct PackedPopcountGemmKernel {
    int mr;  // granularity of blocks: weight rows x activation rows (may depend on g;
    int nr;  // weight blocks are packed in chunks of 32 rows, so mr is 1 or a multiple)
    int64_t (*weight_panel_words)(const PopcountGemm &g);
    void (*pack_weights)(const PopcountGemm &g, int64_t m0, int64_t m1, uint64_t *panel);
    // Words of the panel of `rows` activation rows.
    int64_t (*activation_panel_words)(const PopcountGemm &g, int64_t rows);
    // Packs rows [n0, n1) of x into panel and, when code_sums is not null, writes
    // code_sums[n - n0] = sum_p 2^p popcount(x[p, n]) over the columns below K (it fits
    // int32 when the output does) for n < n1, and zeros after it up to a multiple of 8
    // (nr is a multiple of 8).
    void (*pack_activations)(const PopcountGemm &g, int64_t n0, int64_t n1, uint64_t *panel,
                             int32_t *code_sums);
    // Rows [m0, m1) x columns [n0, n1) of out (row stride g.N), from the weight panel
    // and the panel (and code sums, or null) of exactly columns [n0, n1).
    void (*block)(const PopcountGemm &g, const uint64_t *w_panel, const uint64_t *x_panel,
                  const int32_t *code_sums, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
                  int32_t *out);
};

PackedPopcountGemmKernel packed_popcount_gemm_kernel_avx2(const PopcountGemm &g);

// A kernel with the activation columns across the vector lanes (AVX-512,
// bgemm_lanes_avx512.cpp), for Q == 1 and P <= 2. It works in tiles of at most
// tile_columns columns: `pack` writes columns [n0, n1) of x (and their epilogue
// constants) into `panel` (panel_words, aligned to 64 bytes), `rows` computes rows
// [m0, m1) of those columns of out from it (m0 a multiple of row_step).
struct LanesPopcountGemmKernel {
    int64_t tile_columns;
    int64_t row_step;
    int64_t panel_words;
    void (*pack)(const PopcountGemm &g, int64_t n0, int64_t n1, uint64_t *panel);
    void (*rows)(const PopcountGemm &g, int64_t n0, int64_t n1, int64_t m0, int64_t m1,
                 const uint64_t *panel, int32_t *out);
};

LanesPopcountGemmKernel lanes_popcount_gemm_kernel_avx512(const PopcountGemm &g);

// Helpers shared by the per-ISA files. `static` on purpose (see pack_signs.h): each
// file is compiled with different -m flags and must keep its own copy.
namespace bgemm_detail {

// Runs Kernels::tile<op, MR, NR> on an mr x nr edge tile (mr <= MR, nr <= NR) by
// picking the instantiation of exactly that size.
template <class Kernels, BitOp op, int MR, int NR>
static inline void run_tile(int mr, int nr, const uint64_t *w, const uint64_t *x, int64_t W,
                            uint64_t last_mask, int64_t *counts) {
    if constexpr (MR > 1) {
        if (mr < MR) return run_tile<Kernels, op, MR - 1, NR>(mr, nr, w, x, W, last_mask, counts);
    }
    if constexpr (NR > 1) {
        if (nr < NR) return run_tile<Kernels, op, MR, NR - 1>(mr, nr, w, x, W, last_mask, counts);
    }
    // counts is laid out [MR][NR] of the size actually run.
    Kernels::template tile<op, MR, NR>(w, x, W, last_mask, counts);
}

// The block loop the in-place ISAs share: register tiles of Kernels::kMR x Kernels::kNR over
// [m0, m1) x [n0, n1) (weight tile outer, so it stays in L1 while the activation rows
// of the block stream past it), every plane pair per tile, then the epilogue.
template <class Kernels, BitOp op>
static inline void popcount_gemm_block_op(const PopcountGemm &g, int64_t m0, int64_t m1,
                                          int64_t n0, int64_t n1, int32_t *out) {
    constexpr int MR = Kernels::kMR;
    constexpr int NR = Kernels::kNR;
    const int64_t W = g.W;
    const int64_t w_plane = g.M * W;
    const int64_t x_plane = g.N * W;
    const BgemmEpilogue &e = g.epilogue;
    for (int64_t m = m0; m < m1; m += MR) {
        const int mr = static_cast<int>(m1 - m < MR ? m1 - m : MR);
        for (int64_t n = n0; n < n1; n += NR) {
            const int nr = static_cast<int>(n1 - n < NR ? n1 - n : NR);
            const uint64_t *w_tile = g.w + m * W;
            const uint64_t *x_tile = g.x + n * W;
            int64_t acc[MR * NR];
            run_tile<Kernels, op, MR, NR>(mr, nr, w_tile, x_tile, W, g.last_mask, acc);
            for (int q = 0; q < g.Q; ++q) {
                for (int p = q == 0 ? 1 : 0; p < g.P; ++p) {
                    int64_t counts[MR * NR];
                    run_tile<Kernels, op, MR, NR>(mr, nr, w_tile + q * w_plane,
                                                  x_tile + p * x_plane, W, g.last_mask, counts);
                    for (int t = 0; t < mr * nr; ++t) acc[t] += counts[t] << (q + p);
                }
            }
            for (int i = 0; i < mr; ++i) {
                int32_t *row = out + (m + i) * g.N + n;
                for (int j = 0; j < nr; ++j) {
                    const int64_t base = e.constant + (e.per_n ? e.per_n[n + j] : 0);
                    row[j] = static_cast<int32_t>(base + e.scale * acc[i * nr + j]);
                }
            }
        }
    }
}

template <class Kernels>
static void popcount_gemm_block(const PopcountGemm &g, int64_t m0, int64_t m1, int64_t n0,
                                int64_t n1, int32_t *out) {
    if (g.op == BitOp::Xor) {
        popcount_gemm_block_op<Kernels, BitOp::Xor>(g, m0, m1, n0, n1, out);
    } else {
        popcount_gemm_block_op<Kernels, BitOp::And>(g, m0, m1, n0, n1, out);
    }
}

template <class Kernels>
static PopcountGemmKernel kernel_of() {
    return PopcountGemmKernel{&popcount_gemm_block<Kernels>, Kernels::kMR, Kernels::kNR};
}

}  // namespace bgemm_detail

}  // namespace apb
