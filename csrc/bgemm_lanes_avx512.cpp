// Bitwise GEMM with AVX-512, activation columns across the lanes: a zmm register holds
// one 64-bit word of 8 activation rows, so a broadcast weight word, one AND/XOR and one
// VPOPCNTQ count 8 outputs at once, and the per-lane sums are the outputs themselves
// (no horizontal sums, unlike the in-place tiles of bgemm_avx512.cpp, which put the
// words of one row across the lanes). Meant for short rows (few words), where the
// table-lookup kernel spends most of its time packing and widening rather than
// counting. Compiled with the AVX-512 flags; called only when cpu_features().avx512.
#include <algorithm>

#include "bgemm_avx512.h"

namespace apb {

namespace {

constexpr int kLanes = 8;  // 64-bit lanes of a zmm register: columns per vector

// Register tiles: R weight rows x C vectors of 8 columns x P planes of accumulators,
// plus the C x P activation vectors of one word; at most 16 + 4 + 2 temporaries of the
// 32 zmm registers, so nothing spills. A tile of columns is C = kMaxC vectors wide;
// the last one, when narrower, runs with fewer (computing empty vectors cost a GEMM of
// 8 columns twice the time of 16 on long rows).
template <int P>
constexpr int kMaxC = P == 1 ? 4 : 2;
template <int C>
constexpr int kRows = C == 1 ? 8 : 4;

__mmask8 lanes_below(int64_t n) {
    return n >= kLanes ? static_cast<__mmask8>(0xff)
                       : static_cast<__mmask8>(n <= 0 ? 0u : (1u << n) - 1u);
}

// Words [k0, k0 + words) (words <= 4) of 8 activation rows of W words from `first`
// (rows from `valid` on are not read): out[i] holds word k0 + i of the 8 rows, one per
// lane. Rows j and j + 4 share a register (masked loads: the lanes left out touch no
// memory), then a 4 x 4 transpose of both halves at once: 8 shuffles in place of a
// gather per word, which took about 20 cycles on the Zen 4 and made packing a third
// of the kernel's time. kFull: all 8 rows valid (no per-row choices).
template <bool kFull>
inline __attribute__((always_inline)) void transpose_words(const uint64_t *first, int64_t W,
                                                           int64_t k0, int words, int valid,
                                                           __m512i (&out)[4]) {
    const __mmask8 lo = static_cast<__mmask8>((1u << words) - 1u);
    const auto load = [&](int j) {
        if constexpr (kFull) {
            return _mm256_maskz_loadu_epi64(lo, first + j * W + k0);
        } else {
            return _mm256_maskz_loadu_epi64(j < valid ? lo : 0, (j < valid ? first + j * W : first) + k0);
        }
    };
    __m512i z[4];
    for (int j = 0; j < 4; ++j) {
        z[j] = _mm512_inserti64x4(_mm512_castsi256_si512(load(j)), load(j + 4), 1);
    }
    // z[j] = row j words 0-3 | row j+4 words 0-3. Pairs of rows per 128-bit lane:
    const __m512i u0 = _mm512_unpacklo_epi64(z[0], z[1]);  // r0.0 r1.0 | r0.2 r1.2 | r4.. | r4..
    const __m512i u1 = _mm512_unpackhi_epi64(z[0], z[1]);  // words 1 and 3
    const __m512i u2 = _mm512_unpacklo_epi64(z[2], z[3]);
    const __m512i u3 = _mm512_unpackhi_epi64(z[2], z[3]);
    // Then the 128-bit lanes in row order: rows 0-1, 2-3, 4-5, 6-7.
    const __m512i even = _mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0);
    const __m512i odd = _mm512_set_epi64(15, 14, 7, 6, 11, 10, 3, 2);
    out[0] = _mm512_permutex2var_epi64(u0, even, u2);
    out[1] = _mm512_permutex2var_epi64(u1, even, u3);
    out[2] = _mm512_permutex2var_epi64(u0, odd, u2);
    out[3] = _mm512_permutex2var_epi64(u1, odd, u3);
}

// All W words of 8 rows from `first` (as transpose_words) into to[k * stride], the last
// masked with `last`; returns the per-lane popcount of the row.
template <bool kFull>
inline __m512i pack_rows(const uint64_t *first, int64_t W, int valid, __m512i last,
                         uint64_t *to, int64_t stride) {
    __m512i count = _mm512_setzero_si512();
    for (int64_t k0 = 0; k0 < W; k0 += 4) {
        const int words = static_cast<int>(std::min<int64_t>(4, W - k0));
        __m512i v[4];
        transpose_words<kFull>(first, W, k0, words, valid, v);
        // Constant indices into v (a loop to `words` kept v on the stack).
        for (int i = 0; i < 4; ++i) {
            if (i >= words) break;
            if (k0 + i == W - 1) v[i] = _mm512_and_si512(v[i], last);
            _mm512_store_si512(to + (k0 + i) * stride, v[i]);
            count = _mm512_add_epi64(count, _mm512_popcnt_epi64(v[i]));
        }
    }
    return count;
}

// Packs columns [n0, n0 + cols) of x (cols <= C * 8) into panel[W][P][C][8], the last
// word masked to the columns below K, missing columns zero; sums[c] gets, per lane,
// sum_p 2^p popcount(x[p, n]) of the column there. No row past N is read.
template <int P, int C>
void pack_tile(const PopcountGemm &g, int64_t n0, int64_t cols, uint64_t *panel,
               __m512i (&sums)[C]) {
    const int64_t W = g.W;
    const __m512i last = _mm512_set1_epi64(static_cast<long long>(g.last_mask));
    for (int c = 0; c < C; ++c) {
        const int valid = static_cast<int>(std::clamp<int64_t>(cols - c * kLanes, 0, kLanes));
        __m512i sum = _mm512_setzero_si512();  // a register: through sums[c] the adds
                                               // waited on store forwarding
        for (int p = 0; p < P; ++p) {
            const uint64_t *first = g.x + (p * g.N + n0 + c * kLanes) * W;
            uint64_t *to = panel + (p * C + c) * kLanes;  // word k at to + k * P * C * 8
            __m512i count = _mm512_setzero_si512();
            if (W == 1) {  // the 8 rows are 8 consecutive words
                const __m512i v = _mm512_and_si512(
                    _mm512_maskz_loadu_epi64(lanes_below(valid), first), last);
                _mm512_store_si512(to, v);
                count = _mm512_popcnt_epi64(v);
            } else if (valid == kLanes) {
                count = pack_rows<true>(first, W, valid, last, to, P * C * kLanes);
            } else {
                count = pack_rows<false>(first, W, valid, last, to, P * C * kLanes);
            }
            sum = _mm512_add_epi64(sum, _mm512_slli_epi64(count, p));
        }
        sums[c] = sum;
    }
}

using bgemm_avx512_detail::apply;

// One word k of rows [m, m + R): acc[r][p][c] += popcount(op(w[m + r, k] & mask, x)).
template <BitOp op, int P, int C, int R>
inline __attribute__((always_inline)) void count_word(const uint64_t *w, int64_t W, int64_t k,
                                                      uint64_t mask, const uint64_t *panel,
                                                      __m512i (&acc)[R][P][C]) {
    __m512i xv[P][C];
    for (int p = 0; p < P; ++p) {
        for (int c = 0; c < C; ++c) {
            xv[p][c] = _mm512_load_si512(panel + ((k * P + p) * C + c) * kLanes);
        }
    }
    for (int r = 0; r < R; ++r) {
        const __m512i wv = _mm512_set1_epi64(static_cast<long long>(w[r * W + k] & mask));
        for (int p = 0; p < P; ++p) {
            for (int c = 0; c < C; ++c) {
                acc[r][p][c] =
                    _mm512_add_epi64(acc[r][p][c], _mm512_popcnt_epi64(apply<op>(wv, xv[p][c])));
            }
        }
    }
}

// Rows [m, m + R) x the tile's columns. The last weight word is masked to the columns
// below K (the panel's already is), which XOR needs and AND does not mind; it is
// peeled off so that the loop over the others carries no mask.
template <BitOp op, int P, int C, int R>
inline __attribute__((always_inline)) void row_tile(const PopcountGemm &g, int64_t m,
                                                    const uint64_t *panel,
                                                    const __m256i (&base)[C], int64_t n0,
                                                    int64_t cols, int32_t *out) {
    const int64_t W = g.W;
    const uint64_t *w = g.w + m * W;
    __m512i acc[R][P][C];
    for (int r = 0; r < R; ++r) {
        for (int p = 0; p < P; ++p) {
            for (int c = 0; c < C; ++c) acc[r][p][c] = _mm512_setzero_si512();
        }
    }
    for (int64_t k = 0; k < W - 1; ++k) count_word<op, P, C, R>(w, W, k, ~uint64_t{0}, panel, acc);
    count_word<op, P, C, R>(w, W, W - 1, g.last_mask, panel, acc);
    // out = constant + code sum + scale * sum_p 2^p acc_p, in int32: the caller
    // guarantees that out fits, and int32 arithmetic wraps, so a partial sum that does
    // not fit still gives it.
    const __m256i scale = _mm256_set1_epi32(static_cast<int>(g.epilogue.scale));
    for (int r = 0; r < R; ++r) {
        int32_t *row = out + (m + r) * g.N + n0;
        for (int c = 0; c < C; ++c) {
            __m512i total = acc[r][0][c];
            for (int p = 1; p < P; ++p) {
                total = _mm512_add_epi64(total, _mm512_slli_epi64(acc[r][p][c], p));
            }
            const __m256i v =
                _mm256_add_epi32(base[c], _mm256_mullo_epi32(_mm512_cvtepi64_epi32(total), scale));
            _mm256_mask_storeu_epi32(row + c * kLanes, lanes_below(cols - c * kLanes), v);
        }
    }
}

// The last rows of the tile, fewer than R: the instantiation of exactly that count.
template <BitOp op, int P, int C, int R>
void rest_rows(int rows, const PopcountGemm &g, int64_t m, const uint64_t *panel,
               const __m256i (&base)[C], int64_t n0, int64_t cols, int32_t *out) {
    if constexpr (R > 1) {
        if (rows < R) return rest_rows<op, P, C, R - 1>(rows, g, m, panel, base, n0, cols, out);
    }
    row_tile<op, P, C, R>(g, m, panel, base, n0, cols, out);
}

// Vectors of 8 columns that a tile of `cols` columns runs with.
template <int P>
int vectors_for(int64_t cols) {
    if (cols <= kLanes) return 1;
    if (P == 1 && cols <= 2 * kLanes) return 2;
    return kMaxC<P>;
}

// The panel of columns [n0, n1): the packed words, then per vector of 8 columns the
// int32 epilogue base constant + code sum (8 int32, i.e. 4 words, per vector).
template <int P, int C>
void pack_tile_base(const PopcountGemm &g, int64_t n0, int64_t cols, uint64_t *panel) {
    __m512i sums[C];
    pack_tile<P, C>(g, n0, cols, panel, sums);
    __m256i *base = reinterpret_cast<__m256i *>(panel + g.W * P * C * kLanes);
    const __m512i constant = _mm512_set1_epi64(g.epilogue.constant);
    for (int c = 0; c < C; ++c) {
        const __m512i b = g.epilogue.add_code_sums ? _mm512_add_epi64(constant, sums[c]) : constant;
        _mm256_store_si256(base + c, _mm512_cvtepi64_epi32(b));
    }
}

template <BitOp op, int P, int C>
void rows_of_tile(const PopcountGemm &g, int64_t n0, int64_t cols, int64_t m0, int64_t m1,
                  const uint64_t *panel, int32_t *out) {
    constexpr int R = kRows<C>;
    __m256i base[C];
    const __m256i *stored = reinterpret_cast<const __m256i *>(panel + g.W * P * C * kLanes);
    for (int c = 0; c < C; ++c) base[c] = _mm256_load_si256(stored + c);
    int64_t m = m0;
    for (; m + R <= m1; m += R) row_tile<op, P, C, R>(g, m, panel, base, n0, cols, out);
    if (m < m1) {
        rest_rows<op, P, C, R - 1>(static_cast<int>(m1 - m), g, m, panel, base, n0, cols, out);
    }
}

template <int P>
void pack_lanes(const PopcountGemm &g, int64_t n0, int64_t n1, uint64_t *panel) {
    switch (vectors_for<P>(n1 - n0)) {
        case 1: return pack_tile_base<P, 1>(g, n0, n1 - n0, panel);
        case 2: return pack_tile_base<P, 2>(g, n0, n1 - n0, panel);
        default: return pack_tile_base<P, kMaxC<P>>(g, n0, n1 - n0, panel);
    }
}

template <BitOp op, int P>
void lanes_rows(const PopcountGemm &g, int64_t n0, int64_t n1, int64_t m0, int64_t m1,
                const uint64_t *panel, int32_t *out) {
    switch (vectors_for<P>(n1 - n0)) {
        case 1: return rows_of_tile<op, P, 1>(g, n0, n1 - n0, m0, m1, panel, out);
        case 2: return rows_of_tile<op, P, 2>(g, n0, n1 - n0, m0, m1, panel, out);
        default: return rows_of_tile<op, P, kMaxC<P>>(g, n0, n1 - n0, m0, m1, panel, out);
    }
}

template <int P>
LanesPopcountGemmKernel kernel_for(const PopcountGemm &g) {
    LanesPopcountGemmKernel k{};
    k.tile_columns = kMaxC<P> * kLanes;
    k.row_step = kRows<1>;  // a multiple of every R
    k.panel_words = g.W * P * k.tile_columns + kMaxC<P> * 4;
    k.pack = &pack_lanes<P>;
    k.rows = g.op == BitOp::Xor ? &lanes_rows<BitOp::Xor, P> : &lanes_rows<BitOp::And, P>;
    return k;
}

}  // namespace

LanesPopcountGemmKernel lanes_popcount_gemm_kernel_avx512(const PopcountGemm &g) {
    return g.P == 1 ? kernel_for<1>(g) : kernel_for<2>(g);
}

}  // namespace apb
