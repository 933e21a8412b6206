// Bitwise GEMM with AVX2. Compiled with -mavx2 (and POPCNT); called only when
// cpu_features().avx2 is true.
//
// Popcount of 256-bit vectors by nibble lookup (Mula, Kurz, Lemire, "Faster
// population counts using AVX2 instructions", 2018): vpshufb looks up the bit count of
// each 4-bit nibble, the byte counts of successive chunks are summed with byte adds,
// and vpsadbw folds them into 64-bit sums only at the end of the row, or every
// kMaxChunks chunks of a longer one (a byte gains at most 8 per chunk, so 31 chunks
// stay below 256). Harley-Seal carry-save adders are not used: they need four or more
// state registers per output, which a register tile of several outputs cannot spare.
#include <immintrin.h>

#include "bgemm.h"

namespace apb {

namespace {

constexpr int64_t kWordsPerChunk = 4;
constexpr int64_t kMaxChunks = 31;

inline __m256i nibble_popcount_lut() {
    return _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,  //
                            0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
}

// Horizontal sums of four vectors of 64-bit lanes: {sum a, sum b, sum c, sum d}.
inline __m256i sum_lanes4(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i ab = _mm256_add_epi64(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b));
    const __m256i cd = _mm256_add_epi64(_mm256_unpacklo_epi64(c, d), _mm256_unpackhi_epi64(c, d));
    return _mm256_add_epi64(_mm256_permute2x128_si256(ab, cd, 0x20),
                            _mm256_permute2x128_si256(ab, cd, 0x31));
}

inline int64_t sum_lanes(__m256i v) {
    const __m128i t = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    return _mm_cvtsi128_si64(t) + _mm_extract_epi64(t, 1);
}

// Words [0, n) of p, 1 <= n <= 4, zero-extended to a vector; never reads p[n] or later.
inline __m256i load_words(const uint64_t *p, int n) {
    const __m128i *p128 = reinterpret_cast<const __m128i *>(p);
    switch (n) {
        case 1: return _mm256_zextsi128_si256(_mm_loadl_epi64(p128));
        case 2: return _mm256_zextsi128_si256(_mm_loadu_si128(p128));
        case 3:
            return _mm256_inserti128_si256(_mm256_zextsi128_si256(_mm_loadu_si128(p128)),
                                           _mm_loadl_epi64(p128 + 1), 1);
        default: return _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p));
    }
}

template <BitOp op>
inline __m256i apply(__m256i a, __m256i b) {
    if constexpr (op == BitOp::Xor) {
        return _mm256_xor_si256(a, b);
    } else {
        return _mm256_and_si256(a, b);
    }
}

struct Avx2Kernels {
    // A 4 x 2 tile fills the 16 ymm registers: 8 byte accumulators, 2 activation
    // vectors, a weight vector, 3 temporaries, the lookup table and the nibble mask.
    // (4x3 and 3x3 measured the same on Zen 3, 2x2 and 2x4 slower.)
    static constexpr int kMR = 4;
    static constexpr int kNR = 2;

