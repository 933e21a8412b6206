// Bit-packing of signs: the layout every bitwise kernel in apb reads.
//
// A float row x[0..K) becomes ceil(K/64) little-endian 64-bit words: bit j of word w
// is 1 iff x[64*w + j] < 0. So sign(0) = +1 maps to bit 0, and -0.0 and NaN (of
// either sign) also map to 0; a negative denormal maps to 1. The test is made on the
// IEEE-754 bit pattern, not with a float compare, so the result does not depend on
// the thread's denormals-are-zero mode. Bits past K in the last word are 0.
#pragma once

#include <cstdint>
#include <cstring>

namespace apb {

// Packs M rows of K floats, row m at x + m*K, into out + m*ceil(K/64). Dispatches to
// the active ISA and runs rows in parallel. Reads exactly M*K floats and writes
// exactly M*ceil(K/64) words.
void pack_signs(const float *x, int64_t M, int64_t K, uint64_t *out);

// The inverse for inspection and tests: M rows of W >= ceil(K/64) words into M rows
// of K floats, each +1.0f (bit 0) or -1.0f (bit 1). Bits past K are ignored.
void unpack_signs(const uint64_t *bits, int64_t M, int64_t W, int64_t K, float *out);

// One row, per ISA: writes ceil(K/64) words. The x86 ones exist only in builds for
// x86 (APB_HAVE_X86_KERNELS) and must only be called when cpu_features() says so.
void pack_signs_row_scalar(const float *x, int64_t K, uint64_t *out);
void pack_signs_row_avx2(const float *x, int64_t K, uint64_t *out);
void pack_signs_row_avx512(const float *x, int64_t K, uint64_t *out);

// Helpers shared by the per-ISA files. They are `static` on purpose: each file is
// compiled with different -m flags, and a shared (inline, weak) copy emitted by the
// AVX-512 file could be the one the linker keeps for every caller.
namespace pack_detail {

static inline int64_t words_for(int64_t k) { return (k + 63) / 64; }

// Bit patterns of the floats with x < 0: 0x80000001 (-denorm_min) through 0xff800000
// (-inf). -0.0 is 0x80000000, negative NaNs lie above 0xff800000.
constexpr uint32_t kFirstNegative = 0x80000001u;
constexpr uint32_t kLastNegative = 0xff800000u;

static inline uint64_t sign_bit(const float *p) {
    uint32_t u;
    std::memcpy(&u, p, sizeof u);
    return (u - kFirstNegative) <= (kLastNegative - kFirstNegative) ? 1u : 0u;
}

// Bits of x[0..n), n <= 64, with the scalar rule.
static inline uint64_t pack_word_scalar(const float *x, int64_t n) {
    uint64_t word = 0;
    for (int64_t j = 0; j < n; ++j) word |= sign_bit(x + j) << j;
    return word;
}

}  // namespace pack_detail

}  // namespace apb
