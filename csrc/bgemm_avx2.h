// The AVX2 popcount-GEMM microkernel and its operand panels, shared by
// bgemm_avx2.cpp and roofline_avx2.cpp (include it from *_avx2.cpp files only: it
// needs -mavx2; everything is `static` so each file keeps its own copy).
//
// Table lookup, one operand choosing the tables and the other indexing them. The K
// columns of every plane are cut into digits of 4 columns. vpshufb looks up 16-byte
// tables by 4-bit indices; with the digits of one operand (the byte side) as indices
// and a table per digit v of the other (the table side),
//
//   T_v[i] = popcount(v ^ i)                                  (bgemm_1x1)
//   T_v[i] = sum_t (bit_t(v_lo) + 2 bit_t(v_hi)) bit_t(i)     (AND: v = v_lo + 16 v_hi,
//                                                             two planes' digits)
//
// one vpshufb and one byte add count a digit for 32 byte-side rows at once: 128
// bit-ops (one plane on each side) or 256 (two table-side planes) per two vector
// operations. A nibble-lookup popcount of XOR/AND products (Mula, Kurz, Lemire,
// "Faster population counts using AVX2 instructions", 2018) needs six per 256
// bit-ops even with operands stored nibble-split, and Harley-Seal carry-save adders
// five per input vector plus the XOR/AND (docs/performance.md has the measurements).
//
// Layouts (both operands are repacked per call, so the public layout stays):
//   - table side: per pair of planes, per row, per digit the byte offset of its table.
//   - byte side: per plane, groups of 32 rows; per digit one 32-byte vector whose
//     byte i is the digit of row i of the group (a byte transpose of the bit rows),
//     the vectors of a column tile's groups (up to 8) side by side for each digit, so
//     that the microkernel reads one contiguous stream. (With the groups a stride
//     apart, their eight streams shared L1 sets whenever the stride was a multiple of
//     4 KiB: 0.6x the speed at 1152 digits.)
//   - byte counters gain at most the largest table entry per digit (4, or 12 with two
//     table-side planes); they are widened into 16-bit sums (vpmovzxbw) before they
//     overflow, and the 16-bit sums into the int32 output before those do.
//
// The register tile is one table-side row x 8 groups (256 byte-side rows): 8 byte
// counters, the table, temporaries; byte-side vectors are read from L1 as memory
// operands of vpshufb. Per digit: one 2-byte load (the table offset), one table load,
// 8 x (vpshufb + vpaddb). Measured on Zen 3 with data in L1: 1 x 8 with the byte side
// from memory 1.48x the six-operation nibble-split kernel; 1 x 4, 2 x 4, 3 x 4
// slower. Which operand is which side is the driver's choice (bgemm_avx2.cpp).
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "bgemm.h"

