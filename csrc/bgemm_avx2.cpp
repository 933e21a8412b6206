// Bitwise GEMM with AVX2. Compiled with -mavx2 (and POPCNT); called only when
// cpu_features().avx2 is true. The microkernel and the panel layouts are in
// bgemm_avx2.h; this file packs the panels and walks a block in register tiles.
#include <immintrin.h>

#include <algorithm>

#include "bgemm.h"
#include "bgemm_avx2.h"

namespace apb {

namespace {

using namespace bgemm_avx2;

// Weight panel bytes per pass of a block's column tiles (see block_op).
constexpr int64_t kWeightChunkBytes = 12 * 1024;

int64_t weight_panel_words(const PopcountGemm &g) { return 2 * g.Q * g.M * g.W; }

int64_t activation_panel_words(const PopcountGemm &g, int64_t rows) {
    return (rows + kLanes - 1) / kLanes * kLanes * 2 * g.P * g.W;
}

void pack_weights(const PopcountGemm &g, int64_t m0, int64_t m1, uint64_t *panel) {
    pack_weight_rows(g, m0, m1, panel);
}

// Also the code sums sum_p 2^p popcount(x[p, n]) of each row (the per-column constant
// of bgemm_1x2), while the rows are in cache; zeros up to the next multiple of four
// rows, so the epilogue reads them four at a time.
void pack_activations(const PopcountGemm &g, int64_t n0, int64_t n1, uint64_t *panel,
                      int32_t *code_sums) {
    pack_activation_rows(g, n0, n1, panel);
    if (code_sums == nullptr) return;
    const int64_t W = g.W;
    for (int64_t n = n0; n < n1; ++n) {
        int64_t sum = 0;
        for (int p = 0; p < g.P; ++p) {
            const uint64_t *row = g.x + (p * g.N + n) * W;
            int64_t count = 0;
            for (int64_t k = 0; k + 1 < W; ++k) count += __builtin_popcountll(row[k]);
            if (W > 0) count += __builtin_popcountll(row[W - 1] & g.last_mask);
            sum += count << p;
        }
        code_sums[n - n0] = static_cast<int32_t>(sum);  // <= (2^P - 1) K: checked to fit
    }
    for (int64_t n = n1; (n - n0) % kLanes != 0; ++n) code_sums[n - n0] = 0;
}

// Runs column_pass for `planes` (1 or 2) activation planes and `nrv` groups.
template <BitOp op, int P>
void column_pass_of(bool paired, int nrv, const ColumnPass &c) {
    if (paired) {
        return nrv == kNRV ? column_pass<op, P, kNRV, true>(c) : column_pass<op, P, 2, true>(c);
    }
    return nrv == 1 ? column_pass<op, P, 1, false>(c) : column_pass<op, P, 2, false>(c);
}

// Rows [m0, m1) x columns [n0, n1) of out, the activation panel holding exactly
// columns [n0, n1). Each column tile runs once per weight plane q and per pair of
// activation planes (2g, 2g+1), whose counts enter with weight 2^(q + 2g).
template <BitOp op>
void block_op(const PopcountGemm &g, const uint64_t *w_panel, const uint64_t *x_panel,
              const int32_t *code_sums, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
              int32_t *out) {
    const int64_t W = g.W;
    const int64_t x_step = 8 * g.P;
    const int64_t x_group = W * x_step;
    const int plane_pairs = (g.P + kMaxTilePlanes - 1) / kMaxTilePlanes;
    // Weight rows per pass over the columns: their panel rows stay in L1 while the
    // column tiles of the block go past them.
    const int64_t chunk = std::max<int64_t>(1, kWeightChunkBytes / std::max<int64_t>(1, 16 * W));
    for (int64_t mc = m0; mc < m1; mc += chunk) {
        for (int64_t n = n0; n < n1;) {
            // Whole chunks of eight columns in pairs of groups (16 or 8 columns), then
            // the last partial chunk, its groups in column order (pack_activation_rows).
            const int64_t cols = n1 - n;
            const bool paired = cols >= 2 * kLanes;
            const int nrv = paired ? (cols >= kTileCols ? kNRV : 2)
                                   : static_cast<int>((cols + kLanes - 1) / kLanes);
            const int nc = paired ? kLanes * nrv : static_cast<int>(cols);
            ColumnPass c;
            c.w_row = W;
            c.w_half = g.M * W;
            c.x_group = x_group;
            c.x_step = x_step;
            c.steps = W;
            c.rows = std::min(m1, mc + chunk) - mc;
            c.out = out + mc * g.N + n;
            c.out_row = g.N;
            c.cols = nc;
            c.code_sums = code_sums ? code_sums + (n - n0) : nullptr;
            c.constant = static_cast<int32_t>(g.epilogue.constant);
            c.scale = static_cast<int32_t>(g.epilogue.scale);
            for (int q = 0; q < g.Q; ++q) {
                for (int pair = 0; pair < plane_pairs; ++pair) {
                    c.w = w_panel + (2 * q * g.M + mc) * W;
                    c.x = x_panel + (n - n0) / kLanes * x_group + 8 * kMaxTilePlanes * pair;
                    c.shift = q + kMaxTilePlanes * pair;
                    c.first = q == 0 && pair == 0;
                    c.last = q == g.Q - 1 && pair == plane_pairs - 1;
                    if constexpr (op == BitOp::And) {  // (XOR is bgemm_1x1: one plane)
                        if (g.P - kMaxTilePlanes * pair >= 2) {
                            column_pass_of<op, 2>(paired, nrv, c);
                            continue;
                        }
                    }
                    column_pass_of<op, 1>(paired, nrv, c);
                }
            }
            n += nc;
        }
    }
}

void block(const PopcountGemm &g, const uint64_t *w_panel, const uint64_t *x_panel,
           const int32_t *code_sums, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
           int32_t *out) {
    if (g.op == BitOp::Xor) {
        block_op<BitOp::Xor>(g, w_panel, x_panel, code_sums, m0, m1, n0, n1, out);
    } else {
        block_op<BitOp::And>(g, w_panel, x_panel, code_sums, m0, m1, n0, n1, out);
    }
}

}  // namespace

PackedPopcountGemmKernel packed_popcount_gemm_kernel_avx2() {
    return PackedPopcountGemmKernel{1,           kTileCols,        &weight_panel_words,
                                    &pack_weights, &activation_panel_words, &pack_activations,
                                    &block};
}

}  // namespace apb
