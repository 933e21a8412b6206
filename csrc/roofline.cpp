// Timing loop and dispatch of the popcount roofline; compiled without ISA flags.
#include "roofline.h"

#include <chrono>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu_features.h"

namespace apb {

namespace {

using SumFn = uint64_t (*)(const uint64_t *, const uint64_t *, int64_t);

SumFn sum_for(Isa isa) {
    switch (isa) {
#if defined(APB_HAVE_X86_KERNELS)
        case Isa::avx512: return xor_popcount_sum_avx512;
        case Isa::avx2: return xor_popcount_sum_avx2;
#endif
        default: return xor_popcount_sum_scalar;
    }
}

}  // namespace

uint64_t xor_popcount_sum_scalar(const uint64_t *a, const uint64_t *b, int64_t words) {
    uint64_t total = 0;
    for (int64_t i = 0; i < words; ++i) total += __builtin_popcountll(a[i] ^ b[i]);
    return total;
}

RooflineResult xor_popcount_roofline(int64_t words, int64_t repeats) {
    if (words <= 0 || words % 32 != 0) {
        throw std::invalid_argument("xor_popcount_roofline: words must be a positive multiple "
                                    "of 32, got " + std::to_string(words));
    }
    if (repeats <= 0) {
        throw std::invalid_argument("xor_popcount_roofline: repeats must be positive, got " +
                                    std::to_string(repeats));
    }
    const SumFn sum = sum_for(active_isa());
    std::vector<uint64_t> a(words), b(words);
    uint64_t state = 0x9e3779b97f4a7c15ull;  // any fixed bit pattern will do
    for (int64_t i = 0; i < words; ++i) {
        state ^= state << 13; state ^= state >> 7; state ^= state << 17;
        a[i] = state;
        b[i] = state * 0xff51afd7ed558ccdull;
    }
    RooflineResult r;
    sum(a.data(), b.data(), words);  // warm the caches and the core
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t rep = 0; rep < repeats; ++rep) {
        // The barrier makes every pass real: the compiler may not reuse the last result.
        asm volatile("" : : "r"(a.data()), "r"(b.data()) : "memory");
        r.checksum += sum(a.data(), b.data(), words);
    }
    const auto t1 = std::chrono::steady_clock::now();
    r.seconds = std::chrono::duration<double>(t1 - t0).count();
    r.bit_ops = 64.0 * static_cast<double>(words) * static_cast<double>(repeats);
    return r;
}

}  // namespace apb
