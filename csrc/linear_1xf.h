// A whole binary Linear layer with float activations (weight-only binarization):
//
//   y[n, m] = alpha_m * s_n * D[n, m] + sum_{e in row m of S} v_e * x[n, k_e] + bias_m
//   D[n, m] = sum_k sign(m, k) * a[n, k]                       (exact, in integers)
//
// x is float32 [N, K] row-major, y float32 [N, M] row-major (torch's F.linear layout).
// Each token (row of x) is quantized symmetrically to int8 codes a = clamp(rint(x *
// (127 / amax_n)), -127, 127) with scale s_n = amax_n / 127, amax_n = max_k |x[n, k]|;
// that is the only approximation: D is the exact integer product, and the sparse
// correction S (CSR, the full-precision weights) multiplies the float x itself.
//
// How D is computed (docs/performance.md, "Binary weights x float activations"): table
// lookup over groups of g = 4 columns (T-MAC, Wei et al. 2024). For each token and group
// q the 16 signed sums T_q[i] = sum_{c<4} (bit c of i ? -a[4q+c] : a[4q+c]) (|T| <= 508)
// are tabulated once per call; a weight row's 4 bits of group q index them, so
// D[n, m] = sum_q T_q[nibble(m, q)] exactly. Per ISA:
//   - AVX2 (linear_1xf_simd.h, "lut16"): T as two 16-byte tables (low and high bytes); one
//     vpshufb looks up 32 rows; unpacking the two bytes gives int16, summed for at most
//     kFlushGroups groups (64 * 508 < 2^15), then widened to int32.
//   - AVX-512 with VBMI + VNNI (linear_1xf_vbmi_avx512.cpp, "vbmi"): 4 groups' tables in
//     one 64-byte register; one vpermb looks up 16 rows x 4 groups, one vpdpbusd adds the
//     4 bytes of each row into int32 (T = 128 h + l: two lookups, weights 1 and 128).
//   - scalar: the plain sum of signed codes.
// table_bits = 8 rounds each token's T to int8 steps first (one lookup per group on
// VBMI: twice the rate; the same results, no faster, on the other ISAs).
//
// Work: tokens are prepared in parallel (scale, codes, tables; x transposed in blocks of
// 16 or 32 tokens for the sparse part when N > 4), then blocks of 256 rows x a token block
// run in parallel; each walks K in chunks (linear_1xf_simd.h) so the chunk's tables and
// weights stay in cache, keeps int32 partial sums per row and token, then adds the
// sparse correction (a gather from x's rows for N <= 4, else one AXPY of the block's
// tokens per nonzero from x transposed) and writes y.
//
// The weights are a panel repacked once per layer from the pack_signs layout
// (linear_1xf_pack): tiles of 64 rows; per tile and group 32 bytes, each byte holding two
// rows' nibbles, placed so that the AVX2 kernel's lookups come out in natural row order
// (panel_slot below); the VBMI kernel gathers its operands from the same bytes with
// vpermt2b. Rows past M and columns past K read as anything: activations past K are 0,
// and rows past M are never stored.
#pragma once

#include <cstdint>

#include "spmm_csr.h"

