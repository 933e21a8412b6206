// Bitwise GEMM with AVX2. Compiled with -mavx2 (and POPCNT); called only when
// cpu_features().avx2 is true. The microkernel and the panel layouts are in
// bgemm_avx2.h; this file packs the panels and walks a block in column tiles.
//
// Orientation: either operand can be the table side (its digits pick tables, two
// planes per table) and the other the byte side (32 rows per vector, 256 per column
// tile). Normally the weights pick the tables; the roles swap when that costs fewer
// cycles (see swapped): when N is small, so that the weights fill the column tiles,
// or when the activations have two planes to combine per table and the weights one.
// The weight panel then holds byte digits, the activation panels table offsets, and
// the epilogue writes out transposed.
#include <immintrin.h>

#include <algorithm>

#include "bgemm.h"
#include "bgemm_avx2.h"

namespace apb {

namespace {

using namespace bgemm_avx2;

// Table-side rows per microkernel call: their 16-bit sums (16 x 8 x 64 bytes) stay in L1.
constexpr int64_t kChunkRows = 16;
// Byte counters are widened at least this often, so that one flush interval of a
// column tile's byte digits (8 x 32 x 63 bytes) stays in L1.
constexpr int64_t kMaxFlushDigits = 63;

int64_t digits_per_row(const PopcountGemm &g) { return kDigitsPerWord * g.W; }
int64_t groups_of(int64_t rows) { return (rows + kGroupRows - 1) / kGroupRows; }

// Cycles per table-side row and digit of a tile of n groups, from its instructions
// (lut_pass): 2n vector operations at 4 per cycle, or 2n + 5 instructions (offset
// and table loads, loop) at 6 dispatched per cycle, whichever limits.
double tile_cycles(int64_t n) {
    return std::max(static_cast<double>(n) / 2, static_cast<double>(2 * n + 5) / 6);
}

// Lookups of a GEMM with `table` rows and planes on the table side, in cycles per digit.
double lut_cycles(int64_t table_rows, int table_planes, int64_t byte_rows, int byte_planes) {
    const int64_t groups = groups_of(byte_rows);
    const double tiles = static_cast<double>(groups / kNRV) * tile_cycles(kNRV) +
                         (groups % kNRV ? tile_cycles(groups % kNRV) : 0.0);
    return static_cast<double>(table_rows) * ((table_planes + 1) / 2) * byte_planes * tiles;
}

// Whether the activations are the table side (the cheaper way round).
bool swapped(const PopcountGemm &g) {
    return lut_cycles(g.N, g.P, g.M, g.Q) < lut_cycles(g.M, g.Q, g.N, g.P);
}
int64_t words_for_bytes(int64_t bytes) { return (bytes + 7) / 8; }

// Panel sizes in words: table side (2 bytes per digit per pair of planes and row) and
// byte side (one byte per digit per plane and row, in groups of 32 rows).
int64_t table_words(const BitRows &a, int64_t rows, int64_t D) {
    return words_for_bytes(2 * ((a.planes + 1) / 2) * rows * D);
}
int64_t byte_words(const BitRows &a, int64_t rows, int64_t D) {
    return words_for_bytes(int64_t{kGroupRows} * a.planes * groups_of(rows) * D);
}

int64_t weight_panel_words(const PopcountGemm &g) {
    const int64_t D = digits_per_row(g);
    return swapped(g) ? byte_words(weights_of(g), g.M, D) : table_words(weights_of(g), g.M, D);
}

int64_t activation_panel_words(const PopcountGemm &g, int64_t rows) {
    const int64_t D = digits_per_row(g);
    return swapped(g) ? table_words(activations_of(g), rows, D)
                      : byte_words(activations_of(g), rows, D);
}

// The driver packs rows [m0, m1) in chunks of 32 from 0, as the byte side needs.
void pack_weights(const PopcountGemm &g, int64_t m0, int64_t m1, uint64_t *panel) {
    if (swapped(g)) {
        pack_byte_digits(weights_of(g), 0, groups_of(g.M), m0, m1,
                         reinterpret_cast<uint8_t *>(panel));
    } else {
        pack_table_digits(weights_of(g), 0, g.M, m0, m1, reinterpret_cast<uint16_t *>(panel));
    }
}

// Also the code sums sum_p 2^p popcount(x[p, n]) of each row (the per-column constant
// of bgemm_1x2), while the rows are in cache; zeros up to the next multiple of 8
// rows, as the epilogue reads them eight at a time.
void pack_activations(const PopcountGemm &g, int64_t n0, int64_t n1, uint64_t *panel,
                      int32_t *code_sums) {
    if (swapped(g)) {
        pack_table_digits(activations_of(g), n0, n1 - n0, n0, n1,
                          reinterpret_cast<uint16_t *>(panel));
    } else {
        pack_byte_digits(activations_of(g), n0, groups_of(n1 - n0), n0, n1,
                         reinterpret_cast<uint8_t *>(panel));
    }
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
    for (int64_t n = n1; (n - n0) % 8 != 0; ++n) code_sums[n - n0] = 0;
}

template <bool kShifted>
void run_lut_pass_of(int nrv, const LutPass &c) {
    switch (nrv) {
        case 1: return lut_pass<1, kShifted>(c);
        case 2: return lut_pass<2, kShifted>(c);
        case 3: return lut_pass<3, kShifted>(c);
        case 4: return lut_pass<4, kShifted>(c);
        case 5: return lut_pass<5, kShifted>(c);
        case 6: return lut_pass<6, kShifted>(c);
        case 7: return lut_pass<7, kShifted>(c);
        default: return lut_pass<kNRV, kShifted>(c);
    }
}

void run_lut_pass(int nrv, const LutPass &c) {
    return c.shift != 0 ? run_lut_pass_of<true>(nrv, c) : run_lut_pass_of<false>(nrv, c);
}

// One side of the product as a block sees it: its panel and rows [r0, r1) in it.
struct Side {
    const uint8_t *panel;
    int64_t base;    // the panel's first row
    int64_t count;   // rows the panel holds (table side) or groups (byte side)
    int64_t r0, r1;  // the block's rows
    int planes;
};

// Rows t.r0.. of the table side x rows b.r0.. of the byte side, for out of g.
// Passes: one per pair of table-side planes h and byte-side plane p (weight
// 2^(2h + p)), split further along K where 16-bit sums could overflow; each pass adds
// into out, the last one applies the epilogue. `transposed`: the table side is the
// activations (out columns), the byte side the weights (out rows).
void run_block(const PopcountGemm &g, const Side &t, const Side &b, bool transposed,
               const int32_t *code_sums, int32_t *out) {
    const int64_t D = digits_per_row(g);
    const uint16_t *table_digits = reinterpret_cast<const uint16_t *>(t.panel);
    const int pairs = (t.planes + 1) / 2;
    alignas(32) uint16_t sums[kChunkRows * kNRV * kGroupRows];
    for (int64_t c0 = b.r0; c0 < b.r1; c0 += kTileCols) {
        // The tile's first group; blocks start at multiples of a tile (the kernel's
        // mr and nr), so the byte panel's tiles are the block's.
        const int64_t j0 = (c0 - b.base) / kGroupRows;
        const int cols = static_cast<int>(std::min<int64_t>(kTileCols, b.r1 - c0));
        const int nrv = static_cast<int>(groups_of(cols));
        for (int64_t rc = t.r0; rc < t.r1; rc += kChunkRows) {
            const int64_t rows = std::min(kChunkRows, t.r1 - rc);
            for (int h = 0; h < pairs; ++h) {
                const int largest = largest_entry(g.op, 2 * h + 1 < t.planes ? 2 : 1);
                // The byte-side planes share one set of 16-bit sums (plane p at weight
                // 2^p) when all their counts over the row fit: one epilogue then
                // reads and writes out instead of one per plane (bgemm_1x2 with the
                // activations on the byte side, as for small M).
                const int together = D * largest * ((1 << b.planes) - 1) <= 65535 ? b.planes : 1;
                const int64_t span = 65535 / (largest * ((1 << together) - 1));
                for (int p0 = 0; p0 < b.planes; p0 += together) {
                    for (int64_t d0 = 0; d0 < D || d0 == 0; d0 += span) {
                        LutPass c;
                        c.w = table_digits + (h * t.count + rc - t.base) * D;
                        c.w_row = D;
                        c.tables = tables_of(g.op);
                        c.x_step = kGroupRows * nrv;
                        c.d0 = d0;
                        c.d1 = std::min(D, d0 + span);
                        c.flush = std::min<int64_t>(kMaxFlushDigits, 255 / largest);
                        c.rows = rows;
                        c.sums = sums;
                        for (int p = p0; p < p0 + together; ++p) {
                            c.x = b.panel + byte_digit_offset(b.count, D, p, j0, 0);
                            c.shift = p - p0;
                            c.accumulate = p > p0;
                            run_lut_pass(nrv, c);
                        }
                        const int shift = 2 * h + p0;
                        const bool first = h == 0 && p0 == 0 && d0 == 0;
                        const bool last = h == pairs - 1 && p0 + together == b.planes && c.d1 == D;
                        const int32_t constant = static_cast<int32_t>(g.epilogue.constant);
                        const int32_t scale = static_cast<int32_t>(g.epilogue.scale);
                        if (transposed) {
                            const int32_t *sums_n = code_sums ? code_sums + (rc - t.r0) : nullptr;
                            lut_epilogue_transposed({sums, rows, cols, out + c0 * g.N + rc, g.N,
                                                     sums_n, constant, scale, shift, first, last});
                        } else {
                            const int32_t *sums_n = code_sums ? code_sums + (c0 - b.r0) : nullptr;
                            lut_epilogue({sums, rows, cols, out + rc * g.N + c0, g.N, sums_n,
                                          constant, scale, shift, first, last});
                        }
                    }
                }
            }
        }
    }
}

// Rows [m0, m1) x columns [n0, n1) of out, the activation panel holding exactly
// columns [n0, n1) and its code sums (or null).
void block(const PopcountGemm &g, const uint64_t *w_panel, const uint64_t *x_panel,
           const int32_t *code_sums, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
           int32_t *out) {
    const uint8_t *w = reinterpret_cast<const uint8_t *>(w_panel);
    const uint8_t *x = reinterpret_cast<const uint8_t *>(x_panel);
    if (swapped(g)) {
        const Side table{x, n0, n1 - n0, n0, n1, g.P};
        const Side bytes{w, 0, groups_of(g.M), m0, m1, g.Q};
        run_block(g, table, bytes, true, code_sums, out);
    } else {
        const Side table{w, 0, g.M, m0, m1, g.Q};
        const Side bytes{x, n0, groups_of(n1 - n0), n0, n1, g.P};
        run_block(g, table, bytes, false, code_sums, out);
    }
}

}  // namespace

PackedPopcountGemmKernel packed_popcount_gemm_kernel_avx2(const PopcountGemm &g) {
    // Blocks of the byte side come in whole column tiles, of the table side in any
    // number of rows (eight for the transposed epilogue's stores).
    const int mr = swapped(g) ? kTileCols : 1;
    const int nr = swapped(g) ? 8 : kTileCols;
    return PackedPopcountGemmKernel{mr, nr, &weight_panel_words, &pack_weights,
                                    &activation_panel_words, &pack_activations, &block};
}

}  // namespace apb
