// Portable bitwise GEMM: the reference microkernel, one 64-bit word at a time.
// Compiled without ISA flags, so it runs on any CPU.
#include "bgemm.h"
#include "popcount.h"

namespace apb {

namespace {

struct ScalarKernels {
    static constexpr int kMR = 2;
    static constexpr int kNR = 2;

    // counts[i*NR + j] = sum_w popcount(op(w_i[w], x_j[w]) & mask_w); rows of W words.
    template <BitOp op, int MR, int NR>
    static void tile(const uint64_t *w, const uint64_t *x, int64_t W, uint64_t last_mask,
                     int64_t *counts) {
        int64_t c[MR][NR] = {};
        for (int64_t k = 0; k < W; ++k) {
            const uint64_t mask = k == W - 1 ? last_mask : ~uint64_t{0};
            uint64_t xv[NR];
            for (int j = 0; j < NR; ++j) xv[j] = x[j * W + k] & mask;
            for (int i = 0; i < MR; ++i) {
                const uint64_t wv = w[i * W + k] & mask;
                for (int j = 0; j < NR; ++j) {
                    const uint64_t t = op == BitOp::Xor ? (wv ^ xv[j]) : (wv & xv[j]);
                    c[i][j] += popcount64(t);
                }
            }
        }
        for (int i = 0; i < MR; ++i) {
            for (int j = 0; j < NR; ++j) counts[i * NR + j] = c[i][j];
        }
    }
};

}  // namespace

PopcountGemmKernel popcount_gemm_kernel_scalar() {
    return bgemm_detail::kernel_of<ScalarKernels>();
}

}  // namespace apb
