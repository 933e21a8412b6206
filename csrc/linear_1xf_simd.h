// linear_1xf at the AVX2 level, shared by linear_1xf_avx2.cpp, linear_1xf_avx512.cpp
// (the same code with EVEX encodings and 32 vector registers: more tokens per microkernel
// call, 16-float sparse AXPYs) and linear_1xf_vbmi_avx512.cpp (its own microkernel and
// tables, this file's preparation, blocking, sparse part and epilogue). Include it from
// those files only; everything is `static` so each keeps its own copy (see pack_signs.h).
//
// A microkernel is a struct (Lut16 here, Vbmi/Vbmi8 in the VBMI file) with the layout of
// a token's tables (groups_padded, table_stride, emit: where group q's 16 int16 entries
// go) and tile<NB>: one panel tile (64 rows) x NB tokens over groups [q0, q1).
//
// Lut16::tile: per group, one 32-byte load holds the 64 rows' nibbles; split into low and
// high nibbles, each indexes the token's low-byte and high-byte tables (vpshufb, 32 rows
// per instruction), and unpacking the two results byte-wise gives the exact int16 table
// values, added into 4 int16 accumulators per token. Every kFlushGroups groups the int16
// sums are widened into int32 (even and odd lanes), which puts the rows in natural order
// (linear_1xf_layout::panel_slot). 12 vector operations per token and group for 256
// multiply-adds, plus 3 per group shared by the NB tokens.
#pragma once

#include <immintrin.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <vector>

#include "linear_1xf.h"
#include "simd_avx2.h"

namespace apb::linear_1xf_simd {

using namespace linear_1xf_layout;
using avx2::first_lanes;
using avx2::horizontal_sum;
using linear_1xf_detail::token_scale;
using spmm_detail::load_index;
using spmm_detail::with_csr_types;

// Tokens of a block when the sparse part reads x transposed: kBlockTokens, or
// kSmallBlockTokens when N is at most that (the AXPY's width is the block's).
constexpr int64_t kBlockTokens = 32;
constexpr int64_t kSmallBlockTokens = 16;
// Independent sums per row in the sparse AXPY (breaking the FMA latency chain). Two,
// with 16- or 8-float vectors alike: a transformer's rows hold few nonzeros (MiniLM's
// about 5 at 1.6 bits per weight), whose per-row setup and reduction four sets made
// dearer than the chains they broke (sparse part at N = 128: 384 -> 1536 99 -> 66 us,
// 1536 -> 384 105 -> 79 us; 4096 -> 4096 at 2 % about 8 % slower, docs/performance.md).
constexpr int kAccSets = 2;
// At or below this many tokens the sparse part gathers from the rows of x.
constexpr int64_t kSmallN = 4;

// ---- preparation: scale, int8 codes, tables ------------------------------------------

// Codes of x[0, count) (count may exceed 32 or be <= 0: only the first min(count, 32)
// floats are read, the rest count as 0), biased by +128, into out[32].
static inline void codes32(const float *x, int64_t count, __m256 inverse, uint8_t *out) {
    const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
    __m256i c[4];
    for (int j = 0; j < 4; ++j) {
        const int64_t left = count - 8 * j;
        __m256 v = _mm256_setzero_ps();
        if (left >= 8) {
            v = _mm256_loadu_ps(x + 8 * j);
        } else if (left > 0) {
            v = _mm256_maskload_ps(x + 8 * j, first_lanes(left));
        }
        // Round to nearest even (the default MXCSR mode, like std::nearbyint).
        c[j] = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v, inverse)), lo), hi);
    }
    __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
    b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i *>(out), _mm256_xor_si256(b, _mm256_set1_epi8(-128)));
}

// Sign of column c in entry i of a group's table: bit c of i set means weight -1.
constexpr int8_t sign_of(int i, int c) { return (i >> c) & 1 ? -1 : 1; }

