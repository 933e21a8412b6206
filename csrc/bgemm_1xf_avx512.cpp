// bgemm_1xf with AVX-512: register tiles of 4 weight rows x 6 activation rows (24 zmm
// accumulators). Sixteen weight bits go straight into a mask register and a blend
// turns them into +-1.0f, so a step of sixteen columns costs 4 blends, 6 loads and 24
// FMAs; the last partial step uses masked loads, which read nothing past x[n, K-1].
// Compiled with -mavx512f (and friends); called only when cpu_features().avx512.
#include <cstring>

#include "bgemm_1xf.h"
#include "simd_avx512.h"

namespace apb {

namespace {

using bgemm_1xf_detail::weight_bytes;

// Columns 16g .. 16g+15 of a weight row. Two bytes are always inside the row: 16g < K
// <= 64*words, so byte 2g+1 < 8*words.
inline __mmask16 sign_mask16(const uint8_t *row, int64_t g) {
    uint16_t bits;
    std::memcpy(&bits, row + 2 * g, sizeof bits);
    return static_cast<__mmask16>(bits);
}

template <int MB, int NB>
struct Avx512Tile {
    static void run(const Bgemm1xfBlock &b, int64_t m, int64_t n) {
        const __m512 plus = _mm512_set1_ps(1.0f);
        const __m512 minus = _mm512_set1_ps(-1.0f);
        const uint8_t *wr[MB];
        const float *xr[NB];
        for (int i = 0; i < MB; ++i) wr[i] = weight_bytes(b, m + i);
        for (int j = 0; j < NB; ++j) xr[j] = b.x + (n + j) * b.K;
        __m512 acc[MB][NB];
        for (int i = 0; i < MB; ++i) {
            for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_ps();
        }
        const auto step = [&](int64_t g, __mmask16 valid) {
            __m512 s[MB];
            for (int i = 0; i < MB; ++i) {
                s[i] = _mm512_mask_blend_ps(sign_mask16(wr[i], g), plus, minus);
            }
            for (int j = 0; j < NB; ++j) {
                const __m512 v = _mm512_maskz_loadu_ps(valid, xr[j] + 16 * g);
                for (int i = 0; i < MB; ++i) acc[i][j] = _mm512_fmadd_ps(s[i], v, acc[i][j]);
            }
        };
        const int64_t full = b.K / 16;
        for (int64_t g = 0; g < full; ++g) step(g, static_cast<__mmask16>(0xffff));
        if (b.K % 16 != 0) step(full, static_cast<__mmask16>((1u << (b.K % 16)) - 1u));
        for (int i = 0; i < MB; ++i) {
            for (int j = 0; j < NB; ++j) {
                b.out[(m + i) * b.N + n + j] = _mm512_reduce_add_ps(acc[i][j]);
            }
        }
    }
};

}  // namespace

void bgemm_1xf_block_avx512(const Bgemm1xfBlock &b) {
    bgemm_1xf_detail::TileGrid<Avx512Tile, 4, 6>::run_block(b);
}

}  // namespace apb
