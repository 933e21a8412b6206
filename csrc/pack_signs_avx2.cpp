// Sign packing with AVX2: eight floats per compare, collected with movemask.
// Compiled with -mavx2; called only when cpu_features().avx2 is true.
#include <immintrin.h>

#include "pack_signs.h"

namespace apb {

namespace {

// Signed-integer view of the rule in pack_signs.h: x < 0 iff its bits, as int32,
// lie strictly between INT32_MIN (-0.0) and 0xff800001 (the first negative NaN).
struct NegativeRange {
    __m256i above = _mm256_set1_epi32(static_cast<int32_t>(0x80000000u));
    __m256i below = _mm256_set1_epi32(static_cast<int32_t>(0xff800001u));
};

inline uint32_t negative_mask8(const float *x, const NegativeRange &r) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x));
    const __m256i neg =
        _mm256_and_si256(_mm256_cmpgt_epi32(v, r.above), _mm256_cmpgt_epi32(r.below, v));
    return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(neg)));
}

}  // namespace

void pack_signs_row_avx2(const float *x, int64_t K, uint64_t *out) {
    const NegativeRange range;
    const int64_t full = K / 64;
    for (int64_t w = 0; w < full; ++w) {
        const float *xw = x + 64 * w;
        uint64_t word = 0;
        for (int c = 0; c < 8; ++c) {
            word |= static_cast<uint64_t>(negative_mask8(xw + 8 * c, range)) << (8 * c);
        }
        out[w] = word;
    }
    const int64_t rest = K % 64;
    if (rest != 0) {
        // The last, partial word: whole groups of eight, then one float at a time, so
        // nothing past x[K-1] is ever loaded.
        const float *xw = x + 64 * full;
        uint64_t word = 0;
        int64_t j = 0;
        for (; j + 8 <= rest; j += 8) {
            word |= static_cast<uint64_t>(negative_mask8(xw + j, range)) << j;
        }
        word |= pack_detail::pack_word_scalar(xw + j, rest - j) << j;
        out[full] = word;
    }
}

}  // namespace apb
