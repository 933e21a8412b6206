// The popcount roofline: XOR + popcount throughput of one core on L1-resident data.
//
// The bitwise GEMMs are measured against this limit (DESIGN §8): their inner loop is
// the same instruction mix (load, XOR, popcount, accumulate), here with nothing else
// around it, over two 4 KiB operands that stay in L1.
#pragma once

#include <cstdint>

namespace apb {

struct RooflineResult {
    double seconds = 0.0;   // wall time of the timed loop
    double bit_ops = 0.0;   // bits XORed and counted (one bit-op per bit of each operand pair)
    uint64_t checksum = 0;  // the accumulated popcount, returned so nothing is optimised away
};

// Runs the active ISA's loop over `words` 64-bit words per operand, `repeats` times, on
// the calling thread only. words must be a positive multiple of 32.
RooflineResult xor_popcount_roofline(int64_t words, int64_t repeats);

// One pass per ISA: popcount(a[i] XOR b[i]) summed over i < words (words % 32 == 0).
uint64_t xor_popcount_sum_scalar(const uint64_t *a, const uint64_t *b, int64_t words);
uint64_t xor_popcount_sum_avx2(const uint64_t *a, const uint64_t *b, int64_t words);
uint64_t xor_popcount_sum_avx512(const uint64_t *a, const uint64_t *b, int64_t words);

}  // namespace apb