    // One 256-bit chunk (4 words at `off`) of an MR x NR tile: each weight and each
    // activation vector is loaded once and used NR resp. MR times. The chunk that
    // holds a row's last word (kLast) loads only its n valid words and ANDs `mask`
    // (the last word's column mask) into both operands.
    template <BitOp op, int MR, int NR, bool kLast>
    static inline __attribute__((always_inline)) void chunk(const uint64_t *w,
                                                            const uint64_t *x, int64_t W,
                                                            int64_t off, int n, __m256i mask,
                                                            __m256i lut, __m256i low4,
                                                            __m256i (&bytes)[MR][NR]) {
        __m256i xv[NR];
        for (int j = 0; j < NR; ++j) {
            if constexpr (kLast) {
                xv[j] = _mm256_and_si256(load_words(x + j * W + off, n), mask);
            } else {
                xv[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x + j * W + off));
            }
        }
        for (int i = 0; i < MR; ++i) {
            __m256i wv;
            if constexpr (kLast) {
                wv = _mm256_and_si256(load_words(w + i * W + off, n), mask);
            } else {
                wv = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(w + i * W + off));
            }
            for (int j = 0; j < NR; ++j) {
                const __m256i t = apply<op>(wv, xv[j]);
                const __m256i lo = _mm256_and_si256(t, low4);
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(t, 4), low4);
                bytes[i][j] = _mm256_add_epi8(bytes[i][j], _mm256_shuffle_epi8(lut, lo));
                bytes[i][j] = _mm256_add_epi8(bytes[i][j], _mm256_shuffle_epi8(lut, hi));
            }
        }
    }

    // sums += the byte counts folded into 64-bit lanes; bytes = 0.
    template <int MR, int NR>
    static inline __attribute__((always_inline)) void flush(__m256i (&bytes)[MR][NR],
                                                            __m256i (&sums)[MR][NR]) {
        for (int i = 0; i < MR; ++i) {
            for (int j = 0; j < NR; ++j) {
                sums[i][j] = _mm256_add_epi64(sums[i][j],
                                              _mm256_sad_epu8(bytes[i][j], _mm256_setzero_si256()));
                bytes[i][j] = _mm256_setzero_si256();
            }
        }
    }

    // The chunk holding word W-1: its n = 1..4 valid words, all ones below lane n-1,
    // last_mask in lane n-1.
    template <BitOp op, int MR, int NR>
    static inline __attribute__((always_inline)) void last_chunk(
        const uint64_t *w, const uint64_t *x, int64_t W, int64_t last, uint64_t last_mask,
        __m256i lut, __m256i low4, __m256i (&bytes)[MR][NR]) {
        const int n = static_cast<int>(W - last * kWordsPerChunk);
        const __m256i lane = _mm256_setr_epi64x(0, 1, 2, 3);
        const __m256i top = _mm256_set1_epi64x(n - 1);
        const __m256i mask = _mm256_or_si256(
            _mm256_cmpgt_epi64(top, lane),
            _mm256_and_si256(_mm256_cmpeq_epi64(top, lane),
                             _mm256_set1_epi64x(static_cast<long long>(last_mask))));
        chunk<op, MR, NR, true>(w, x, W, last * kWordsPerChunk, n, mask, lut, low4, bytes);
    }

    // counts[i*NR + j] = the sum of the lanes of v[i][j], which holds byte counts
    // (kBytes) or 64-bit sums.
    template <bool kBytes, int MR, int NR>
    static inline __attribute__((always_inline)) void finish(__m256i (&v)[MR][NR],
                                                             int64_t *counts) {
        constexpr int T = MR * NR;
        __m256i flat[T];
        for (int i = 0; i < MR; ++i) {
            for (int j = 0; j < NR; ++j) {
                flat[i * NR + j] =
                    kBytes ? _mm256_sad_epu8(v[i][j], _mm256_setzero_si256()) : v[i][j];
            }
        }
        int t = 0;
        for (; t + 4 <= T; t += 4) {
            _mm256_storeu_si256(reinterpret_cast<__m256i *>(counts + t),
                                sum_lanes4(flat[t], flat[t + 1], flat[t + 2], flat[t + 3]));
        }
        for (; t < T; ++t) counts[t] = sum_lanes(flat[t]);
    }

    // The microkernel: counts[i*NR + j] = sum_w popcount(op(w_i[w], x_j[w]) & mask_w)
    // over rows of W words, in chunks of 4 words; the last chunk, whole or partial,
    // loads only words below W and applies the last word's mask.
    template <BitOp op, int MR, int NR>
    static void tile(const uint64_t *w, const uint64_t *x, int64_t W, uint64_t last_mask,
                     int64_t *counts) {
        const __m256i lut = nibble_popcount_lut();
        const __m256i low4 = _mm256_set1_epi8(0x0f);
        const __m256i zero = _mm256_setzero_si256();
        __m256i bytes[MR][NR];
        __m256i sums[MR][NR];  // only for rows longer than kMaxChunks chunks
        for (int i = 0; i < MR; ++i) {
            for (int j = 0; j < NR; ++j) bytes[i][j] = sums[i][j] = zero;
        }
        if (W > 0) {
            const int64_t last = (W - 1) / kWordsPerChunk;  // the chunk holding word W-1
            if (last < kMaxChunks) {
                // Rows of up to 124 words (7936 columns) need no flush before the end.
                for (int64_t ch = 0; ch < last; ++ch) {
                    chunk<op, MR, NR, false>(w, x, W, ch * kWordsPerChunk, kWordsPerChunk, zero,
                                             lut, low4, bytes);
                }
                last_chunk<op, MR, NR>(w, x, W, last, last_mask, lut, low4, bytes);
                finish<true>(bytes, counts);
                return;
            }
            for (int64_t c0 = 0; c0 < last; c0 += kMaxChunks) {
                const int64_t c1 = last - c0 < kMaxChunks ? last : c0 + kMaxChunks;
                for (int64_t ch = c0; ch < c1; ++ch) {
                    chunk<op, MR, NR, false>(w, x, W, ch * kWordsPerChunk, kWordsPerChunk, zero,
                                             lut, low4, bytes);
                }
                flush<MR, NR>(bytes, sums);
            }
            last_chunk<op, MR, NR>(w, x, W, last, last_mask, lut, low4, bytes);
            flush<MR, NR>(bytes, sums);
        }
        finish<false>(sums, counts);
    }
};

}  // namespace

PopcountGemmKernel popcount_gemm_kernel_avx2() { return bgemm_detail::kernel_of<Avx2Kernels>(); }

}  // namespace apb