namespace apb::bgemm_avx2 {

constexpr int kGroupRows = 32;               // byte-side rows per vector, one byte each
constexpr int kNRV = 8;                      // groups per column tile
constexpr int kTileCols = kGroupRows * kNRV;  // byte-side rows per column tile
constexpr int kDigitsPerWord = 16;           // 4 columns per digit

// ---- tables -------------------------------------------------------------------------

// 16-entry tables, each stored twice (for both 128-bit lanes of vpshufb).
template <int Tables>
struct alignas(32) DigitTables {
    uint8_t entry[Tables][32];
};

constexpr int popcount4(int v) { return (v & 1) + ((v >> 1) & 1) + ((v >> 2) & 1) + ((v >> 3) & 1); }

constexpr DigitTables<16> make_xor_tables() {
    DigitTables<16> t{};
    for (int v = 0; v < 16; ++v) {
        for (int i = 0; i < 32; ++i) t.entry[v][i] = static_cast<uint8_t>(popcount4(v ^ (i & 15)));
    }
    return t;
}

// v = lo + 16 hi: the digits of two table-side planes (weights 1 and 2) at the same
// columns; a single plane uses tables 0..15 (hi = 0).
constexpr DigitTables<256> make_and_tables() {
    DigitTables<256> t{};
    for (int v = 0; v < 256; ++v) {
        for (int i = 0; i < 32; ++i) {
            const int x = i & 15;
            t.entry[v][i] = static_cast<uint8_t>(popcount4(v & 15 & x) + 2 * popcount4((v >> 4) & x));
        }
    }
    return t;
}

alignas(32) static constexpr DigitTables<16> kXorTables = make_xor_tables();
alignas(32) static constexpr DigitTables<256> kAndTables = make_and_tables();

static inline const uint8_t *tables_of(BitOp op) {
    return op == BitOp::Xor ? &kXorTables.entry[0][0] : &kAndTables.entry[0][0];
}

// The largest table entry a pass adds per digit: 4, or 12 with two table-side planes.
static inline int largest_entry(BitOp op, int table_planes) {
    return op == BitOp::Xor || table_planes == 1 ? 4 : 12;
}

// ---- the microkernel ------------------------------------------------------------------

// One column tile (NRV groups of byte-side rows) against a run of table-side rows
// over digits [d0, d1), into 16-bit sums:
//   sums[(r * kNRV + j) * 32 + l] = sum_{d0 <= d < d1} table(w_r[d])[x_{j,l}[d]]
// with w_r table-side row r and x_{j,l} byte-side row l of group j. The caller keeps
// (d1 - d0) * largest entry < 65536.
struct LutPass {
    const uint16_t *w;  // row r, digit d: byte offset of its table at w[r * w_row + d]
    int64_t w_row;
    const uint8_t *tables;
    const uint8_t *x;   // group j, digit d: 32 bytes at x + d * x_step + 32 * j
    int64_t x_step;
    int64_t d0, d1;
    int64_t flush;      // digits between widening the byte counters: 255 / largest entry
    int64_t rows;
    uint16_t *sums;     // [rows][kNRV][32]
    // The counts are added at weight 2^shift; `accumulate`: into what sums holds (an
    // earlier plane's pass over the same digits), else they replace it.
    int shift = 0;
    bool accumulate = false;
};

// kShifted: shift the counts first (a pass of a later byte-side plane); a template
// argument, so that the other passes do not pay for the shifts.
template <bool kShifted>
static inline void add_widened(uint16_t *sums, __m256i bytes, bool first, __m128i shift) {
    __m256i lo = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(bytes));
    __m256i hi = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(bytes, 1));
    if constexpr (kShifted) {
        lo = _mm256_sll_epi16(lo, shift);
        hi = _mm256_sll_epi16(hi, shift);
    }
    __m256i *dst = reinterpret_cast<__m256i *>(sums);
    if (!first) {
        lo = _mm256_add_epi16(lo, _mm256_loadu_si256(dst));
        hi = _mm256_add_epi16(hi, _mm256_loadu_si256(dst + 1));
    }
    _mm256_storeu_si256(dst, lo);
    _mm256_storeu_si256(dst + 1, hi);
}

// acc += v bytewise, in acc's own register. (Written as an intrinsic, GCC 12 adds into
// a fresh register and copies it back every digit: eight extra instructions per 16
// vector operations, enough to make the loop limited by instruction dispatch.)
static inline __attribute__((always_inline)) void add_bytes(__m256i &acc, __m256i v) {
    asm("vpaddb %1, %0, %0" : "+x"(acc) : "x"(v));
}

