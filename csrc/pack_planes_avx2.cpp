// Bit-plane packing with AVX2: 32 codes per vector; shifting bit p of every byte up to
// bit 7 lets vpmovmskb collect it. Compiled with -mavx2; called only when
// cpu_features().avx2 is true.
#include <immintrin.h>

#include <cstring>

#include "pack_planes.h"

namespace apb {

namespace {

// Packs 64 codes into one word per plane; returns the OR of the codes, byte-wise.
inline __m256i pack_word(const uint8_t *codes, int P, int64_t plane_stride, uint64_t *out) {
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(codes));
    const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(codes + 32));
    for (int p = 0; p < P; ++p) {
        // A 16-bit shift by 7-p moves bit p of each byte to bit 7 of the same byte;
        // what crosses from the low byte of a pair only reaches bits below 7-p.
        const __m128i shift = _mm_cvtsi32_si128(7 - p);
        const uint32_t bits_lo =
            static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_sll_epi16(lo, shift)));
        const uint32_t bits_hi =
            static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_sll_epi16(hi, shift)));
        out[p * plane_stride] =
            static_cast<uint64_t>(bits_lo) | static_cast<uint64_t>(bits_hi) << 32;
    }
    return _mm256_or_si256(lo, hi);
}

}  // namespace

uint8_t pack_planes_row_avx2(const uint8_t *codes, int64_t K, int P, int64_t plane_stride,
                             uint64_t *out) {
    __m256i all = _mm256_setzero_si256();
    const int64_t full = K / 64;
    for (int64_t w = 0; w < full; ++w) {
        all = _mm256_or_si256(all, pack_word(codes + 64 * w, P, plane_stride, out + w));
    }
    const int64_t rest = K % 64;
    if (rest != 0) {
        // The partial last word from a zero-padded copy: nothing past codes[K-1] is
        // read, and the padding codes give 0 bits.
        alignas(32) uint8_t tail[64] = {};
        std::memcpy(tail, codes + 64 * full, static_cast<size_t>(rest));
        all = _mm256_or_si256(all, pack_word(tail, P, plane_stride, out + full));
    }
    alignas(32) uint8_t lanes[32];
    _mm256_store_si256(reinterpret_cast<__m256i *>(lanes), all);
    uint8_t result = 0;
    for (uint8_t b : lanes) result |= b;
    return result;
}

}  // namespace apb