// Table values of `count` (<= 8) groups from their 32 biased codes u: with vpmaddubsw,
// entry i is sum_c sign(i, c) * (a_c + 128) over two pairs of columns, minus
// 128 * sum_c sign(i, c). emit(g, t) receives group g's 16 int16 entries.
template <typename Emit>
static inline void table_values8(const uint8_t *u, int64_t count, Emit &&emit) {
    alignas(32) static const int8_t c01[32] = {
#define APB_PAIR(i, c) sign_of(i, c), sign_of(i, c + 1)
        APB_PAIR(0, 0),  APB_PAIR(1, 0),  APB_PAIR(2, 0),  APB_PAIR(3, 0),
        APB_PAIR(4, 0),  APB_PAIR(5, 0),  APB_PAIR(6, 0),  APB_PAIR(7, 0),
        APB_PAIR(8, 0),  APB_PAIR(9, 0),  APB_PAIR(10, 0), APB_PAIR(11, 0),
        APB_PAIR(12, 0), APB_PAIR(13, 0), APB_PAIR(14, 0), APB_PAIR(15, 0)};
    alignas(32) static const int8_t c23[32] = {
        APB_PAIR(0, 2),  APB_PAIR(1, 2),  APB_PAIR(2, 2),  APB_PAIR(3, 2),
        APB_PAIR(4, 2),  APB_PAIR(5, 2),  APB_PAIR(6, 2),  APB_PAIR(7, 2),
        APB_PAIR(8, 2),  APB_PAIR(9, 2),  APB_PAIR(10, 2), APB_PAIR(11, 2),
        APB_PAIR(12, 2), APB_PAIR(13, 2), APB_PAIR(14, 2), APB_PAIR(15, 2)};
#undef APB_PAIR
    alignas(32) static const int16_t bias[16] = {
#define APB_BIAS(i) static_cast<int16_t>(128 * (sign_of(i, 0) + sign_of(i, 1) + sign_of(i, 2) + sign_of(i, 3)))
        APB_BIAS(0),  APB_BIAS(1),  APB_BIAS(2),  APB_BIAS(3),  APB_BIAS(4),  APB_BIAS(5),
        APB_BIAS(6),  APB_BIAS(7),  APB_BIAS(8),  APB_BIAS(9),  APB_BIAS(10), APB_BIAS(11),
        APB_BIAS(12), APB_BIAS(13), APB_BIAS(14), APB_BIAS(15)};
#undef APB_BIAS
    const __m256i s01 = _mm256_load_si256(reinterpret_cast<const __m256i *>(c01));
    const __m256i s23 = _mm256_load_si256(reinterpret_cast<const __m256i *>(c23));
    const __m256i b = _mm256_load_si256(reinterpret_cast<const __m256i *>(bias));
    for (int64_t g = 0; g < count; ++g) {
        int16_t p01, p23;
        std::memcpy(&p01, u + 4 * g, 2);
        std::memcpy(&p23, u + 4 * g + 2, 2);
        emit(g, _mm256_sub_epi16(
                    _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_set1_epi16(p01), s01),
                                     _mm256_maddubs_epi16(_mm256_set1_epi16(p23), s23)),
                    b));
    }
}

// The AVX2 microkernel's tables: per group, the 16 low bytes of the entries, then their
// 16 high bytes (32 bytes).
struct Lut16 {
    static constexpr const char *kName = "lut16";
    static int64_t groups_padded(int64_t Q) { return Q; }
    static int64_t table_stride(int64_t Q) { return kTableBytes * Q; }
    // Group q's 16 entries t: their low bytes, then their high bytes.
    static void emit(int64_t q, __m256i t, uint8_t *tables) {
        const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                               0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
        const __m256i bytes = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(t, split), 0xd8);
        _mm256_storeu_si256(reinterpret_cast<__m256i *>(tables + kTableBytes * q), bytes);
    }
    template <int NB>
    static void tile(const uint8_t *w, const uint8_t *const *tables, int64_t q0, int64_t q1,
                     bool accumulate, int32_t *D);
};

