// Bit-plane packing of k-bit unsigned codes (2-bit activations, DoReFa weight codes).
//
// A row of K codes (uint8, each < 2^P) becomes P rows of ceil(K/64) little-endian
// 64-bit words, one per bit-plane: bit j of word w of plane p is bit p of code
// 64*w + j. The planes are stacked as [P, rows, W], so plane p of all rows is one
// [rows, W] operand of the bitwise GEMMs. Bits past K in the last word are 0.
#pragma once

#include <cstdint>

namespace apb {

// Packs N rows of K codes, row n at codes + n*K, into out [P, N, ceil(K/64)].
// Dispatches to the active ISA and runs rows in parallel. Reads exactly N*K bytes and
// writes exactly P*N*ceil(K/64) words. Returns the bitwise OR of all codes, so the
// caller can tell whether any code had a bit at or above P (those bits are dropped).
uint8_t pack_planes(const uint8_t *codes, int64_t N, int64_t K, int P, uint64_t *out);

// One row, per ISA: writes word w of plane p to out[p * plane_stride + w], for
// w < ceil(K/64) and p < P (1 <= P <= 8), and returns the OR of the row's codes. The
// x86 ones exist only in builds for x86 (APB_HAVE_X86_KERNELS) and must only be called
// when cpu_features() says so.
uint8_t pack_planes_row_scalar(const uint8_t *codes, int64_t K, int P, int64_t plane_stride,
                               uint64_t *out);
uint8_t pack_planes_row_avx2(const uint8_t *codes, int64_t K, int P, int64_t plane_stride,
                             uint64_t *out);
uint8_t pack_planes_row_avx512(const uint8_t *codes, int64_t K, int P, int64_t plane_stride,
                               uint64_t *out);

}  // namespace apb
