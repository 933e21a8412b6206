// The AVX2 popcount-GEMM microkernel and its operand panels, shared by
// bgemm_avx2.cpp and roofline_avx2.cpp (include it from *_avx2.cpp files only: it
// needs -mavx2; everything is `static` so each file keeps its own copy).
//
// Popcount by nibble lookup (vpshufb on a 16-entry table of bit counts; Mula, Kurz,
// Lemire, "Faster population counts using AVX2 instructions", 2018), arranged so that
// a 256-bit product costs six vector operations instead of eight:
//
//   - Nibble-split panels. Both operands are repacked once per call with every word v
//     stored as two words, lo(v) = v & 0x0f..0f and hi(v) = (v >> 4) & 0x0f..0f. Since
//     lo(a op b) = lo(a) op lo(b) for op = XOR or AND, a product needs no shifts or
//     masks in the hot loop: per 256 bits two XOR/AND, two vpshufb, two byte adds.
//     (Harley-Seal carry-save accumulation needs five operations per input vector for
//     each carry-save adder, one more for the XOR/AND and its own state registers per
//     output, so on AVX2 it cannot beat six; see docs/performance.md.)
//   - Activations interleaved four rows to a vector (lane l holds row 4g + l), weights
//     broadcast: a vector of byte counts holds four outputs, so vpsadbw's four 64-bit
//     sums are the outputs themselves. No horizontal reduction, and no partial vector
//     at the end of a row: K = 576 (nine words) is nine steps, not three chunks of four.
//   - A register tile of MR weight rows x NRV groups of four activation rows: each
//     broadcast weight word is used 4*NRV times, each activation vector MR times.
//   - Plane weights in the table: the lookup for activation plane p adds 2^p * count,
//     so a 2-bit activation costs two products and no separate accumulation.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "bgemm.h"

namespace apb::bgemm_avx2 {

constexpr uint64_t kLowNibbles = 0x0f0f0f0f0f0f0f0full;

// Register tile: 1 weight row x 4 groups of 4 activation rows (16 outputs). Of the 16
// ymm registers: 4 byte counters, 2 broadcast weight halves, the tables, temporaries;
// activation vectors are read from L1 as memory operands (2.5 loads per product are
// within what the core sustains). Measured on Zen 3 over the ResNet-18 shapes: 1x4 and
// 1x6 best, 2x2, 2x4 and 3x2 5-20 % slower (with more counters GCC's scheduling
// spills them inside the loop); an even number of groups lets the epilogue store
// eight outputs at a time (see pair_counts).
constexpr int kNRV = 4;
constexpr int kLanes = 4;  // activation rows per vector
constexpr int kTileCols = kLanes * kNRV;

// Planes one microkernel call counts at once (their weights 1 and 2 are in the table).
constexpr int kMaxTilePlanes = 2;

// Steps between folding the byte counters into 64-bit sums: one step adds at most
// 8 * (2^P - 1) to a byte (two nibbles per plane), which must stay below 256.
template <int P>
constexpr int64_t kFlushSteps = 255 / (8 * ((1 << P) - 1));

static inline __m256i nibble_popcount_lut() {
    return _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,  //
                            0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
}

template <BitOp op>
static inline __m256i apply(__m256i a, __m256i b) {
    if constexpr (op == BitOp::Xor) {
        return _mm256_xor_si256(a, b);
    } else {
        return _mm256_and_si256(a, b);
    }
}

// The low 32 bits of each 64-bit lane, as four int32 (the lanes hold counts < 2^32).
static inline __m128i low_dwords(__m256i v) {
    const __m256i pick = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    return _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(v, pick));
}

// Eight int32 counts in column order from the sums of a pair of groups whose lanes
// hold the even and the odd columns of eight (see pack_activation_rows): dword 2l is
// lane l of `even` (column 2l), dword 2l+1 lane l of `odd` (column 2l+1). Counts are
// below 2^32, so the odd ones shifted up do not touch the even ones.
static inline __m256i pair_counts(__m256i even, __m256i odd) {
    return _mm256_or_si256(even, _mm256_slli_epi64(odd, 32));
}

// Lanes [0, n) all ones: the mask of a maskload/maskstore of the first n int32.
static inline __m128i first_dwords(int n) {
    return _mm_cmpgt_epi32(_mm_set1_epi32(n), _mm_setr_epi32(0, 1, 2, 3));
}

