// linear_1xf with AVX-512 VBMI + VNNI (Ice Lake, Sapphire Rapids, Zen 4 and later): per
// 16 rows and 4 groups, one vpermb looks up all 4 groups at once in a 64-byte table (the
// 4 groups' 16-entry tables side by side), and one vpdpbusd adds the 4 looked-up bytes of
// each row into its int32 sum. Exact: a table value T (|T| <= 508) is kept as T = 128 h + l
// (l in [0, 128), h in [-4, 4)), two lookups added with weights 1 and 128 by vpdpbusd's
// unsigned operand. 4 operations per 256 multiply-adds and token (AVX2's kernel: 12),
// no int16 flushes. The weights are read from the same panel as every ISA (vpermt2b
// gathers each 16 rows x 4 groups from two 64-byte loads, shared by the tokens).
// Compiled with the AVX-512 flags plus VBMI and VNNI; linear_1xf_kernels_avx512 calls it
// only when the CPU reports both.
#pragma GCC target("f16c,avx512vbmi,avx512vnni")

#include "simd_avx512.h"
// The sparse AXPY in 16-float vectors.
#define APB_L1XF_ZMM 1
#include "linear_1xf_simd.h"

namespace apb {

namespace linear_1xf_simd {

namespace {

struct Vbmi {
    static constexpr const char *kName = "vbmi";
    static constexpr int64_t kQuadBytes = 128;  // per token and 4 groups: l tables, h tables

    static int64_t quads(int64_t Q) { return (Q + 3) / 4; }
    static int64_t groups_padded(int64_t Q) { return 4 * quads(Q); }
    static int64_t table_stride(int64_t Q) { return kQuadBytes * quads(Q); }

    // Group q's 16 l values at quad(q) + 16 (q % 4), its h values 64 bytes further.
    static void emit(int64_t q, __m256i t, uint8_t *tables) {
        const __m256i l = _mm256_and_si256(t, _mm256_set1_epi16(127));
        const __m256i h = _mm256_srai_epi16(t, 7);
        const __m256i bytes = _mm256_permute4x64_epi64(_mm256_packs_epi16(l, h), 0xd8);
        uint8_t *quad = tables + (q / 4) * kQuadBytes + (q % 4) * 16;
        _mm_storeu_si128(reinterpret_cast<__m128i *>(quad), _mm256_castsi256_si128(bytes));
        _mm_storeu_si128(reinterpret_cast<__m128i *>(quad + 64), _mm256_extracti128_si256(bytes, 1));
    }

    // perm[s][4 i + j]: the byte of panel group j (of the quad's 4, 32 bytes each) holding
    // row 16 s + i of the tile.
    struct Perms {
        alignas(64) uint8_t p[4][64];
        Perms() {
            for (int s = 0; s < 4; ++s) {
                for (int i = 0; i < 16; ++i) {
                    for (int j = 0; j < 4; ++j) {
                        p[s][4 * i + j] = static_cast<uint8_t>(32 * j + panel_slot(16 * s + i).byte);
                    }
                }
            }
        }
    };

    // The 16 rows x 4 groups of sub-block s of quad p: byte 4 i + j of the result is
    // (nibble of row 16 s + i in group 4 p + j) | 16 j, the index into a quad's tables.
    struct Indices {
        __m512i v[4];
    };
    static inline Indices indices(const uint8_t *w, int64_t Q, int64_t p) {
        static const Perms perms;
        const __m512i low4 = _mm512_set1_epi8(0x0f);
        const __m512i position = _mm512_set1_epi32(0x30201000);  // byte j of a row: 16 j
        const uint8_t *wq = w + p * 4 * kTileBytes;
        __m512i a, b;
        const int64_t valid = (Q - 4 * p) * kTileBytes;  // bytes of the quad in the panel
        if (valid >= 4 * kTileBytes) {
            a = _mm512_loadu_si512(wq);
            b = _mm512_loadu_si512(wq + 64);
        } else {  // the last, partial quad: nothing past the panel is read
            a = _mm512_maskz_loadu_epi8(valid >= 64 ? ~__mmask64{0} : (__mmask64{1} << valid) - 1, wq);
            b = _mm512_maskz_loadu_epi8(valid > 64 ? (__mmask64{1} << (valid - 64)) - 1 : 0, wq + 64);
        }
        Indices r;
        for (int s = 0; s < 4; ++s) {
            __m512i v = _mm512_permutex2var_epi8(
                a, _mm512_load_si512(reinterpret_cast<const void *>(perms.p[s])), b);
            if (s >= 2) v = _mm512_srli_epi16(v, 4);  // rows 32..63: the high nibbles
            r.v[s] = _mm512_ternarylogic_epi32(v, low4, position, 0xea);  // (v & 15) | 16 j
        }
        return r;
    }