// Not inlined on purpose: in a function of its own the register allocator keeps every
// counter in a register (inlined into the block loop, GCC 12 kept some on the stack).
template <int NRV, bool kShifted = false>
static __attribute__((noinline)) void lut_pass(const LutPass &c) {
    static_assert(NRV >= 1 && NRV <= kNRV);
    const __m256i zero = _mm256_setzero_si256();
    const __m128i shift = _mm_cvtsi32_si128(c.shift);
    if (c.d0 >= c.d1) {
        for (int64_t r = 0; r < c.rows && !c.accumulate; ++r) {
            for (int j = 0; j < NRV; ++j) add_widened<false>(c.sums + (r * kNRV + j) * 32, zero, true, shift);
        }
        return;
    }
    // Digits outer, rows inner: the activation digits of one flush interval (at most
    // 8 x 32 x 63 bytes) stay in L1 while every weight row passes over them.
    for (int64_t k0 = c.d0; k0 < c.d1; k0 += c.flush) {
        const int64_t k1 = c.d1 - k0 < c.flush ? c.d1 : k0 + c.flush;
        for (int64_t r = 0; r < c.rows; ++r) {
            const uint16_t *w = c.w + r * c.w_row;
            __m256i acc[NRV];
            for (int j = 0; j < NRV; ++j) acc[j] = zero;
            for (int64_t d = k0; d < k1; ++d) {
                const __m256i table =
                    _mm256_load_si256(reinterpret_cast<const __m256i *>(c.tables + w[d]));
                const uint8_t *xd = c.x + d * c.x_step;
                for (int j = 0; j < NRV; ++j) {
                    const __m256i x =
                        _mm256_loadu_si256(reinterpret_cast<const __m256i *>(xd + 32 * j));
                    add_bytes(acc[j], _mm256_shuffle_epi8(table, x));
                }
            }
            const bool first = k0 == c.d0 && !c.accumulate;
            for (int j = 0; j < NRV; ++j) {
                add_widened<kShifted>(c.sums + (r * kNRV + j) * 32, acc[j], first, shift);
            }
        }
    }
}

// out for the rows and columns of a pass's sums: v = sum << shift; unless `first`,
// plus what out holds (earlier passes); if `last`, out = constant + code sum +
// scale * v. In int32, wrapping: the result is right modulo 2^32 and fits int32 (the
// bindings check |out|), so it is right.
struct LutEpilogue {
    const uint16_t *sums;  // [rows][kNRV][32]
    int64_t rows;
    int cols;              // valid activation rows of the tile (<= 32 * NRV)
    int32_t *out;          // row 0, the tile's first column
    int64_t out_row;
    const int32_t *code_sums;  // of the tile's columns (readable to a multiple of 8), or null
    int32_t constant, scale;
    int shift;
    bool first, last;
};

// Lanes [0, n) all ones: the mask of a maskload/maskstore of the first n int32.
static inline __m256i first_dwords(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

template <bool kFirst, bool kLast, bool kCodeSums>
static inline void lut_epilogue_of(const LutEpilogue &e) {
    const __m256i constant = _mm256_set1_epi32(e.constant);
    const __m256i scale = _mm256_set1_epi32(e.scale);
    const __m128i shift = _mm_cvtsi32_si128(e.shift);
    const auto finish = [&](const uint16_t *sums, int32_t *dst, const int32_t *code_sums,
                            __m256i mask) {
        __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(sums)));
        v = _mm256_sll_epi32(v, shift);
        if constexpr (!kFirst) v = _mm256_add_epi32(v, _mm256_maskload_epi32(dst, mask));
        if constexpr (kLast) {
            v = _mm256_add_epi32(constant, _mm256_mullo_epi32(scale, v));
            if constexpr (kCodeSums) {
                v = _mm256_add_epi32(
                    v, _mm256_loadu_si256(reinterpret_cast<const __m256i *>(code_sums)));
            }
        }
        return v;
    };
    const __m256i all = _mm256_set1_epi32(-1);
    const int whole = e.cols / 8 * 8;
    for (int64_t r = 0; r < e.rows; ++r) {
        const uint16_t *sums = e.sums + r * kNRV * 32;
        int32_t *row = e.out + r * e.out_row;
        // Column c sits at sums[(c / 32) * 32 + c % 32] = sums[c].
        for (int c = 0; c < whole; c += 8) {
            _mm256_storeu_si256(reinterpret_cast<__m256i *>(row + c),
                                finish(sums + c, row + c, kCodeSums ? e.code_sums + c : nullptr, all));
        }
        if (whole < e.cols) {
            const __m256i mask = first_dwords(e.cols - whole);
            _mm256_maskstore_epi32(
                row + whole, mask,
                finish(sums + whole, row + whole, kCodeSums ? e.code_sums + whole : nullptr, mask));
        }
    }
}