// One register tile's worth of activation columns (NRV groups) against a run of
// weight rows, for one weight plane and up to two activation planes (a "pass"), with
// the epilogue. Operands, in the panels:
//   weights: row r, step k: lo half at w[r * w_row + k], hi half at w[r * w_row + w_half + k]
//   activations: group j, step k, plane p: lo half (4 lanes) at
//                x[j * x_group + k * x_step + 8 * p], hi half 4 words later
// Each output gets v = count << shift, the count of this pass (planes weighted 1 and
// 2); unless `first`, plus what out holds (the passes so far); if `last`, then
// out = constant + code sum + scale * v. In int32, wrapping: the result is right modulo
// 2^32 and fits int32 (the bindings check |out|), so it is right.
struct ColumnPass {
    const uint64_t *w;
    int64_t w_row, w_half;
    const uint64_t *x;
    int64_t x_group, x_step;
    int64_t steps;
    int64_t rows;
    int32_t *out;  // row 0, the tile's first column
    int64_t out_row;
    int cols;                  // valid columns (4 * NRV in a paired tile)
    const int32_t *code_sums;  // of the tile's columns (a multiple of 4 readable), or null
    int32_t constant, scale;
    int shift;
    bool first, last;
};

// Steps [k0, k1) of weight row `w_lo`/`w_hi` into the byte counters
// (k1 - k0 <= kFlushSteps<P>).
template <BitOp op, int P, int NRV>
static inline __attribute__((always_inline)) void count_steps(const ColumnPass &c,
                                                              const uint64_t *w_lo,
                                                              const uint64_t *w_hi, int64_t k0,
                                                              int64_t k1, __m256i (&acc)[NRV]) {
    __m256i lut[P];
    lut[0] = nibble_popcount_lut();
    if constexpr (P > 1) lut[1] = _mm256_add_epi8(lut[0], lut[0]);
    for (int64_t k = k0; k < k1; ++k) {
        const uint64_t *xk = c.x + k * c.x_step;
        const __m256i lo = _mm256_set1_epi64x(static_cast<long long>(w_lo[k]));
        const __m256i hi = _mm256_set1_epi64x(static_cast<long long>(w_hi[k]));
        for (int p = 0; p < P; ++p) {
            for (int j = 0; j < NRV; ++j) {
                const uint64_t *xp = xk + j * c.x_group + 8 * p;
                const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(xp));
                const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(xp + 4));
                acc[j] = _mm256_add_epi8(acc[j], _mm256_shuffle_epi8(lut[p], apply<op>(lo, a)));
                acc[j] = _mm256_add_epi8(acc[j], _mm256_shuffle_epi8(lut[p], apply<op>(hi, b)));
                // Keeps the adds in this order: GCC otherwise reassociates them into
                // trees over a whole step, whose temporaries push counters to the stack.
                asm("" : "+x"(acc[j]));
            }
        }
    }
}

