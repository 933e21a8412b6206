// The popcount roofline: XOR + popcount throughput of one core on L1-resident data.
//
// The bitwise GEMMs are measured against this limit (docs/design.md §8). It is the best of
// several loops over the same kind of work (load, XOR, popcount, accumulate), with
// nothing else around them and every operand in L1, so that a GEMM kernel's share of
// it says how much of the core's XOR + popcount rate it gets, not how well one loop
// was written. Methods, per instruction set:
//   popcnt       (scalar)  POPCNT (or the portable bit sum) per 64-bit word
//   lookup       (AVX2)    nibble lookup per 256 bits, vpsadbw per vector
//   harley_seal  (AVX2)    carry-save adders over 8 vectors, one lookup per 8
//   tiled        (AVX2)    the GEMM microkernel itself (bgemm_avx2.h: tables chosen
//                          by weight digits, looked up by activation digits of 256
//                          rows) on panels in L1
//   vpopcntq     (AVX-512) VPOPCNTQ per 512 bits
// The 1-D loops read two fresh operands per XOR; `tiled` reuses each weight digit's
// table 256 times and each activation vector once per weight row, as a GEMM may.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "cpu_features.h"

namespace apb {

enum class RooflineMethod : int { popcnt = 0, lookup, harley_seal, tiled, vpopcntq };

struct RooflineResult {
    double seconds = 0.0;   // wall time of the timed loop
    double bit_ops = 0.0;   // bits XORed and counted (one bit-op per bit of each operand pair)
    uint64_t checksum = 0;  // the accumulated popcount, returned so nothing is optimised away
};

// The methods the given ISA runs, in the order above.
std::vector<RooflineMethod> roofline_methods(Isa isa);
const char *roofline_method_name(RooflineMethod method);
// Throws std::invalid_argument for an unknown name.
RooflineMethod roofline_method_from_name(const std::string &name);

// Runs `method` with the active ISA `repeats` times on the calling thread only, over
// two operands a, b of `words` 64-bit words (a positive multiple of 32), filled with a
// fixed pseudo-random pattern. One pass computes
//   1-D methods: sum_i popcount(a[i] ^ b[i])                        (64 * words bit-ops)
//   tiled:       sum_{r < 16, c < 256} popcount(a_r ^ b_c) over the first 252 bits,
//                with a_r (b_c) words [4r, 4r + 4) of a (b); words >= 1024
//                                                                 (16 * 256 * 252 bit-ops)
// Throws std::invalid_argument for bad sizes or a method the active ISA lacks.
RooflineResult xor_popcount_roofline(int64_t words, int64_t repeats, RooflineMethod method);

// The operands xor_popcount_roofline fills (exposed so tests can recompute the checksum).
void roofline_operands(int64_t words, std::vector<uint64_t> &a, std::vector<uint64_t> &b);

// Per ISA: `method` on a and b as above (words % 32 == 0, operands already in cache).
RooflineResult roofline_scalar(RooflineMethod method, const uint64_t *a, const uint64_t *b,
                               int64_t words, int64_t repeats);
RooflineResult roofline_avx2(RooflineMethod method, const uint64_t *a, const uint64_t *b,
                             int64_t words, int64_t repeats);
RooflineResult roofline_avx512(RooflineMethod method, const uint64_t *a, const uint64_t *b,
                               int64_t words, int64_t repeats);

// Times `repeats` calls of pass() (each returning a popcount, worth bit_ops_per_pass)
// after one untimed call that warms the caches. Shared by the per-ISA files.
template <class Pass>
inline RooflineResult time_passes(int64_t repeats, double bit_ops_per_pass, Pass &&pass) {
    RooflineResult r;
    pass();
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t rep = 0; rep < repeats; ++rep) {
        // The barrier makes every pass real: the compiler may not reuse the last result.
        asm volatile("" : : : "memory");
        r.checksum += pass();
    }
    const auto t1 = std::chrono::steady_clock::now();
    r.seconds = std::chrono::duration<double>(t1 - t0).count();
    r.bit_ops = bit_ops_per_pass * static_cast<double>(repeats);
    return r;
}

}  // namespace apb
