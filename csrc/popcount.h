// Population count of one 64-bit word, for code compiled with any flags.
#pragma once

#include <cstdint>

namespace apb {

// `static` so that each translation unit keeps the version its own flags allow (see
// pack_signs.h). With a hardware instruction (x86 POPCNT in the AVX2/AVX-512 files,
// AArch64 CNT) the builtin is one instruction; without one GCC would call libgcc's
// table-driven __popcountdi2, slower than the SWAR sum below.
static inline int64_t popcount64(uint64_t v) {
#if defined(__POPCNT__) || defined(__aarch64__) || defined(__ARM_NEON)
    return __builtin_popcountll(v);
#else
    v = v - ((v >> 1) & 0x5555555555555555ull);
    v = (v & 0x3333333333333333ull) + ((v >> 2) & 0x3333333333333333ull);
    v = (v + (v >> 4)) & 0x0f0f0f0f0f0f0f0full;
    return static_cast<int64_t>((v * 0x0101010101010101ull) >> 56);
#endif
}

}  // namespace apb