// The microkernel and its epilogue (see ColumnPass). kPaired: the groups come in
// (even, odd) pairs of eight columns, all valid; otherwise the groups hold columns in
// order and only the first c.cols are stored.
//
// Not inlined on purpose: in a function of its own the register allocator keeps every
// counter in a register (inlined into the block loop, GCC 12 kept them on the stack
// and lost a third of the speed).
template <BitOp op, int P, int NRV, bool kPaired>
static __attribute__((noinline)) void column_pass(const ColumnPass &c) {
    static_assert(P >= 1 && P <= kMaxTilePlanes && NRV <= kNRV && (!kPaired || NRV % 2 == 0));
    const __m256i zero = _mm256_setzero_si256();
    const __m256i constant = _mm256_set1_epi32(c.constant);
    const __m256i scale = _mm256_set1_epi32(c.scale);
    const __m128i shift = _mm_cvtsi32_si128(c.shift);
    for (int64_t r = 0; r < c.rows; ++r) {
        const uint64_t *w_lo = c.w + r * c.w_row;
        const uint64_t *w_hi = w_lo + c.w_half;
        __m256i acc[NRV], sums[NRV];
        for (int j = 0; j < NRV; ++j) acc[j] = zero;
        if (c.steps <= kFlushSteps<P>) {  // one plane and K <= 1984, two and K <= 640
            count_steps<op, P, NRV>(c, w_lo, w_hi, 0, c.steps, acc);
            for (int j = 0; j < NRV; ++j) sums[j] = _mm256_sad_epu8(acc[j], zero);
        } else {
            for (int j = 0; j < NRV; ++j) sums[j] = zero;
            for (int64_t k0 = 0; k0 < c.steps; k0 += kFlushSteps<P>) {
                const int64_t k1 = c.steps - k0 < kFlushSteps<P> ? c.steps : k0 + kFlushSteps<P>;
                count_steps<op, P, NRV>(c, w_lo, w_hi, k0, k1, acc);
                for (int j = 0; j < NRV; ++j) {
                    sums[j] = _mm256_add_epi64(sums[j], _mm256_sad_epu8(acc[j], zero));
                    acc[j] = zero;
                }
            }
        }
        int32_t *row = c.out + r * c.out_row;
        if constexpr (kPaired) {
            for (int h = 0; h < NRV / 2; ++h) {
                __m256i *dst = reinterpret_cast<__m256i *>(row + 2 * kLanes * h);
                __m256i v = _mm256_sll_epi32(pair_counts(sums[2 * h], sums[2 * h + 1]), shift);
                if (!c.first) v = _mm256_add_epi32(v, _mm256_loadu_si256(dst));
                if (c.last) {
                    v = _mm256_add_epi32(constant, _mm256_mullo_epi32(scale, v));
                    if (c.code_sums) {
                        v = _mm256_add_epi32(v, _mm256_loadu_si256(reinterpret_cast<const __m256i *>(
                                                    c.code_sums + 2 * kLanes * h)));
                    }
                }
                _mm256_storeu_si256(dst, v);
            }
        } else {
            for (int j = 0; j < NRV && kLanes * j < c.cols; ++j) {
                int *dst = row + kLanes * j;
                const __m128i mask = first_dwords(c.cols - kLanes * j);
                __m128i v = _mm_sll_epi32(low_dwords(sums[j]), shift);
                if (!c.first) v = _mm_add_epi32(v, _mm_maskload_epi32(dst, mask));
                if (c.last) {
                    v = _mm_add_epi32(_mm256_castsi256_si128(constant),
                                      _mm_mullo_epi32(_mm256_castsi256_si128(scale), v));
                    if (c.code_sums) {
                        v = _mm_add_epi32(v, _mm_loadu_si128(reinterpret_cast<const __m128i *>(
                                                 c.code_sums + kLanes * j)));
                    }
                }
                _mm_maskstore_epi32(dst, mask, v);
            }
        }
    }
}

// ---- panels ---------------------------------------------------------------------------

// lo and hi halves of four words at once.
static inline void split_nibbles(__m256i v, __m256i &lo, __m256i &hi) {
    const __m256i low = _mm256_set1_epi64x(static_cast<long long>(kLowNibbles));
    lo = _mm256_and_si256(v, low);
    hi = _mm256_and_si256(_mm256_srli_epi64(v, 4), low);
}

// Weight panel rows [m0, m1) of every plane: plane q, half h, row m at
// panel[((2q + h) * rows + m) * W + k], with rows = g.M. The last word of each row
// keeps only the columns below K (last_mask), so nothing past K is ever counted.
static void pack_weight_rows(const PopcountGemm &g, int64_t m0, int64_t m1, uint64_t *panel) {
    const int64_t W = g.W;
    for (int q = 0; q < g.Q; ++q) {
        for (int64_t m = m0; m < m1; ++m) {
            const uint64_t *src = g.w + (q * g.M + m) * W;
            uint64_t *lo = panel + ((2 * q) * g.M + m) * W;
            uint64_t *hi = lo + g.M * W;
            int64_t k = 0;
            for (; k + 4 <= W; k += 4) {
                __m256i l, h;
                split_nibbles(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(src + k)), l, h);
                _mm256_storeu_si256(reinterpret_cast<__m256i *>(lo + k), l);
                _mm256_storeu_si256(reinterpret_cast<__m256i *>(hi + k), h);
            }
            for (; k < W; ++k) {
                lo[k] = src[k] & kLowNibbles;
                hi[k] = (src[k] >> 4) & kLowNibbles;
            }
            if (W > 0) {
                lo[W - 1] &= g.last_mask;
                hi[W - 1] &= g.last_mask >> 4;
            }
        }
    }
}