// max over the 8 groups of 32 biased codes of sum_c |a_c|.
static inline int32_t group_abs_max8(const uint8_t *u) {
    const __m256i a = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(u)),
                                       _mm256_set1_epi8(-128));
    const __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(a), _mm256_set1_epi8(1));
    const __m256i sums = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));  // one per group
    alignas(32) int32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i *>(lanes), sums);
    int32_t m = 0;
    for (int32_t v : lanes) m = v > m ? v : m;
    return m;
}

// The 16 entries rounded to int8 steps of the token's table scale: rint(T * inverse), in
// float32 (|T| <= Tmax, so the result is within [-127, 127]).
static inline __m256i round_entries(__m256i t, __m256 inverse) {
    const __m256i lo = _mm256_cvtps_epi32(_mm256_mul_ps(
        _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(t))), inverse));
    const __m256i hi = _mm256_cvtps_epi32(_mm256_mul_ps(
        _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(t, 1))), inverse));
    return _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xd8);
}

// Per token: its scale (times the table scale Tmax / 127 with int8 tables) and tables,
// through Micro::emit(q, entries, tables) for every group up to Micro::groups_padded.
template <class Micro, bool kInt8Tables>
static void prepare(const Linear1xfPrep &p, int64_t n0, int64_t n1) {
    const __m256 sign = _mm256_set1_ps(-0.0f), big = _mm256_set1_ps(3.40282347e38f);
    for (int64_t n = n0; n < n1; ++n) {
        const float *x = p.x + n * p.K;
        __m256 amax = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
        int64_t k = 0;
        for (; k + 8 <= p.K; k += 8) {
            const __m256 v = _mm256_andnot_ps(sign, _mm256_loadu_ps(x + k));
            amax = _mm256_max_ps(amax, v);
            bad = _mm256_or_ps(bad, _mm256_cmp_ps(v, big, _CMP_NLE_UQ));
        }
        if (k < p.K) {
            const __m256 v = _mm256_andnot_ps(sign, _mm256_maskload_ps(x + k, first_lanes(p.K - k)));
            amax = _mm256_max_ps(amax, v);
            bad = _mm256_or_ps(bad, _mm256_cmp_ps(v, big, _CMP_NLE_UQ));
        }
        alignas(32) float lanes[8];
        _mm256_store_ps(lanes, amax);
        float m = 0.0f;
        for (float l : lanes) m = l > m ? l : m;
        const auto s = token_scale(m, _mm256_movemask_ps(bad) == 0);
        uint8_t *tables = p.tables + n * p.table_stride;
        const __m256 inverse = _mm256_set1_ps(s.inverse);
        alignas(32) uint8_t u[32];
        if (s.zero_codes) std::memset(u, 128, sizeof u);
        const int64_t groups = Micro::groups_padded(p.Q);  // past Q: codes 0, tables 0
        __m256 table_inverse = _mm256_setzero_ps();
        p.scales[n] = s.scale;
        if constexpr (kInt8Tables) {
            int32_t tmax = 0;
            for (int64_t q0 = 0; q0 < groups && !s.zero_codes; q0 += 8) {
                codes32(x + kGroup * q0, p.K - kGroup * q0, inverse, u);
                const int32_t g = group_abs_max8(u);
                tmax = g > tmax ? g : tmax;
            }
            const auto ts = linear_1xf_detail::table_scale(tmax);
            p.scales[n] = s.scale * ts.scale;
            table_inverse = _mm256_set1_ps(ts.inverse);
        }
        for (int64_t q0 = 0; q0 < groups; q0 += 8) {
            if (!s.zero_codes) codes32(x + kGroup * q0, p.K - kGroup * q0, inverse, u);
            table_values8(u, groups - q0 < 8 ? groups - q0 : 8, [&](int64_t g, __m256i t) {
                if constexpr (kInt8Tables) t = round_entries(t, table_inverse);
                Micro::emit(q0 + g, t, tables);
            });
        }
    }
}

// ---- the microkernel -------------------------------------------------------------------