static inline void lut_epilogue(const LutEpilogue &e) {
    const bool sums = e.code_sums != nullptr;
    if (e.first && e.last) {
        return sums ? lut_epilogue_of<true, true, true>(e) : lut_epilogue_of<true, true, false>(e);
    }
    if (e.first) return lut_epilogue_of<true, false, false>(e);
    if (!e.last) return lut_epilogue_of<false, false, false>(e);
    return sums ? lut_epilogue_of<false, true, true>(e) : lut_epilogue_of<false, true, false>(e);
}

// The epilogue of a pass run the other way round, with the activations on the table
// side (the driver does so when N is small, so that the weights fill the 256-row
// column tiles): sums[r][c] is the count of activation row r (out column) and weight
// row c (out row). Eight-by-eight blocks are transposed in registers so that out is
// written eight columns at a time. Same arithmetic as LutEpilogue.
struct LutEpilogueTransposed {
    const uint16_t *sums;  // [rows][kNRV][32]
    int64_t rows;          // activation rows: out columns, from the first
    int cols;              // weight rows of the tile: out rows, from the first
    int32_t *out;          // out row of weight row 0, column of activation row 0
    int64_t out_row;
    const int32_t *code_sums;  // of the activation rows, or null
    int32_t constant, scale;
    int shift;
    bool first, last;
};

// t[i][l] -> t[l][i] for 8 x 8 int32.
static inline void transpose8x8(__m256i (&t)[8]) {
    __m256i a[8], b[8];
    for (int i = 0; i < 4; ++i) {
        a[2 * i] = _mm256_unpacklo_epi32(t[2 * i], t[2 * i + 1]);
        a[2 * i + 1] = _mm256_unpackhi_epi32(t[2 * i], t[2 * i + 1]);
    }
    for (int h = 0; h < 2; ++h) {  // rows 0-3, then 4-7
        b[4 * h + 0] = _mm256_unpacklo_epi64(a[4 * h], a[4 * h + 2]);      // columns 0 | 4
        b[4 * h + 1] = _mm256_unpackhi_epi64(a[4 * h], a[4 * h + 2]);      // 1 | 5
        b[4 * h + 2] = _mm256_unpacklo_epi64(a[4 * h + 1], a[4 * h + 3]);  // 2 | 6
        b[4 * h + 3] = _mm256_unpackhi_epi64(a[4 * h + 1], a[4 * h + 3]);  // 3 | 7
    }
    for (int c = 0; c < 4; ++c) {
        t[c] = _mm256_permute2x128_si256(b[c], b[4 + c], 0x20);
        t[c + 4] = _mm256_permute2x128_si256(b[c], b[4 + c], 0x31);
    }
}

template <bool kFirst, bool kLast, bool kCodeSums>
static inline void lut_epilogue_transposed_of(const LutEpilogueTransposed &e) {
    const __m256i constant = _mm256_set1_epi32(e.constant);
    const __m256i scale = _mm256_set1_epi32(e.scale);
    const __m128i shift = _mm_cvtsi32_si128(e.shift);
    const __m256i zero = _mm256_setzero_si256();
    for (int64_t r0 = 0; r0 < e.rows; r0 += 8) {
        const int n = static_cast<int>(e.rows - r0 < 8 ? e.rows - r0 : 8);
        const __m256i mask = first_dwords(n);
        const __m256i sums_n =
            kCodeSums ? _mm256_maskload_epi32(e.code_sums + r0, mask) : zero;
        for (int c0 = 0; c0 < e.cols; c0 += 8) {
            __m256i t[8];
            for (int i = 0; i < 8; ++i) {
                t[i] = i < n ? _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(
                                   e.sums + (r0 + i) * kNRV * 32 + c0)))
                             : zero;
            }
            transpose8x8(t);
            const int m = e.cols - c0 < 8 ? e.cols - c0 : 8;
            for (int i = 0; i < m; ++i) {
                int32_t *dst = e.out + (c0 + i) * e.out_row + r0;
                __m256i v = _mm256_sll_epi32(t[i], shift);
                if constexpr (!kFirst) v = _mm256_add_epi32(v, _mm256_maskload_epi32(dst, mask));
                if constexpr (kLast) {
                    v = _mm256_add_epi32(constant, _mm256_mullo_epi32(scale, v));
                    if constexpr (kCodeSums) v = _mm256_add_epi32(v, sums_n);
                }
                if (n == 8) {
                    _mm256_storeu_si256(reinterpret_cast<__m256i *>(dst), v);
                } else {
                    _mm256_maskstore_epi32(dst, mask, v);
                }
            }
        }
    }
}

