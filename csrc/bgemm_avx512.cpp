// Bitwise GEMM with AVX-512: VPOPCNTQ counts the eight 64-bit lanes of a 512-bit
// vector in one instruction, summed per lane across chunks. Compiled with
// -mavx512f -mavx512vpopcntdq (and friends); called only when cpu_features().avx512.
#include "bgemm_avx512.h"

namespace apb {

namespace {

constexpr int64_t kWordsPerChunk = 8;

// Sum of the eight 64-bit lanes. (GCC 12's _mm512_reduce_add_epi64 trips its own
// -Wuninitialized through _mm256_undefined_si256; this runs once per tile.)
inline int64_t sum_lanes(__m512i v) {
    alignas(64) int64_t lanes[8];
    _mm512_store_si512(lanes, v);
    int64_t s = 0;
    for (int64_t lane : lanes) s += lane;
    return s;
}

using bgemm_avx512_detail::apply;

struct Avx512Kernels {
    // 16 accumulators + 4 activation vectors + 1 weight vector of the 32 zmm registers.
    static constexpr int kMR = 4;
    static constexpr int kNR = 4;

    // One chunk of up to 8 words at `off`: lanes outside `lanes` are neither loaded nor
    // counted (masked loads do not touch that memory), and `mask` is ANDed into both
    // operands (all ones except for the chunk that holds the row's last word).
    template <BitOp op, int MR, int NR, bool kMasked>
    static inline __attribute__((always_inline)) void chunk(const uint64_t *w,
                                                            const uint64_t *x, int64_t W,
                                                            int64_t off, __mmask8 lanes,
                                                            __m512i mask,
                                                            __m512i (&acc)[MR][NR]) {
        __m512i xv[NR];
        for (int j = 0; j < NR; ++j) {
            if constexpr (kMasked) {
                xv[j] = _mm512_and_si512(_mm512_maskz_loadu_epi64(lanes, x + j * W + off), mask);
            } else {
                xv[j] = _mm512_loadu_si512(x + j * W + off);
            }
        }
        for (int i = 0; i < MR; ++i) {
            __m512i wv;
            if constexpr (kMasked) {
                wv = _mm512_and_si512(_mm512_maskz_loadu_epi64(lanes, w + i * W + off), mask);
            } else {
                wv = _mm512_loadu_si512(w + i * W + off);
            }
            for (int j = 0; j < NR; ++j) {
                acc[i][j] = _mm512_add_epi64(acc[i][j], _mm512_popcnt_epi64(apply<op>(wv, xv[j])));
            }
        }
    }

    // The microkernel: counts[i*NR + j] = sum_w popcount(op(w_i[w], x_j[w]) & mask_w)
    // over rows of W words. Whole chunks of 8 words, then the last (partial or whole)
    // chunk with masked loads and the last word's mask.
    template <BitOp op, int MR, int NR>
    static void tile(const uint64_t *w, const uint64_t *x, int64_t W, uint64_t last_mask,
                     int64_t *counts) {
        __m512i acc[MR][NR];
        for (int i = 0; i < MR; ++i) {
            for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_si512();
        }
        if (W > 0) {
            const int64_t last = (W - 1) / kWordsPerChunk;  // chunk holding word W-1
            const __m512i ones = _mm512_set1_epi64(-1);
            for (int64_t ch = 0; ch < last; ++ch) {
                chunk<op, MR, NR, false>(w, x, W, ch * kWordsPerChunk, 0xff, ones, acc);
            }
            const int64_t off = last * kWordsPerChunk;
            const int n = static_cast<int>(W - off);  // 1..8 words
            const __mmask8 lanes = static_cast<__mmask8>((1u << n) - 1u);
            const __m512i mask = _mm512_mask_set1_epi64(
                ones, static_cast<__mmask8>(1u << (n - 1)), static_cast<long long>(last_mask));
            chunk<op, MR, NR, true>(w, x, W, off, lanes, mask, acc);
        }
        for (int i = 0; i < MR; ++i) {
            for (int j = 0; j < NR; ++j) counts[i * NR + j] = sum_lanes(acc[i][j]);
        }
    }
};

}  // namespace

PopcountGemmKernel popcount_gemm_kernel_avx512() {
    return bgemm_detail::kernel_of<Avx512Kernels>();
}

}  // namespace apb
