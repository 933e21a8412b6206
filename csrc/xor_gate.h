// XOR-gate weight encryption (fixed-rate storage of sparse bit-planes).
//
// A bit-plane of n bits is cut into blocks of n_out bits (the last one padded with
// don't-care bits). A fixed random network over GF(2), n_out rows of n_in bits, maps
// the n_in stored bits x_b of block b to its n_out output bits:
//
//   y_b[i] = parity(rows[i] & x_b),   i.e.   y_b = XOR of the columns j with x_b[j] = 1.
//
// The encoder solves, block by block, rows[i] . x_b = bits[i] over the care bits i of
// the block (Gaussian elimination, each equation one uint64), keeping the care bits in
// order while they stay consistent; a care bit whose equation contradicts the earlier
// ones gets the value the network gives, and is recorded as a flip (a patch). The
// decoder XORs columns, eight input bits at a time through a table of the 256 XORs of
// each group of eight columns, then applies the patches.
//
// Streams are dense little-endian bitstreams (bit i = byte i/8, bit i%8):
//   inputs:  n_blocks fields of n_in bits, block order
//   patches: counts, per block its patch count in unary (that many 1s, then a 0), and
//            offsets, each patch's position in its block in offset_bits(n_out) bits,
//            block order, increasing within a block.
#pragma once

#include <cstdint>
#include <cstring>

namespace apb {

constexpr int kXorMaxInputs = 64;
constexpr int64_t kXorMaxOutputs = 4096;

// Throws std::invalid_argument unless 1 <= n_in <= 64, 8 <= n_out <= 4096,
// n_out % 8 == 0 and n_in <= n_out.
void xor_gate_check_shape(int64_t n_out, int n_in);

inline int64_t xor_gate_blocks(int64_t n_bits, int64_t n_out) {
    return (n_bits + n_out - 1) / n_out;
}
inline int64_t xor_gate_bytes(int64_t bits) { return (bits + 7) / 8; }
// Bits of one patch offset: enough for 0..n_out-1.
int xor_gate_offset_bits(int64_t n_out);
// Bytes of one row of the decode table: n_out bits rounded up to 32 bytes (one ymm).
inline int64_t xor_gate_row_bytes(int64_t n_out) { return (n_out / 8 + 31) / 32 * 32; }
inline int xor_gate_groups(int n_in) { return (n_in + 7) / 8; }

// Encoder. rows: n_out words, each < 2^n_in. bits, care: xor_gate_bytes(n_bits) bytes
// each. Writes inputs (xor_gate_bytes(n_blocks * n_in) bytes) and flips
// (xor_gate_bytes(n_bits) bytes; bit i = 1 where the decoded care bit i must be
// flipped), both entirely; returns the number of flips. Runs blocks in parallel.
int64_t xor_gate_encode(const uint64_t *rows, int64_t n_out, int n_in, const uint8_t *bits,
                        const uint8_t *care, int64_t n_bits, uint8_t *inputs, uint8_t *flips);

// Decode table [groups][256][row_bytes]: entry (g, v) is the XOR of the columns 8g + t
// with bit t of v set (columns past n_in count as zero), zero-padded to row_bytes.
void xor_gate_table(const uint64_t *rows, int64_t n_out, int n_in, uint8_t *table);

struct XorPatchStreams {
    const uint8_t *counts;
    int64_t count_bytes;
    const uint8_t *offsets;
    int64_t offset_bytes;
    int64_t n_patches;
};

// Decoder: out (xor_gate_bytes(n_bits) bytes) = the n_bits decoded bits, bits past
// n_bits in the last byte 0. Checks every stream's length and every patch (count,
// offset inside the block and inside the plane, increasing, stream padding 0) before
// it writes anything, and throws std::invalid_argument naming what is wrong. Decodes
// blocks in parallel with the active ISA, then applies the patches.
void xor_gate_decode(const uint8_t *table, int64_t n_out, int n_in, const uint8_t *inputs,
                     int64_t input_bytes, int64_t n_bits, const XorPatchStreams &patches,
                     uint8_t *out, int64_t out_bytes);

// Blocks [b0, b1) of a validated decode, per ISA, each followed by its patches (the
// positions [patches, patches_end), increasing, all inside these blocks). They write
// only bytes [b0 * n_out / 8, min(b1 * n_out / 8, out_bytes)) of out.
struct XorDecodeJob {
    const uint8_t *table;
    int64_t n_out;
    int n_in;
    int64_t row_bytes;
    const uint8_t *inputs;
    int64_t input_bytes;
    uint8_t *out;
    int64_t out_bytes;
    int64_t b0, b1;
    const int64_t *patches;
    const int64_t *patches_end;
};
void xor_gate_decode_blocks_scalar(const XorDecodeJob &job);
void xor_gate_decode_blocks_avx2(const XorDecodeJob &job);

namespace xor_detail {

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the XOR-gate streams are read as little-endian words"
#endif

// The 64 bits starting at byte `at` of a stream of n bytes, zeros past its end.
static inline uint64_t load_bytes(const uint8_t *s, int64_t n, int64_t at) {
    uint64_t v = 0;
    if (at + 8 <= n) {
        std::memcpy(&v, s + at, 8);
    } else if (at < n) {
        std::memcpy(&v, s + at, static_cast<size_t>(n - at));
    }
    return v;
}

// `width` (1..64) bits starting at bit `bit` of a stream of n bytes.
static inline uint64_t read_field(const uint8_t *s, int64_t n, int64_t bit, int width) {
    const int64_t at = bit >> 3;
    const int shift = static_cast<int>(bit & 7);
    uint64_t v;
    uint64_t high = 0;
    if (at + 9 <= n) {  // the common case: nine whole bytes from `at` on
        std::memcpy(&v, s + at, 8);
        high = s[at + 8];
    } else {
        v = load_bytes(s, n, at);
        if (at + 8 < n) high = s[at + 8];
    }
    v >>= shift;
    if (shift + width > 64) v |= high << (64 - shift);
    return width == 64 ? v : v & ((uint64_t{1} << width) - 1);
}

// Flips the patches before `end` (a position in the plane), advancing `next`.
static inline void apply_patches(uint8_t *out, const int64_t *&next, const int64_t *last,
                                 int64_t end) {
    for (; next < last && *next < end; ++next) {
        out[*next >> 3] ^= static_cast<uint8_t>(1u << (*next & 7));
    }
}

}  // namespace xor_detail

}  // namespace apb
