// Bit-plane packing with AVX-512 (BW): 64 codes per vector, one vptestmb per plane
// gives the plane's word directly; the partial last word uses a masked load, which
// never touches memory past codes[K-1]. Compiled with -mavx512f -mavx512bw (and
// friends); called only when cpu_features().avx512.
#include <immintrin.h>

#include "pack_planes.h"

namespace apb {

uint8_t pack_planes_row_avx512(const uint8_t *codes, int64_t K, int P, int64_t plane_stride,
                               uint64_t *out) {
    __m512i all = _mm512_setzero_si512();
    const int64_t W = (K + 63) / 64;
    for (int64_t w = 0; w < W; ++w) {
        const int64_t n = K - 64 * w < 64 ? K - 64 * w : 64;
        const __mmask64 valid = n == 64 ? ~__mmask64{0} : (__mmask64{1} << n) - 1;
        const __m512i v = _mm512_maskz_loadu_epi8(valid, codes + 64 * w);
        all = _mm512_or_si512(all, v);
        for (int p = 0; p < P; ++p) {
            const __m512i bit = _mm512_set1_epi8(static_cast<char>(1u << p));
            out[p * plane_stride + w] = static_cast<uint64_t>(_mm512_test_epi8_mask(v, bit));
        }
    }
    alignas(64) uint8_t lanes[64];
    _mm512_store_si512(lanes, all);
    uint8_t result = 0;
    for (uint8_t b : lanes) result |= b;
    return result;
}

}  // namespace apb