static inline void lut_epilogue_transposed(const LutEpilogueTransposed &e) {
    const bool sums = e.code_sums != nullptr;
    if (e.first && e.last) {
        return sums ? lut_epilogue_transposed_of<true, true, true>(e)
                    : lut_epilogue_transposed_of<true, true, false>(e);
    }
    if (e.first) return lut_epilogue_transposed_of<true, false, false>(e);
    if (!e.last) return lut_epilogue_transposed_of<false, false, false>(e);
    return sums ? lut_epilogue_transposed_of<false, true, true>(e)
                : lut_epilogue_transposed_of<false, true, false>(e);
}

// ---- panels ---------------------------------------------------------------------------

// One operand as the packers see it: `planes` bit-planes of `rows` rows of W words,
// plane p row r at data[(p * rows + r) * W]; columns at or past K are cleared by
// last_mask in word W - 1.
struct BitRows {
    const uint64_t *data;
    int planes;
    int64_t rows, W;
    uint64_t last_mask;
};

static inline BitRows weights_of(const PopcountGemm &g) { return {g.w, g.Q, g.M, g.W, g.last_mask}; }
static inline BitRows activations_of(const PopcountGemm &g) {
    return {g.x, g.P, g.N, g.W, g.last_mask};
}

// Word k of a row with the columns at or past K cleared (k < W).
static inline uint64_t masked_word(const uint64_t *row, int64_t k, const BitRows &a) {
    return k == a.W - 1 ? row[k] & a.last_mask : row[k];
}

// Table side of a pass. Rows [r0, r1) of a panel that holds `count` rows from row
// `base`: for each pair of planes (2h, 2h+1; the second absent when the count is odd)
// and row r, the table offset of each digit d at panel[(h * count + r - base) * D + d],
// D = 16 W: 32 * (digit of plane 2h + 16 * digit of plane 2h+1). Digits past K are 0.
static void pack_table_digits(const BitRows &a, int64_t base, int64_t count, int64_t r0,
                              int64_t r1, uint16_t *panel) {
    const int64_t W = a.W;
    const int64_t D = kDigitsPerWord * W;
    const int pairs = (a.planes + 1) / 2;
    const __m256i low = _mm256_set1_epi8(0x0f);
    for (int h = 0; h < pairs; ++h) {
        const bool two = 2 * h + 1 < a.planes;
        for (int64_t r = r0; r < r1; ++r) {
            const uint64_t *lo_row = a.data + (2 * h * a.rows + r) * W;
            const uint64_t *hi_row = two ? a.data + ((2 * h + 1) * a.rows + r) * W : nullptr;
            uint16_t *dst = panel + (h * count + r - base) * D;
            int64_t k = 0;
            // Four words at a time: digits 2b and 2b+1 of word k are the low and high
            // nibbles of its byte b, so an interleave of the nibble bytes gives 16 digits
            // per word in order; widened to 16 bits and scaled by 32, table offsets.
            for (; k + 4 < W; k += 4) {  // whole chunks of four words before word W - 1
                const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(lo_row + k));
                const __m256i hi =
                    two ? _mm256_loadu_si256(reinterpret_cast<const __m256i *>(hi_row + k))
                        : _mm256_setzero_si256();
                // byte = lo-plane nibble | hi-plane nibble << 4: the table index.
                const __m256i idx_lo = _mm256_or_si256(
                    _mm256_and_si256(lo, low), _mm256_slli_epi16(_mm256_and_si256(hi, low), 4));
                const __m256i idx_hi = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(lo, 4), low),
                    _mm256_andnot_si256(low, hi));
                // In each lane: digits of bytes 0-7 (unpacklo) and 8-15 (unpackhi).
                const __m256i d01 = _mm256_unpacklo_epi8(idx_lo, idx_hi);  // words k | k+2
                const __m256i d23 = _mm256_unpackhi_epi8(idx_lo, idx_hi);  // words k+1 | k+3
                const __m256i words[4] = {
                    _mm256_permute2x128_si256(d01, d23, 0x20),  // words k, k+1 (32 digits)
                    _mm256_permute2x128_si256(d01, d23, 0x31)};  // words k+2, k+3
                for (int half = 0; half < 2; ++half) {
                    const __m256i v = words[half];
                    const __m256i off_lo =
                        _mm256_slli_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(v)), 5);
                    const __m256i off_hi =
                        _mm256_slli_epi16(_mm256_cvtepu8_epi16(_mm256_extracti128_si256(v, 1)), 5);
                    __m256i *d = reinterpret_cast<__m256i *>(dst + 16 * (k + 2 * half));
                    _mm256_storeu_si256(d, off_lo);
                    _mm256_storeu_si256(d + 1, off_hi);
                }
            }
            for (; k < W; ++k) {
                const uint64_t lo = masked_word(lo_row, k, a);
                const uint64_t hi = two ? masked_word(hi_row, k, a) : 0;
                for (int d = 0; d < kDigitsPerWord; ++d) {
                    const int v = static_cast<int>(((lo >> (4 * d)) & 15) | (((hi >> (4 * d)) & 15) << 4));
                    dst[kDigitsPerWord * k + d] = static_cast<uint16_t>(32 * v);
                }
            }
        }
    }
}