namespace apb {

namespace linear_1xf_layout {

constexpr int64_t kTileRows = 64;    // rows per panel tile
constexpr int64_t kGroup = 4;        // columns per lookup (g)
constexpr int64_t kTileBytes = 32;   // bytes per tile and group: 64 nibbles
constexpr int64_t kTableBytes = 32;  // per token and group: 16 low bytes, 16 high bytes
constexpr int64_t kFlushGroups = 64; // int16 partial sums widened at least this often
constexpr int64_t kBlockRows = 256;  // rows of a block of the output (4 tiles)

inline int64_t tiles(int64_t M) { return (M + kTileRows - 1) / kTileRows; }
inline int64_t groups(int64_t K) { return (K + kGroup - 1) / kGroup; }
inline int64_t panel_bytes(int64_t M, int64_t K) { return tiles(M) * groups(K) * kTileBytes; }

// Where row r (0..63) of a tile sits in its group's 32 bytes: byte `byte`, high nibble
// when `high`. The AVX2 kernel splits the bytes into low and high nibbles (i = 0, 1),
// looks up each, interleaves low and high table bytes with unpacklo/unpackhi (p = 0, 1)
// into int16 lanes j, then widens even and odd lanes (parity) into int32 lanes l:
// row r = 32 i + 16 p + 8 parity + l, j = 2 l + parity, and int16 lane j of
// unpack{lo,hi} reads byte 8 p + j for j < 8, 16 + 8 p + (j - 8) for j >= 8.
struct Slot {
    int byte;
    bool high;
};
inline Slot panel_slot(int r) {
    const int i = r / 32, p = (r / 16) % 2, parity = (r / 8) % 2, l = r % 8;
    const int j = 2 * l + parity;
    const int byte = j < 8 ? 8 * p + j : 16 + 8 * p + (j - 8);
    return Slot{byte, i == 1};
}

}  // namespace linear_1xf_layout

// Repacks pack_signs rows (uint64 [M, ceil(K/64)], bit 1 = -1) into the panel (uint8
// [tiles(M), groups(K), 32]); bits past K and rows past M become 0. Reads exactly
// M * ceil(K/64) words, writes panel_bytes(M, K) bytes.
void linear_1xf_pack(const uint64_t *w, int64_t M, int64_t K, uint8_t *panel);

// The layer. panel: panel_bytes(M, K) bytes; alpha: alpha_len floats (1: one alpha for
// the layer, M: one per output); sparse: a CSR matrix of M rows whose indices are < K,
// or null; bias: M floats or null.
struct Linear1xf {
    const uint8_t *panel = nullptr;
    int64_t M = 0, K = 0;
    const float *alpha = nullptr;
    int64_t alpha_len = 1;
    const CsrMatrix *sparse = nullptr;
    const float *bias = nullptr;
    // 16: exact tables (D is the exact integer product of signs and codes); 8: each
    // token's table values rounded to int8 (linear_1xf_detail::table_scale), one more
    // rounding for half the lookups' work where the ISA can use it.
    int table_bits = 16;
};

// Throws std::invalid_argument unless the CSR matrix is well formed for K inputs (the
// checks of spmm_csr_validate, written so that the index check is one vectorized pass).
void linear_1xf_validate(const CsrMatrix &a, int64_t K);

// out: float32 [N, M]. Validates the CSR structure (linear_1xf_validate) before touching
// out; dispatches to the active ISA; threads split the tokens' preparation, then the
// rows (and the tokens, for large N).
void linear_1xf(const Linear1xf &layer, const float *x, int64_t N, float *out);

// One core's lookup rate on L1-resident data: lookups (one weight row's nibble against
// one token's table, i.e. 4 multiply-adds) per second, in G/s, best of `trials`, with the
// active ISA's microkernel for table_bits. The limit linear_1xf is quoted against for
// large N.
double linear_1xf_lookup_rate(int trials, int table_bits);

// The microkernel the active ISA runs: "scalar", "lut16" (AVX2, and AVX-512 without
// VBMI + VNNI), "vbmi" or "vbmi8" (AVX-512 with VBMI and VNNI, exact or int8 tables).
const char *linear_1xf_kernel_name(int table_bits);

// ---- per-ISA parts, driven by linear_1xf.cpp -------------------------------------------

// Per token n: the scale, and what the ISA's product reads (its tables, in its layout).
struct Linear1xfPrep {
    const float *x;       // [N, K]
    int64_t N, K, Q;      // Q = groups(K)
    float *scales;        // [N]: s_n (NaN when row n holds a non-finite value)
    uint8_t *tables;      // [N, table_stride]
    int64_t table_stride; // bytes per token
};

// A block of the output: rows [m0, m1) (m0 a multiple of kBlockRows, at most that many)
// x tokens [n0, n1).
struct Linear1xfBlock {
    const Linear1xf *layer;
    const Linear1xfPrep *prep;
    const float *xt;      // tokens [n0, n0 + xt_width) of x transposed, [K][xt_width]
                          // (zero past N), or null (small N: the sparse part reads x)
    int64_t xt_width;
    float *out;           // [N, M]
    int64_t m0, m1, n0, n1;
};

struct Linear1xfKernels {
    int64_t (*table_stride)(int64_t Q);         // bytes of one token's tables
    void (*prepare)(const Linear1xfPrep &p, int64_t n0, int64_t n1);
    void (*block)(const Linear1xfBlock &b);
    // Tokens [n0, n0 + width) of x [N, K] into xt [K][width] (zero past N), columns
    // [k0, k1); null when the ISA never reads xt.
    void (*transpose)(const float *x, int64_t N, int64_t K, int64_t n0, int64_t width, float *xt,
                      int64_t k0, int64_t k1);
    // n1 - n0 of a block (but the last) when N > small_n: tokens_per_block, or
    // small_tokens_per_block when N is at most that.
    int64_t tokens_per_block, small_tokens_per_block;
    int64_t small_n;           // N at or below which the sparse part reads x, not xt
    double (*lookup_rate)(int trials);
    const char *name;  // of the microkernel
};

Linear1xfKernels linear_1xf_kernels_scalar(int table_bits);
Linear1xfKernels linear_1xf_kernels_avx2(int table_bits);
Linear1xfKernels linear_1xf_kernels_avx512(int table_bits);
// AVX-512 VBMI + VNNI (linear_1xf_vbmi_avx512.cpp); only for CPUs that have both.
Linear1xfKernels linear_1xf_kernels_avx512_vbmi(int table_bits);

// Shared by every ISA (portable, exact): the scale of a token and its int8 codes, and
// the epilogue's constants.
namespace linear_1xf_detail {

// A token's scale from amax = max_k |x[n, k]| (and whether the row is all finite):
// s = amax / 127, codes = clamp(rint(x * (127 / amax)), -127, 127) in float32, rounded
// to nearest even, identically on every ISA. A row holding inf or NaN gets s = NaN
// (its outputs are NaN, as a float product's would be), and a row with amax below
// kTinyAmax (127 / amax would overflow) is taken as zero; both get all codes 0.
constexpr float kTinyAmax = 1e-36f;

struct TokenScale {
    float scale;    // s_n
    float inverse;  // 127 / amax, used when !zero_codes
    bool zero_codes;
};

inline TokenScale token_scale(float amax, bool finite) {
    if (!finite) return TokenScale{__builtin_nanf(""), 0.0f, true};
    if (!(amax >= kTinyAmax)) return TokenScale{0.0f, 0.0f, true};
    return TokenScale{amax / 127.0f, 127.0f / amax, false};
}

// With int8 tables (table_bits = 8), each table entry T (an integer, |T| <= tmax, tmax =
// max over the token's groups of sum_c |a_c|) becomes rint(T * inverse) with inverse =
// 127 / tmax in float32, and the token's scale is multiplied by scale = tmax / 127.
struct TableScale {
    float scale, inverse;
};
inline TableScale table_scale(int32_t tmax) {
    if (tmax <= 0) return TableScale{0.0f, 0.0f};
    const float t = static_cast<float>(tmax);
    return TableScale{t / 127.0f, 127.0f / t};
}

}  // namespace linear_1xf_detail

}  // namespace apb
