// Bitwise GEMM with AVX2. Compiled with -mavx2 (and POPCNT); called only when
// cpu_features().avx2 is true.
//
// Popcount of 256-bit vectors by nibble lookup (Mula, Kurz, Lemire, "Faster
// population counts using AVX2 instructions", 2018): vpshufb looks up the bit count of
// each 4-bit nibble, the byte counts of successive chunks are summed with byte adds,
// and vpsadbw folds them into 64-bit sums only every kMaxChunks chunks (a byte holds
// at most 8 per chunk, so 31 chunks stay below 256).
#include <immintrin.h>

#include "bgemm.h"
#include "popcount.h"

namespace apb {

namespace {

constexpr int64_t kWordsPerChunk = 4;
constexpr int64_t kMaxChunks = 31;

inline __m256i nibble_popcount_lut() {
    return _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,  //
                            0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
}

// Sum of the 32 byte counts.
inline int64_t sum_bytes(__m256i bytes) {
    const __m256i s = _mm256_sad_epu8(bytes, _mm256_setzero_si256());
    const __m128i t = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    return _mm_cvtsi128_si64(t) + _mm_extract_epi64(t, 1);
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
    static constexpr int kMR = 4;
    static constexpr int kNR = 2;

    // One 256-bit chunk (4 words at `off`) of an MR x NR tile: each weight and each
    // activation vector is loaded once and used NR resp. MR times. `mask` is ANDed
    // into both operands (only for the chunk that holds the row's last word).
    template <BitOp op, int MR, int NR, bool kMasked>
    static inline __attribute__((always_inline)) void chunk(const uint64_t *w,
                                                            const uint64_t *x, int64_t W,
                                                            int64_t off, __m256i mask,
                                                            __m256i lut, __m256i low4,
                                                            __m256i (&bytes)[MR][NR]) {
        __m256i xv[NR];
        for (int j = 0; j < NR; ++j) {
            xv[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x + j * W + off));
            if constexpr (kMasked) xv[j] = _mm256_and_si256(xv[j], mask);
        }
        for (int i = 0; i < MR; ++i) {
            __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(w + i * W + off));
            if constexpr (kMasked) wv = _mm256_and_si256(wv, mask);
            for (int j = 0; j < NR; ++j) {
                const __m256i t = apply<op>(wv, xv[j]);
                const __m256i lo = _mm256_and_si256(t, low4);
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(t, 4), low4);
                bytes[i][j] = _mm256_add_epi8(bytes[i][j], _mm256_shuffle_epi8(lut, lo));
                bytes[i][j] = _mm256_add_epi8(bytes[i][j], _mm256_shuffle_epi8(lut, hi));
            }
        }
    }

    template <int MR, int NR>
    static inline __attribute__((always_inline)) void flush(__m256i (&bytes)[MR][NR],
                                                            int64_t (&c)[MR][NR]) {
        for (int i = 0; i < MR; ++i) {
            for (int j = 0; j < NR; ++j) {
                c[i][j] += sum_bytes(bytes[i][j]);
                bytes[i][j] = _mm256_setzero_si256();
            }
        }
    }

    // The microkernel: counts[i*NR + j] = sum_w popcount(op(w_i[w], x_j[w]) & mask_w)
    // over rows of W words. Whole chunks of 4 words in vectors; the 1-3 words past
    // the last whole chunk with scalar POPCNT, so nothing past a row is loaded.
    template <BitOp op, int MR, int NR>
    static void tile(const uint64_t *w, const uint64_t *x, int64_t W, uint64_t last_mask,
                     int64_t *counts) {
        const __m256i lut = nibble_popcount_lut();
        const __m256i low4 = _mm256_set1_epi8(0x0f);
        const __m256i ones = _mm256_set1_epi64x(-1);
        int64_t c[MR][NR] = {};
        __m256i bytes[MR][NR];
        for (int i = 0; i < MR; ++i) {
            for (int j = 0; j < NR; ++j) bytes[i][j] = _mm256_setzero_si256();
        }
        const int64_t chunks = W / kWordsPerChunk;
        // When 4 | W the last word sits in the last chunk, which then runs masked.
        const bool last_in_chunk = W % kWordsPerChunk == 0 && chunks > 0;
        const int64_t plain = last_in_chunk ? chunks - 1 : chunks;
        for (int64_t c0 = 0; c0 < plain; c0 += kMaxChunks) {
            const int64_t c1 = plain - c0 < kMaxChunks ? plain : c0 + kMaxChunks;
            for (int64_t ch = c0; ch < c1; ++ch) {
                chunk<op, MR, NR, false>(w, x, W, ch * kWordsPerChunk, ones, lut, low4, bytes);
            }
            flush<MR, NR>(bytes, c);
        }
        if (last_in_chunk) {
            const __m256i mask =
                _mm256_setr_epi64x(-1, -1, -1, static_cast<long long>(last_mask));
            chunk<op, MR, NR, true>(w, x, W, plain * kWordsPerChunk, mask, lut, low4, bytes);
            flush<MR, NR>(bytes, c);
        }
        for (int64_t k = chunks * kWordsPerChunk; k < W; ++k) {
            const uint64_t mask = k == W - 1 ? last_mask : ~uint64_t{0};
            for (int i = 0; i < MR; ++i) {
                const uint64_t wv = w[i * W + k] & mask;
                for (int j = 0; j < NR; ++j) {
                    const uint64_t xv = x[j * W + k];
                    c[i][j] += popcount64(op == BitOp::Xor ? (wv ^ (xv & mask)) : (wv & xv));
                }
            }
        }
        for (int i = 0; i < MR; ++i) {
            for (int j = 0; j < NR; ++j) counts[i * NR + j] = c[i][j];
        }
    }
};

}  // namespace

PopcountGemmKernel popcount_gemm_kernel_avx2() { return bgemm_detail::kernel_of<Avx2Kernels>(); }

}  // namespace apb