// The 4 x 4 transpose of 64-bit words: r[l] holds words k..k+3 of row l; afterwards
// r[t] holds word k+t of rows 0..3.
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

// The byte transpose of one word of 32 rows. v[i] holds that word of rows 2i, 2i+1
// (low lane) and 16+2i, 17+2i (high lane); afterwards y[b] holds byte b of rows 0..31.
static inline void transpose_bytes(const __m256i (&v)[8], __m256i (&y)[8]) {
    // Per lane: bytes of the two rows interleaved, 16-bit element b = byte b of both.
    const __m256i pairs = _mm256_setr_epi8(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15,  //
                                           0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
    __m256i e[8];
    for (int i = 0; i < 8; ++i) e[i] = _mm256_shuffle_epi8(v[i], pairs);
    // 8 x 8 transpose of 16-bit elements in each lane.
    __m256i a[4], b[4];
    for (int i = 0; i < 4; ++i) {
        a[i] = _mm256_unpacklo_epi16(e[2 * i], e[2 * i + 1]);  // elements 0-3 of rows 2i, 2i+1
        b[i] = _mm256_unpackhi_epi16(e[2 * i], e[2 * i + 1]);  // elements 4-7
    }
    const __m256i c0 = _mm256_unpacklo_epi32(a[0], a[1]), c1 = _mm256_unpackhi_epi32(a[0], a[1]);
    const __m256i c2 = _mm256_unpacklo_epi32(a[2], a[3]), c3 = _mm256_unpackhi_epi32(a[2], a[3]);
    const __m256i d0 = _mm256_unpacklo_epi32(b[0], b[1]), d1 = _mm256_unpackhi_epi32(b[0], b[1]);
    const __m256i d2 = _mm256_unpacklo_epi32(b[2], b[3]), d3 = _mm256_unpackhi_epi32(b[2], b[3]);
    y[0] = _mm256_unpacklo_epi64(c0, c2);
    y[1] = _mm256_unpackhi_epi64(c0, c2);
    y[2] = _mm256_unpacklo_epi64(c1, c3);
    y[3] = _mm256_unpackhi_epi64(c1, c3);
    y[4] = _mm256_unpacklo_epi64(d0, d2);
    y[5] = _mm256_unpackhi_epi64(d0, d2);
    y[6] = _mm256_unpacklo_epi64(d1, d3);
    y[7] = _mm256_unpackhi_epi64(d1, d3);
}

// Where digit d of group j (of `groups`) of plane p starts in a byte-side panel: the
// groups come in tiles of kNRV, each tile's digits one after the other, each digit
// the tile's groups side by side.
static inline int64_t byte_digit_offset(int64_t groups, int64_t D, int p, int64_t j, int64_t d) {
    const int64_t tile = j / kNRV;
    const int64_t in_tile = groups - kNRV * tile < kNRV ? groups - kNRV * tile : kNRV;
    return ((p * groups + kNRV * tile) * D + d * in_tile + j % kNRV) * 32;
}

// Byte side of a pass. Rows [r0, r1) (r0 - base a multiple of 32) of a panel that
// holds `groups` groups of 32 rows from row `base`: plane p, group j (rows
// base + 32j ..), digit d at panel[byte_digit_offset(groups, D, p, j, d) + i] for
// row base + 32j + i, D = 16 W; rows past r1 in the last group, and digits past K,
// are 0.
static void pack_byte_digits(const BitRows &a, int64_t base, int64_t groups, int64_t r0,
                             int64_t r1, uint8_t *panel) {
    const int64_t W = a.W;
    const int64_t D = kDigitsPerWord * W;
    const __m256i low = _mm256_set1_epi8(0x0f);
    const __m256i mask = _mm256_set1_epi64x(static_cast<long long>(a.last_mask));
    // Row i of a group goes to lane (i % 2) + 2 (i / 16) of v[(i % 16) / 2].
    for (int p = 0; p < a.planes; ++p) {
        for (int64_t g0 = r0; g0 < r1; g0 += kGroupRows) {
            const int64_t j = (g0 - base) / kGroupRows;
            const uint64_t *rows[kGroupRows];
            for (int i = 0; i < kGroupRows; ++i) {
                rows[i] = g0 + i < r1 ? a.data + (p * a.rows + g0 + i) * W : nullptr;
            }
            const int64_t step = byte_digit_offset(groups, D, p, j, 1) -
                                 byte_digit_offset(groups, D, p, j, 0);
            uint8_t *dst = panel + byte_digit_offset(groups, D, p, j, 0);
            for (int64_t k = 0; k < W; k += 4) {
                const int words = static_cast<int>(W - k < 4 ? W - k : 4);
                const __m256i tail_lanes = _mm256_cmpgt_epi64(_mm256_set1_epi64x(words),
                                                              _mm256_setr_epi64x(0, 1, 2, 3));
                __m256i v[4][8];  // v[t][i]: word k+t of the rows of slot i
                for (int i = 0; i < 8; ++i) {
                    const int members[4] = {2 * i, 2 * i + 1, 16 + 2 * i, 17 + 2 * i};
                    __m256i r[4];
                    for (int l = 0; l < 4; ++l) {
                        const uint64_t *row = rows[members[l]];
                        if (row == nullptr) {
                            r[l] = _mm256_setzero_si256();
                        } else if (words == 4) {
                            r[l] = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(row + k));
                        } else {  // masked lanes are not read: nothing past the row is touched
                            r[l] = _mm256_maskload_epi64(reinterpret_cast<const long long *>(row + k),
                                                         tail_lanes);
                        }
                    }
                    transpose4(r);
                    for (int t = 0; t < 4; ++t) v[t][i] = r[t];
                }
                for (int t = 0; t < words; ++t) {
                    if (k + t == W - 1) {
                        for (int i = 0; i < 8; ++i) v[t][i] = _mm256_and_si256(v[t][i], mask);
                    }
                    __m256i y[8];
                    transpose_bytes(v[t], y);
                    uint8_t *digits = dst + kDigitsPerWord * (k + t) * step;
                    for (int b = 0; b < 8; ++b) {
                        const __m256i lo = _mm256_and_si256(y[b], low);
                        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(y[b], 4), low);
                        _mm256_storeu_si256(reinterpret_cast<__m256i *>(digits + 2 * b * step), lo);
                        _mm256_storeu_si256(
                            reinterpret_cast<__m256i *>(digits + (2 * b + 1) * step), hi);
                    }
                }
            }
        }
    }
}

}  // namespace apb::bgemm_avx2
