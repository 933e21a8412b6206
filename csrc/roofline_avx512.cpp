// The AVX-512 roofline loop: XOR + VPOPCNTQ per 512 bits, four accumulators.
#include <stdexcept>
#include <string>

#include "roofline.h"
#include "simd_avx512.h"

namespace apb {

namespace {

inline __m512i xor_count(const uint64_t *a, const uint64_t *b) {
    return _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(a), _mm512_loadu_si512(b)));
}

uint64_t vpopcntq_pass(const uint64_t *a, const uint64_t *b, int64_t words) {
    __m512i acc0 = _mm512_setzero_si512(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    for (int64_t i = 0; i < words; i += 32) {
        acc0 = _mm512_add_epi64(acc0, xor_count(a + i, b + i));
        acc1 = _mm512_add_epi64(acc1, xor_count(a + i + 8, b + i + 8));
        acc2 = _mm512_add_epi64(acc2, xor_count(a + i + 16, b + i + 16));
        acc3 = _mm512_add_epi64(acc3, xor_count(a + i + 24, b + i + 24));
    }
    const __m512i acc = _mm512_add_epi64(_mm512_add_epi64(acc0, acc1),
                                         _mm512_add_epi64(acc2, acc3));
    alignas(64) uint64_t lanes[8];  // (gcc 12 warns inside _mm512_reduce_add_epi64)
    _mm512_store_si512(lanes, acc);
    uint64_t total = 0;
    for (uint64_t lane : lanes) total += lane;
    return total;
}

}  // namespace

RooflineResult roofline_avx512(RooflineMethod method, const uint64_t *a, const uint64_t *b,
                               int64_t words, int64_t repeats) {
    if (method != RooflineMethod::vpopcntq) {
        throw std::invalid_argument(std::string("roofline method ") +
                                    roofline_method_name(method) + " is not an AVX-512 one");
    }
    return time_passes(repeats, 64.0 * static_cast<double>(words),
                       [&] { return vpopcntq_pass(a, b, words); });
}

}  // namespace apb
