// bgemm_1xf with AVX2: register tiles of 3 weight rows x 4 activation rows (12 ymm
// accumulators). Each weight byte picks its eight signs, as +-1.0f, from a 256-entry
// table (8 KiB, stays in L1), so a step of eight columns costs 3 table loads, 4
// activation loads and 12 FMAs: sign-select with no ALU work besides the FMA, and
// sign * x is exact, so each FMA is the add of +-x.
// Compiled with -mavx2 -mfma; called only when cpu_features().avx2 is true.
#include <immintrin.h>

#include "bgemm_1xf.h"
#include "simd_avx2.h"

namespace apb {

namespace {

using avx2::first_lanes;
using avx2::horizontal_sum;
using bgemm_1xf_detail::weight_bytes;

struct SignTable {
    alignas(32) float lanes[256][8];
};

constexpr SignTable make_sign_table() {
    SignTable t{};
    for (int byte = 0; byte < 256; ++byte) {
        for (int lane = 0; lane < 8; ++lane) {
            t.lanes[byte][lane] = (byte >> lane) & 1 ? -1.0f : 1.0f;
        }
    }
    return t;
}

constexpr SignTable kSigns = make_sign_table();

template <int MB, int NB>
struct Avx2Tile {
    static void run(const Bgemm1xfBlock &b, int64_t m, int64_t n) {
        const uint8_t *wr[MB];
        const float *xr[NB];
        for (int i = 0; i < MB; ++i) wr[i] = weight_bytes(b, m + i);
        for (int j = 0; j < NB; ++j) xr[j] = b.x + (n + j) * b.K;
        __m256 acc[MB][NB];
        for (int i = 0; i < MB; ++i) {
            for (int j = 0; j < NB; ++j) acc[i][j] = _mm256_setzero_ps();
        }
        const int64_t groups = b.K / 8;
        for (int64_t g = 0; g < groups; ++g) {
            __m256 s[MB];
            for (int i = 0; i < MB; ++i) s[i] = _mm256_load_ps(kSigns.lanes[wr[i][g]]);
            for (int j = 0; j < NB; ++j) {
                const __m256 v = _mm256_loadu_ps(xr[j] + 8 * g);
                for (int i = 0; i < MB; ++i) acc[i][j] = _mm256_fmadd_ps(s[i], v, acc[i][j]);
            }
        }
        const int64_t rest = b.K % 8;
        if (rest != 0) {
            // Byte `groups` of each row holds the last columns; the masked load reads
            // nothing past x[n, K-1] and gives 0 in the other lanes.
            const __m256i valid = first_lanes(rest);
            __m256 s[MB];
            for (int i = 0; i < MB; ++i) s[i] = _mm256_load_ps(kSigns.lanes[wr[i][groups]]);
            for (int j = 0; j < NB; ++j) {
                const __m256 v = _mm256_maskload_ps(xr[j] + 8 * groups, valid);
                for (int i = 0; i < MB; ++i) acc[i][j] = _mm256_fmadd_ps(s[i], v, acc[i][j]);
            }
        }
        for (int i = 0; i < MB; ++i) {
            for (int j = 0; j < NB; ++j) {
                b.out[(m + i) * b.N + n + j] = horizontal_sum(acc[i][j]);
            }
        }
    }
};

}  // namespace

void bgemm_1xf_block_avx2(const Bgemm1xfBlock &b) {
    bgemm_1xf_detail::TileGrid<Avx2Tile, 3, 4>::run_block(b);
}

}  // namespace apb