// D[t][r] (+)= sum_{q0 <= q < q1} T_q^(t)[nibble(r, q)] for the tile's 64 rows r and NB
// tokens t (D[t] 64 int32 apart): added to D when `accumulate`, else stored.
template <int NB>
inline void Lut16::tile(const uint8_t *w, const uint8_t *const *tables, int64_t q0_, int64_t q1_,
                        bool accumulate, int32_t *D) {
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    for (int64_t q0 = q0_; q0 < q1_; q0 += kFlushGroups) {
        const int64_t q1 = q1_ - q0 < kFlushGroups ? q1_ : q0 + kFlushGroups;
        __m256i acc[NB][4];
        for (int t = 0; t < NB; ++t) {
            for (int j = 0; j < 4; ++j) acc[t][j] = _mm256_setzero_si256();
        }
        for (int64_t q = q0; q < q1; ++q) {
            const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(w + kTileBytes * q));
            const __m256i i0 = _mm256_and_si256(v, low4);
            const __m256i i1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
            for (int t = 0; t < NB; ++t) {
                const uint8_t *tab = tables[t] + kTableBytes * q;
                const __m256i lo = _mm256_broadcastsi128_si256(
                    _mm_loadu_si128(reinterpret_cast<const __m128i *>(tab)));
                const __m256i hi = _mm256_broadcastsi128_si256(
                    _mm_loadu_si128(reinterpret_cast<const __m128i *>(tab + 16)));
                const __m256i l0 = _mm256_shuffle_epi8(lo, i0), h0 = _mm256_shuffle_epi8(hi, i0);
                const __m256i l1 = _mm256_shuffle_epi8(lo, i1), h1 = _mm256_shuffle_epi8(hi, i1);
                acc[t][0] = _mm256_add_epi16(acc[t][0], _mm256_unpacklo_epi8(l0, h0));
                acc[t][1] = _mm256_add_epi16(acc[t][1], _mm256_unpackhi_epi8(l0, h0));
                acc[t][2] = _mm256_add_epi16(acc[t][2], _mm256_unpacklo_epi8(l1, h1));
                acc[t][3] = _mm256_add_epi16(acc[t][3], _mm256_unpackhi_epi8(l1, h1));
            }
        }
        const bool add = accumulate || q0 > q0_;
        for (int t = 0; t < NB; ++t) {
            for (int j = 0; j < 4; ++j) {
                const __m256i even = _mm256_srai_epi32(_mm256_slli_epi32(acc[t][j], 16), 16);
                const __m256i odd = _mm256_srai_epi32(acc[t][j], 16);
                __m256i *d = reinterpret_cast<__m256i *>(D + 64 * t + 16 * j);
                if (add) {
                    _mm256_store_si256(d, _mm256_add_epi32(_mm256_load_si256(d), even));
                    _mm256_store_si256(d + 1, _mm256_add_epi32(_mm256_load_si256(d + 1), odd));
                } else {
                    _mm256_store_si256(d, even);
                    _mm256_store_si256(d + 1, odd);
                }
            }
        }
    }
}

template <class Micro, int NB>
static inline void run_tile(int nb, const uint8_t *w, const uint8_t *const *tables, int64_t q0,
                            int64_t q1, bool accumulate, int32_t *D) {
    if constexpr (NB > 1) {
        if (nb < NB) return run_tile<Micro, NB - 1>(nb, w, tables, q0, q1, accumulate, D);
    }
    Micro::template tile<NB>(w, tables, q0, q1, accumulate, D);
}

// ---- the sparse part -------------------------------------------------------------------

template <typename I>
static inline __m256i load_indices8(const I *p) {
    if constexpr (sizeof(I) == 1) {
        return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(p)));
    } else if constexpr (sizeof(I) == 2) {
        return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
    } else {
        return _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p));
    }
}

template <typename V>
static inline __m256 load_values8(const V *p) {
    if constexpr (sizeof(V) == 2) {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
    } else {
        return _mm256_loadu_ps(p);
    }
}