    // D[t] (+)= the sums over groups [q0, q1) (q0 a multiple of 4; q1 a multiple of 4 or
    // the last group of the panel).
    template <int NB>
    static void tile(const uint8_t *w, const uint8_t *const *tables, int64_t q0, int64_t q1,
                     bool accumulate, int32_t *D) {
        const __m512i ones = _mm512_set1_epi8(1);
        const __m512i c128 = _mm512_set1_epi8(static_cast<char>(128));
        __m512i acc[NB][4];
        for (int t = 0; t < NB; ++t) {
            for (int s = 0; s < 4; ++s) {
                acc[t][s] = accumulate ? _mm512_load_si512(D + 64 * t + 16 * s) : _mm512_setzero_si512();
            }
        }
        for (int64_t p = q0 / 4; p < quads(q1); ++p) {
            const Indices idx = indices(w, q1, p);
            for (int t = 0; t < NB; ++t) {
                const uint8_t *tab = tables[t] + p * kQuadBytes;
                const __m512i l = _mm512_loadu_si512(tab);
                const __m512i h = _mm512_loadu_si512(tab + 64);
                for (int s = 0; s < 4; ++s) {
                    acc[t][s] = _mm512_dpbusd_epi32(acc[t][s], ones, _mm512_permutexvar_epi8(idx.v[s], l));
                    acc[t][s] = _mm512_dpbusd_epi32(acc[t][s], c128, _mm512_permutexvar_epi8(idx.v[s], h));
                }
            }
        }
        for (int t = 0; t < NB; ++t) {
            for (int s = 0; s < 4; ++s) _mm512_store_si512(D + 64 * t + 16 * s, acc[t][s]);
        }
    }
};

// With int8 tables: one 64-byte table per token and quad (the 4 groups' int8 values),
// one vpermb and one vpdpbusd per 16 rows x 4 groups.
struct Vbmi8 {
    static constexpr const char *kName = "vbmi8";
    static constexpr int64_t kQuadBytes = 64;

    static int64_t groups_padded(int64_t Q) { return Vbmi::groups_padded(Q); }
    static int64_t table_stride(int64_t Q) { return kQuadBytes * Vbmi::quads(Q); }

    static void emit(int64_t q, __m256i t, uint8_t *tables) {
        const __m256i bytes = _mm256_packs_epi16(t, t);  // |t| <= 127: lanes [t0..7 x2 | t8..15 x2]
        const __m128i entries = _mm256_castsi256_si128(_mm256_permute4x64_epi64(bytes, 0x08));
        _mm_storeu_si128(reinterpret_cast<__m128i *>(tables + (q / 4) * kQuadBytes + (q % 4) * 16),
                         entries);
    }

    template <int NB>
    static void tile(const uint8_t *w, const uint8_t *const *tables, int64_t q0, int64_t q1,
                     bool accumulate, int32_t *D) {
        const __m512i ones = _mm512_set1_epi8(1);
        __m512i acc[NB][4];
        for (int t = 0; t < NB; ++t) {
            for (int s = 0; s < 4; ++s) {
                acc[t][s] = accumulate ? _mm512_load_si512(D + 64 * t + 16 * s) : _mm512_setzero_si512();
            }
        }
        for (int64_t p = q0 / 4; p < Vbmi::quads(q1); ++p) {
            const Vbmi::Indices idx = Vbmi::indices(w, q1, p);
            for (int t = 0; t < NB; ++t) {
                const __m512i v = _mm512_loadu_si512(tables[t] + p * kQuadBytes);
                for (int s = 0; s < 4; ++s) {
                    acc[t][s] = _mm512_dpbusd_epi32(acc[t][s], ones, _mm512_permutexvar_epi8(idx.v[s], v));
                }
            }
        }
        for (int t = 0; t < NB; ++t) {
            for (int s = 0; s < 4; ++s) _mm512_store_si512(D + 64 * t + 16 * s, acc[t][s]);
        }
    }
};

}  // namespace

}  // namespace linear_1xf_simd

Linear1xfKernels linear_1xf_kernels_avx512_vbmi(int table_bits) {
    using namespace linear_1xf_simd;
    return table_bits == 8 ? kernels<Vbmi8, 4, true>() : kernels<Vbmi, 4>();
}

}  // namespace apb
