// Portable bgemm_1xf: 2 x 2 register tiles, the sign applied by flipping the float's
// sign bit (exact, like the SIMD paths). Compiled without ISA flags.
#include <cstring>

#include "bgemm_1xf.h"

namespace apb {

namespace {

inline float flip_sign(float v, uint64_t bit) {
    uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    u ^= static_cast<uint32_t>(bit) << 31;
    std::memcpy(&v, &u, sizeof v);
    return v;
}

template <int MB, int NB>
struct ScalarTile {
    static void run(const Bgemm1xfBlock &b, int64_t m, int64_t n) {
        const uint64_t *wr[MB];
        const float *xr[NB];
        for (int i = 0; i < MB; ++i) wr[i] = b.w + (m + i) * b.words;
        for (int j = 0; j < NB; ++j) xr[j] = b.x + (n + j) * b.K;
        float acc[MB][NB] = {};
        for (int64_t word = 0; word < b.words; ++word) {
            const int64_t base = 64 * word;
            const int64_t count = b.K - base < 64 ? b.K - base : 64;
            uint64_t bits[MB];
            for (int i = 0; i < MB; ++i) bits[i] = wr[i][word];
            for (int64_t c = 0; c < count; ++c) {
                for (int j = 0; j < NB; ++j) {
                    const float v = xr[j][base + c];
                    for (int i = 0; i < MB; ++i) acc[i][j] += flip_sign(v, (bits[i] >> c) & 1u);
                }
            }
        }
        for (int i = 0; i < MB; ++i) {
            for (int j = 0; j < NB; ++j) b.out[(m + i) * b.N + n + j] = acc[i][j];
        }
    }
};

}  // namespace

void bgemm_1xf_block_scalar(const Bgemm1xfBlock &b) {
    bgemm_1xf_detail::TileGrid<ScalarTile, 2, 2>::run_block(b);
}

}  // namespace apb