template <typename V>
static inline float value_of(V v) {
    if constexpr (sizeof(V) == 2) {
        return _cvtsh_ss(v);
    } else {
        return v;
    }
}

// sp[t][r] = sum over row m0 + r's nonzeros of v * x[n0 + t, k], read from the rows of
// x (few tokens), for r < rows and t < tokens: scalar, four sums per token in flight
// (vector gathers measured slower, docs/performance.md).
template <typename P, typename I, typename V, int kTokens>
static void sparse_rows(const CsrMatrix &a, const float *x, int64_t K, int64_t m0, int rows,
                        int64_t n0, float (*sp)[kTileRows]) {
    const I *indices = static_cast<const I *>(a.indices);
    const V *values = static_cast<const V *>(a.values);
    const float *xr[kTokens];
    for (int t = 0; t < kTokens; ++t) xr[t] = x + (n0 + t) * K;
    for (int r = 0; r < rows; ++r) {
        const int64_t e0 = load_index<P>(a.indptr, m0 + r);
        const int64_t e1 = load_index<P>(a.indptr, m0 + r + 1);
        float s[kTokens][4] = {};
        int64_t e = e0;
        for (; e + 4 <= e1; e += 4) {
            for (int j = 0; j < 4; ++j) {
                const float v = value_of(values[e + j]);
                const int64_t k = static_cast<int64_t>(indices[e + j]);
                for (int t = 0; t < kTokens; ++t) s[t][j] = std::fma(v, xr[t][k], s[t][j]);
            }
        }
        for (; e < e1; ++e) {
            const float v = value_of(values[e]);
            const int64_t k = static_cast<int64_t>(indices[e]);
            for (int t = 0; t < kTokens; ++t) s[t][0] = std::fma(v, xr[t][k], s[t][0]);
        }
        for (int t = 0; t < kTokens; ++t) sp[t][r] = (s[t][0] + s[t][1]) + (s[t][2] + s[t][3]);
    }
}

template <typename P, typename I, typename V>
static void sparse_gather(const CsrMatrix &a, const float *x, int64_t K, int64_t m0, int rows,
                          int64_t n0, int tokens, float (*sp)[kTileRows]) {
    static_assert(kSmallN == 4);
    switch (tokens) {
        case 1: return sparse_rows<P, I, V, 1>(a, x, K, m0, rows, n0, sp);
        case 2: return sparse_rows<P, I, V, 2>(a, x, K, m0, rows, n0, sp);
        case 3: return sparse_rows<P, I, V, 3>(a, x, K, m0, rows, n0, sp);
        default: return sparse_rows<P, I, V, 4>(a, x, K, m0, rows, n0, sp);
    }
}

// The same from x transposed (xt [K][W], the block's W tokens): per row, one AXPY of W
// tokens per nonzero (kAccSets independent sums), then the rows x tokens block is
// transposed into sp.
// The AXPY's vector: 8 floats (AVX2), or 16 where the including file enables AVX-512.
#if defined(APB_L1XF_ZMM)
struct AxpyVec {
    using T = __m512;
    static constexpr int kWidth = 16;
    static T zero() { return _mm512_setzero_ps(); }
    static T set1(float v) { return _mm512_set1_ps(v); }
    static T load(const float *p) { return _mm512_load_ps(p); }
    static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
    static T add(T a, T b) { return _mm512_add_ps(a, b); }
    static void store(float *p, T v) { _mm512_store_ps(p, v); }
};
#else
struct AxpyVec {
    using T = __m256;
    static constexpr int kWidth = 8;
    static T zero() { return _mm256_setzero_ps(); }
    static T set1(float v) { return _mm256_set1_ps(v); }
    static T load(const float *p) { return _mm256_load_ps(p); }
    static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
    static T add(T a, T b) { return _mm256_add_ps(a, b); }
    static void store(float *p, T v) { _mm256_store_ps(p, v); }
};
#endif

