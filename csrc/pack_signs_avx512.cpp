// Sign packing with AVX-512: sixteen floats per mask compare; the partial last word
// uses masked loads, which never touch memory past x[K-1].
// Compiled with -mavx512f (and friends); called only when cpu_features().avx512.
#include <immintrin.h>

#include "pack_signs.h"

namespace apb {

void pack_signs_row_avx512(const float *x, int64_t K, uint64_t *out) {
    // Signed-integer view of the rule in pack_signs.h (see pack_signs_avx2.cpp).
    const __m512i above = _mm512_set1_epi32(static_cast<int32_t>(0x80000000u));
    const __m512i below = _mm512_set1_epi32(static_cast<int32_t>(0xff800001u));
    const int64_t words = pack_detail::words_for(K);
    for (int64_t w = 0; w < words; ++w) {
        const int64_t base = 64 * w;
        const int64_t n = K - base < 64 ? K - base : 64;
        uint64_t word = 0;
        for (int64_t off = 0; off < n; off += 16) {
            const int64_t count = n - off;
            const __mmask16 valid =
                count >= 16 ? static_cast<__mmask16>(0xffff)
                            : static_cast<__mmask16>((1u << count) - 1u);
            const __m512i v = _mm512_maskz_loadu_epi32(valid, x + base + off);
            const __mmask16 neg = _mm512_mask_cmpgt_epi32_mask(valid, v, above) &
                                  _mm512_mask_cmplt_epi32_mask(valid, v, below);
            word |= static_cast<uint64_t>(neg) << off;
        }
        out[w] = word;
    }
}

}  // namespace apb
