// The AVX2 roofline loops: nibble lookup, Harley-Seal, and the GEMM microkernel on
// panels in L1 (see roofline.h).
#include <immintrin.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "bgemm_avx2.h"
#include "roofline.h"

namespace apb {

namespace {


inline __m256i load(const uint64_t *p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p));
}

inline __m256i nibble_popcount_lut() {
    return _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,  //
                            0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
}

// Bit counts of each byte of v (Mula, Kurz, Lemire 2018).
inline __m256i popcount_bytes(__m256i v, __m256i lut, __m256i low) {
    const __m256i lo = _mm256_and_si256(v, low);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

inline uint64_t sum_lanes(__m256i v) {
    alignas(32) uint64_t lanes[4];
    _mm256_store_si256(reinterpret_cast<__m256i *>(lanes), v);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

// Nibble lookup per vector, vpsadbw into 64-bit lanes, four independent accumulators.
uint64_t lookup_pass(const uint64_t *a, const uint64_t *b, int64_t words) {
    const __m256i lut = nibble_popcount_lut();
    const __m256i low = _mm256_set1_epi8(0x0f);
    const __m256i zero = _mm256_setzero_si256();
    __m256i acc[4] = {zero, zero, zero, zero};
    for (int64_t i = 0; i < words; i += 16) {
        for (int u = 0; u < 4; ++u) {
            const __m256i x = _mm256_xor_si256(load(a + i + 4 * u), load(b + i + 4 * u));
            acc[u] = _mm256_add_epi64(acc[u], _mm256_sad_epu8(popcount_bytes(x, lut, low), zero));
        }
    }
    return sum_lanes(_mm256_add_epi64(_mm256_add_epi64(acc[0], acc[1]),
                                      _mm256_add_epi64(acc[2], acc[3])));
}

// Carry-save adder: h, l = the two-bit sums of a + b + c, bit by bit.
inline void csa(__m256i &h, __m256i &l, __m256i a, __m256i b, __m256i c) {
    const __m256i u = _mm256_xor_si256(a, b);
    h = _mm256_or_si256(_mm256_and_si256(a, b), _mm256_and_si256(u, c));
    l = _mm256_xor_si256(u, c);
}

// Harley-Seal (Mula, Kurz, Lemire 2018, §4): per 8 vectors, seven carry-save adders
// keep the ones, twos and fours of a bit-sliced counter and one lookup counts the
// eights. (Trees over 16 vectors measured no faster here.) The byte counters of the
// eights gain at most 8 per 8 vectors, folded every 31 rounds.
uint64_t harley_seal_pass(const uint64_t *a, const uint64_t *b, int64_t words) {
    const __m256i lut = nibble_popcount_lut();
    const __m256i low = _mm256_set1_epi8(0x0f);
    const __m256i zero = _mm256_setzero_si256();
    const auto in = [&](int64_t i) { return _mm256_xor_si256(load(a + i), load(b + i)); };
    __m256i ones = zero, twos = zero, fours = zero, total = zero;
    for (int64_t i0 = 0; i0 < words; i0 += 32 * 31) {
        const int64_t i1 = words - i0 < 32 * 31 ? words : i0 + 32 * 31;
        __m256i eights_bytes = zero;
        for (int64_t i = i0; i < i1; i += 32) {
            __m256i twos_a, twos_b, fours_a, fours_b, eights;
            csa(twos_a, ones, ones, in(i), in(i + 4));
            csa(twos_b, ones, ones, in(i + 8), in(i + 12));
            csa(fours_a, twos, twos, twos_a, twos_b);
            csa(twos_a, ones, ones, in(i + 16), in(i + 20));
            csa(twos_b, ones, ones, in(i + 24), in(i + 28));
            csa(fours_b, twos, twos, twos_a, twos_b);
            csa(eights, fours, fours, fours_a, fours_b);
            eights_bytes = _mm256_add_epi8(eights_bytes, popcount_bytes(eights, lut, low));
        }
        total = _mm256_add_epi64(total, _mm256_sad_epu8(eights_bytes, zero));
    }
    const auto count = [&](__m256i v) { return _mm256_sad_epu8(popcount_bytes(v, lut, low), zero); };
    total = _mm256_slli_epi64(total, 3);
    total = _mm256_add_epi64(total, _mm256_slli_epi64(count(fours), 2));
    total = _mm256_add_epi64(total, _mm256_slli_epi64(count(twos), 1));
    total = _mm256_add_epi64(total, count(ones));
    return sum_lanes(total);
}

// The GEMM microkernel on L1 panels: a and b cut into rows of 4 words, of which the
// first 252 columns count (63 digits: one interval between widenings of the byte
// counters); weight rows 0..15 of a against activation rows 0..255 of b (one column
// tile), all 16 x 256 dot products per pass. The pass returns the sum of the 16-bit
// sums (at most 256 x 252 per lane: no overflow).
RooflineResult tiled(const uint64_t *a, const uint64_t *b, int64_t words, int64_t repeats) {
    using namespace bgemm_avx2;
    constexpr int kRows = 16, kRowWords = 4, kColumns = 252;
    constexpr int64_t kDigits = kColumns / 4;
    static_assert(kTileCols == 256 && kDigits <= 255 / 4);
    if (words < kTileCols * kRowWords) {
        throw std::invalid_argument("roofline method tiled needs words >= 1024, got " +
                                    std::to_string(words));
    }
    const BitRows weights{a, 1, kRows, kRowWords, last_word_mask(kColumns)};
    const BitRows activations{b, 1, kTileCols, kRowWords, last_word_mask(kColumns)};
    const int64_t D = kDigitsPerWord * kRowWords;
    alignas(64) uint16_t w_digits[kRows * kDigitsPerWord * kRowWords];
    alignas(64) uint8_t x_digits[kTileCols * kDigitsPerWord * kRowWords];  // 16 KiB
    pack_table_digits(weights, 0, kRows, 0, kRows, w_digits);
    pack_byte_digits(activations, 0, kNRV, 0, kTileCols, x_digits);
    alignas(32) uint16_t sums[kRows * kNRV * kGroupRows];
    LutPass c;
    c.w = w_digits;
    c.w_row = D;
    c.tables = tables_of(BitOp::Xor);
    c.x = x_digits;
    c.x_step = kGroupRows * kNRV;
    c.d0 = 0;
    c.d1 = kDigits;
    c.flush = kDigits;
    c.rows = kRows;
    c.sums = sums;
    return time_passes(repeats, static_cast<double>(kRows) * kTileCols * kColumns, [&] {
        lut_pass<kNRV>(c);
        __m256i total = _mm256_setzero_si256();
        for (int i = 0; i < kRows * kNRV * kGroupRows; i += 16) {
            total = _mm256_add_epi16(total, _mm256_load_si256(reinterpret_cast<const __m256i *>(sums + i)));
        }
        // 16-bit lanes, each the sum of 256 sums of at most 252: below 2^16.
        alignas(32) uint16_t lanes[16];
        _mm256_store_si256(reinterpret_cast<__m256i *>(lanes), total);
        uint64_t sum = 0;
        for (uint16_t lane : lanes) sum += lane;
        return sum;
    });
}

}  // namespace

RooflineResult roofline_avx2(RooflineMethod method, const uint64_t *a, const uint64_t *b,
                             int64_t words, int64_t repeats) {
    const double bit_ops = 64.0 * static_cast<double>(words);
    switch (method) {
        case RooflineMethod::lookup:
            return time_passes(repeats, bit_ops, [&] { return lookup_pass(a, b, words); });
        case RooflineMethod::harley_seal:
            return time_passes(repeats, bit_ops, [&] { return harley_seal_pass(a, b, words); });
        case RooflineMethod::tiled: return tiled(a, b, words, repeats);
        default:
            throw std::invalid_argument(std::string("roofline method ") +
                                        roofline_method_name(method) + " is not an AVX2 one");
    }
}

}  // namespace apb