// dst[c * dst_stride + r] = r8[r][c] for an 8 x 8 block held in eight vectors (rows r):
// unpack pairs, then quads, then halves.
static inline void transpose8x8_store(const __m256 *r8, float *dst, int64_t dst_stride) {
    __m256 a[8], b[8];
    for (int i = 0; i < 8; i += 2) {
        a[i] = _mm256_unpacklo_ps(r8[i], r8[i + 1]);
        a[i + 1] = _mm256_unpackhi_ps(r8[i], r8[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        b[i] = _mm256_shuffle_ps(a[i], a[i + 2], 0x44);
        b[i + 1] = _mm256_shuffle_ps(a[i], a[i + 2], 0xee);
        b[i + 2] = _mm256_shuffle_ps(a[i + 1], a[i + 3], 0x44);
        b[i + 3] = _mm256_shuffle_ps(a[i + 1], a[i + 3], 0xee);
    }
    for (int i = 0; i < 4; ++i) {
        // Column c of the block: b[i] holds columns {i, i + 4} of rows 0-3 | 4-7.
        _mm256_storeu_ps(dst + i * dst_stride, _mm256_permute2f128_ps(b[i], b[i + 4], 0x20));
        _mm256_storeu_ps(dst + (i + 4) * dst_stride, _mm256_permute2f128_ps(b[i], b[i + 4], 0x31));
    }
}

template <typename P, typename I, typename V, int W>
static void sparse_axpy(const CsrMatrix &a, const float *xt, int64_t m0, int rows, int tokens,
                        float (*sp)[kTileRows]) {
    using Vec = AxpyVec;
    constexpr int kVecs = W / Vec::kWidth;
    const I *indices = static_cast<const I *>(a.indices);
    const V *values = static_cast<const V *>(a.values);
    alignas(64) float rt[kTileRows][W];
    for (int r = 0; r < rows; ++r) {
        const int64_t e0 = load_index<P>(a.indptr, m0 + r);
        const int64_t e1 = load_index<P>(a.indptr, m0 + r + 1);
        typename Vec::T acc[kAccSets][kVecs];
        for (auto &set : acc) {
            for (auto &v : set) v = Vec::zero();
        }
        int64_t e = e0;
        const auto step = [&](int j, int64_t at) {
            const typename Vec::T v = Vec::set1(value_of(values[at]));
            const float *col = xt + static_cast<int64_t>(indices[at]) * W;
            for (int h = 0; h < kVecs; ++h) {
                acc[j][h] = Vec::fma(v, Vec::load(col + Vec::kWidth * h), acc[j][h]);
            }
        };
        for (; e + kAccSets <= e1; e += kAccSets) {
            for (int j = 0; j < kAccSets; ++j) step(j, e + j);
        }
        for (int j = 0; e < e1; ++e, ++j) step(j, e);
        for (int j = 1; j < kAccSets; ++j) {
            for (int h = 0; h < kVecs; ++h) acc[0][h] = Vec::add(acc[0][h], acc[j][h]);
        }
        for (int h = 0; h < kVecs; ++h) Vec::store(rt[r] + Vec::kWidth * h, acc[0][h]);
    }
    // rt [rows][W] -> sp [W][rows] in 8 x 8 blocks, in registers (a scalar copy of the
    // 2,048 values of a tile took a fifth of the sparse part at N = 128). Rows past
    // `rows` get zeros and tokens past `tokens` whatever their zero columns of xt gave;
    // the epilogue keeps neither.
    for (int r0 = 0; r0 < rows; r0 += 8) {
        const int block_rows = rows - r0 < 8 ? rows - r0 : 8;
        for (int t0 = 0; t0 < tokens; t0 += 8) {
            __m256 r8[8];
            for (int i = 0; i < 8; ++i) {
                r8[i] = i < block_rows ? _mm256_load_ps(rt[r0 + i] + t0) : _mm256_setzero_ps();
            }
            transpose8x8_store(r8, &sp[t0][r0], kTileRows);
        }
    }
}

// Tokens [n0, n0 + W) of x [N, K] transposed into xt [K][W] (W a multiple of 8, tokens
// past N zero), columns [k0, k1): 8 x 8 blocks transposed in registers.
static void transpose(const float *x, int64_t N, int64_t K, int64_t n0, int64_t W, float *xt,
                      int64_t k0, int64_t k1) {
    const int64_t tokens = N - n0 < W ? N - n0 : W;
    for (int64_t t0 = 0; t0 < W; t0 += 8) {
        const float *rows[8];
        bool present[8];
        for (int i = 0; i < 8; ++i) {
            present[i] = t0 + i < tokens;
            rows[i] = x + (n0 + (present[i] ? t0 + i : 0)) * K;
        }
        int64_t k = k0;
        for (; k + 8 <= k1; k += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; ++i) r[i] = present[i] ? _mm256_loadu_ps(rows[i] + k) : _mm256_setzero_ps();
            transpose8x8_store(r, xt + k * W + t0, W);
        }
        for (; k < k1; ++k) {
            for (int i = 0; i < 8; ++i) xt[k * W + t0 + i] = present[i] ? rows[i][k] : 0.0f;
        }
    }
}

// ---- the epilogue ----------------------------------------------------------------------

// y[m0 + r] = float(D[r]) * (alpha_m * s) (+ sp[r]) (+ bias_m) for r < rows.
static inline void epilogue(const Linear1xf &L, int64_t m0, int rows, const int32_t *D, float s,
                            const float *sp, float *y) {
    const __m256 sv = _mm256_set1_ps(s);
    const __m256 alpha0 = _mm256_set1_ps(L.alpha[0]);
    for (int v = 0; 8 * v < rows; ++v) {
        const int left = rows - 8 * v;
        const bool full = left >= 8;
        const __m256i mask = full ? _mm256_set1_epi32(-1) : first_lanes(left);
        const auto load = [&](const float *p) {
            return full ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, mask);
        };
        const __m256 alpha = L.alpha_len == 1 ? alpha0 : load(L.alpha + m0 + 8 * v);
        __m256 yv = _mm256_mul_ps(
            _mm256_cvtepi32_ps(_mm256_load_si256(reinterpret_cast<const __m256i *>(D + 8 * v))),
            _mm256_mul_ps(alpha, sv));
        if (sp != nullptr) yv = _mm256_add_ps(yv, _mm256_load_ps(sp + 8 * v));
        if (L.bias != nullptr) yv = _mm256_add_ps(yv, load(L.bias + m0 + 8 * v));
        if (full) {
            _mm256_storeu_ps(y + 8 * v, yv);
        } else {
            _mm256_maskstore_ps(y + 8 * v, mask, yv);
        }
    }
}

