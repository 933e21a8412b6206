// XOR + popcount with AVX2: nibble lookup (vpshufb) per byte, byte counts summed into
// 64-bit lanes with vpsadbw (Mula, Kurz, Lemire), four independent accumulators.
#include <immintrin.h>

#include "roofline.h"

namespace apb {

namespace {

inline __m256i popcount_bytes(__m256i v, __m256i lut, __m256i low) {
    const __m256i lo = _mm256_and_si256(v, low);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

inline __m256i xor_count(const uint64_t *a, const uint64_t *b, __m256i lut, __m256i low) {
    const __m256i x = _mm256_xor_si256(
        _mm256_loadu_si256(reinterpret_cast<const __m256i *>(a)),
        _mm256_loadu_si256(reinterpret_cast<const __m256i *>(b)));
    return _mm256_sad_epu8(popcount_bytes(x, lut, low), _mm256_setzero_si256());
}

}  // namespace

uint64_t xor_popcount_sum_avx2(const uint64_t *a, const uint64_t *b, int64_t words) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    __m256i acc0 = _mm256_setzero_si256(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    for (int64_t i = 0; i < words; i += 16) {
        acc0 = _mm256_add_epi64(acc0, xor_count(a + i, b + i, lut, low));
        acc1 = _mm256_add_epi64(acc1, xor_count(a + i + 4, b + i + 4, lut, low));
        acc2 = _mm256_add_epi64(acc2, xor_count(a + i + 8, b + i + 8, lut, low));
        acc3 = _mm256_add_epi64(acc3, xor_count(a + i + 12, b + i + 12, lut, low));
    }
    const __m256i acc = _mm256_add_epi64(_mm256_add_epi64(acc0, acc1),
                                         _mm256_add_epi64(acc2, acc3));
    alignas(32) uint64_t lanes[4];
    _mm256_store_si256(reinterpret_cast<__m256i *>(lanes), acc);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

}  // namespace apb