// The 4 x 4 transpose of 64-bit words: r[l] holds words k..k+3 of lane l; afterwards
// r[t] holds word k+t of lanes 0..3.
static inline void transpose4(__m256i (&r)[4]) {
    const __m256i a = _mm256_unpacklo_epi64(r[0], r[1]);  // 0k 1k | 0k+2 1k+2
    const __m256i b = _mm256_unpackhi_epi64(r[0], r[1]);  // 0k+1 1k+1 | 0k+3 1k+3
    const __m256i c = _mm256_unpacklo_epi64(r[2], r[3]);
    const __m256i d = _mm256_unpackhi_epi64(r[2], r[3]);
    r[0] = _mm256_permute2x128_si256(a, c, 0x20);
    r[1] = _mm256_permute2x128_si256(b, d, 0x20);
    r[2] = _mm256_permute2x128_si256(a, c, 0x31);
    r[3] = _mm256_permute2x128_si256(b, d, 0x31);
}

// Activation panel of rows [n0, n1): groups of four rows, group j at
// panel[j * x_group + k * (8 * P) + 8 * p + 4 * h + l] for step k, plane p, half h,
// lane l (x_group = W * 8 * P). Rows come in chunks of eight: in a whole chunk
// c (rows n0 + 8c .. n0 + 8c + 7), group 2c holds the even rows (lane l: row
// n0 + 8c + 2l) and group 2c + 1 the odd ones, so that pair_counts puts a row of
// outputs in column order; a last partial chunk holds its rows in order (lane l of
// group 2c + h: row n0 + 8c + 4h + l), zeros past n1. Last words masked as for the
// weights.
static inline int64_t activation_row(int64_t n0, int64_t n1, int64_t j, int l) {
    const int64_t chunk = n0 + 8 * (j / 2);
    const int64_t odd = j % 2;
    return chunk + 8 <= n1 ? chunk + 2 * l + odd : chunk + 4 * odd + l;
}

static void pack_activation_rows(const PopcountGemm &g, int64_t n0, int64_t n1,
                                 uint64_t *panel) {
    const int64_t W = g.W;
    const int P = g.P;
    const int64_t x_step = 8 * P;
    const int64_t x_group = W * x_step;
    const __m256i zero = _mm256_setzero_si256();
    const __m256i mask = _mm256_set1_epi64x(static_cast<long long>(g.last_mask));
    const __m256i mask_hi = _mm256_set1_epi64x(static_cast<long long>(g.last_mask >> 4));
    const int64_t groups = (n1 - n0 + kLanes - 1) / kLanes;
    for (int64_t j = 0; j < groups; ++j) {
        for (int p = 0; p < P; ++p) {
            const uint64_t *rows[kLanes];
            for (int l = 0; l < kLanes; ++l) {
                const int64_t n = activation_row(n0, n1, j, l);
                rows[l] = n < n1 ? g.x + (p * g.N + n) * W : nullptr;
            }
            uint64_t *dst = panel + j * x_group + 8 * p;
            int64_t k = 0;
            for (; k + 4 <= W; k += 4) {
                __m256i r[4];
                for (int l = 0; l < kLanes; ++l) {
                    r[l] = rows[l] ? _mm256_loadu_si256(reinterpret_cast<const __m256i *>(rows[l] + k))
                                   : zero;
                }
                transpose4(r);
                for (int t = 0; t < 4; ++t) {
                    __m256i lo, hi;
                    split_nibbles(r[t], lo, hi);
                    uint64_t *d = dst + (k + t) * x_step;
                    _mm256_storeu_si256(reinterpret_cast<__m256i *>(d), lo);
                    _mm256_storeu_si256(reinterpret_cast<__m256i *>(d + 4), hi);
                }
            }
            for (; k < W; ++k) {
                alignas(32) uint64_t v[kLanes];
                for (int l = 0; l < kLanes; ++l) v[l] = rows[l] ? rows[l][k] : 0;
                __m256i lo, hi;
                split_nibbles(_mm256_load_si256(reinterpret_cast<const __m256i *>(v)), lo, hi);
                uint64_t *d = dst + k * x_step;
                _mm256_storeu_si256(reinterpret_cast<__m256i *>(d), lo);
                _mm256_storeu_si256(reinterpret_cast<__m256i *>(d + 4), hi);
            }
            if (W > 0) {
                uint64_t *d = dst + (W - 1) * x_step;
                __m256i *lo = reinterpret_cast<__m256i *>(d);
                __m256i *hi = reinterpret_cast<__m256i *>(d + 4);
                _mm256_storeu_si256(lo, _mm256_and_si256(_mm256_loadu_si256(lo), mask));
                _mm256_storeu_si256(hi, _mm256_and_si256(_mm256_loadu_si256(hi), mask_hi));
            }
        }
    }
}

}  // namespace apb::bgemm_avx2