// ---- a block ---------------------------------------------------------------------------

// K is walked in chunks of kChunkGroups groups (a multiple of 4 and of kFlushGroups): the
// chunk's tables of the block's tokens (at most 32 x 4 KiB) and weights of its tiles (4 x
// 4 KiB) stay in L1/L2 while every tile meets every token, and the int32 partial sums
// wait in D (at most 4 x 32 x 64 x 4 = 32 KiB).
constexpr int64_t kChunkGroups = 128;

template <class Micro, int NB>
static void block(const Linear1xfBlock &b) {
    static_assert(kBlockTokens >= kSmallN && kChunkGroups % kFlushGroups == 0);
    constexpr int64_t kMaxTiles = kBlockRows / kTileRows;
    const Linear1xf &L = *b.layer;
    const Linear1xfPrep &p = *b.prep;
    const int tokens = static_cast<int>(b.n1 - b.n0);
    const int64_t tiles = (b.m1 - b.m0 + kTileRows - 1) / kTileRows;
    alignas(64) int32_t D[kMaxTiles][kBlockTokens][kTileRows];
    const uint8_t *tables[kBlockTokens];
    for (int t = 0; t < tokens; ++t) tables[t] = p.tables + (b.n0 + t) * p.table_stride;
    if (p.Q == 0) std::memset(D, 0, sizeof D);
    for (int64_t q0 = 0; q0 < p.Q; q0 += kChunkGroups) {
        const int64_t q1 = p.Q - q0 < kChunkGroups ? p.Q : q0 + kChunkGroups;
        for (int64_t i = 0; i < tiles; ++i) {
            const uint8_t *w = L.panel + (b.m0 / kTileRows + i) * p.Q * kTileBytes;
            for (int t = 0; t < tokens; t += NB) {
                const int nb = tokens - t < NB ? tokens - t : NB;
                run_tile<Micro, NB>(nb, w, tables + t, q0, q1, q0 > 0, &D[i][t][0]);
            }
        }
    }
    const bool sparse = L.sparse != nullptr && L.sparse->nnz > 0;
    alignas(32) float sp[kBlockTokens][kTileRows];
    for (int64_t i = 0; i < tiles; ++i) {
        const int64_t m0 = b.m0 + i * kTileRows;
        const int rows = static_cast<int>(b.m1 - m0 < kTileRows ? b.m1 - m0 : kTileRows);
        if (sparse) {
            with_csr_types(*L.sparse, [&](auto indptr_tag, auto index_tag, auto value_tag) {
                using P = decltype(indptr_tag);
                using I = decltype(index_tag);
                using V = decltype(value_tag);
                if (b.xt != nullptr && b.xt_width == kSmallBlockTokens) {
                    sparse_axpy<P, I, V, kSmallBlockTokens>(*L.sparse, b.xt, m0, rows, tokens, sp);
                } else if (b.xt != nullptr) {
                    sparse_axpy<P, I, V, kBlockTokens>(*L.sparse, b.xt, m0, rows, tokens, sp);
                } else {
                    sparse_gather<P, I, V>(*L.sparse, p.x, p.K, m0, rows, b.n0, tokens, sp);
                }
            });
        }
        for (int t = 0; t < tokens; ++t) {
            epilogue(L, m0, rows, D[i][t], p.scales[b.n0 + t], sparse ? sp[t] : nullptr,
                     b.out + (b.n0 + t) * L.M + m0);
        }
    }
}

// ---- the lookup limit ------------------------------------------------------------------

// The microkernel on one tile and NB tokens' tables of 128 groups (4 KiB each, in L1).
template <class Micro, int NB>
static double lookup_rate(int trials) {
    constexpr int64_t Q = 128;
    std::vector<uint8_t> w(Q * kTileBytes), tab(NB * Micro::table_stride(Q));
    for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<uint8_t>(i * 37 + 11);
    for (size_t i = 0; i < tab.size(); ++i) tab[i] = static_cast<uint8_t>(i * 13 + 5);
    const uint8_t *tables[NB];
    for (size_t i = 0; i < tab.size(); ++i) tab[i] &= 0x7f;  // valid for every table layout
    for (int t = 0; t < NB; ++t) tables[t] = tab.data() + t * Micro::table_stride(Q);
    alignas(32) int32_t D[NB][kTileRows];
    constexpr int kReps = 200;
    double best = 0.0;
    volatile int32_t sink = 0;
    for (int trial = 0; trial < trials; ++trial) {
        const auto t0 = std::chrono::steady_clock::now();
        for (int rep = 0; rep < kReps; ++rep) {
            Micro::template tile<NB>(w.data(), tables, 0, Q, false, &D[0][0]);
            sink = sink + D[rep % NB][rep % kTileRows];
        }
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const double rate = static_cast<double>(kReps) * kTileRows * Q * NB / s / 1e9;
        if (rate > best) best = rate;
    }
    return best;
}

template <class Micro, int NB, bool kInt8Tables = false>
static Linear1xfKernels kernels() {
    return Linear1xfKernels{&Micro::table_stride, &prepare<Micro, kInt8Tables>, &block<Micro, NB>,
                            &transpose,
                            kBlockTokens, kSmallBlockTokens, kSmallN, &lookup_rate<Micro, NB>,
                            Micro::kName};
}

}  // namespace apb::linear_1xf_simd
