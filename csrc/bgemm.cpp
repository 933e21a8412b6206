// Dispatch, cache blocking and threading of the bitwise GEMMs; compiled without ISA
// flags. The per-ISA microkernels live in bgemm_<isa>.cpp.
#include "bgemm.h"

#include <algorithm>
#include <vector>

#include "cpu_features.h"
#include "popcount.h"
#include "threads.h"

namespace apb {

namespace {

// The activation rows of one block (all their planes) are sized to stay in a 32 KiB
// L1 data cache while every weight tile of the block passes over them, leaving room
// for the weight tile itself.
constexpr int64_t kActivationBlockBytes = 16 * 1024;
// Weight rows per block: a block's weights (tile after tile) come from L2.
constexpr int64_t kWeightBlockRows = 64;
// Blocks per thread below which the weight blocks are split further, so that every
// thread gets work even when N is one block.
constexpr int64_t kBlocksPerThread = 4;

PopcountGemmKernel kernel_for(Isa isa) {
    switch (isa) {
#if defined(APB_HAVE_X86_KERNELS)
        case Isa::avx512: return popcount_gemm_kernel_avx512();
        case Isa::avx2: return popcount_gemm_kernel_avx2();
#endif
        default: return popcount_gemm_kernel_scalar();
    }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A multiple of `step` no larger than `limit` (rounded down), and at least `step`.
int64_t multiple_at_most(int64_t limit, int64_t step) {
    return std::max(step, limit / step * step);
}

void run_popcount_gemm(const PopcountGemm &g, int32_t *out) {
    if (g.M <= 0 || g.N <= 0) return;
    const PopcountGemmKernel kernel = kernel_for(active_isa());  // may throw: outside the team
    const int64_t x_row_bytes = std::max<int64_t>(1, g.P * g.W * 8);
    const int64_t nc =
        std::min(g.N, multiple_at_most(kActivationBlockBytes / x_row_bytes, kernel.nr));
    int64_t mc = std::min(g.M, multiple_at_most(kWeightBlockRows, kernel.mr));
    const int nt = threads_for(g.M * g.N * std::max<int64_t>(1, g.W) * g.Q * g.P);
    const int64_t blocks_n = ceil_div(g.N, nc);
    while (nt > 1 && mc > kernel.mr && ceil_div(g.M, mc) * blocks_n < kBlocksPerThread * nt) {
        mc = multiple_at_most(mc / 2, kernel.mr);
    }
    const int64_t blocks = ceil_div(g.M, mc) * blocks_n;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
        const int64_t m0 = (b / blocks_n) * mc;
        const int64_t n0 = (b % blocks_n) * nc;
        kernel.block(g, m0, std::min(g.M, m0 + mc), n0, std::min(g.N, n0 + nc), out);
    }
}

PopcountGemm gemm_of(const uint64_t *w, const uint64_t *x, int64_t M, int64_t N, int64_t W,
                     int Q, int P, BitOp op, int64_t K) {
    PopcountGemm g;
    g.w = w;
    g.x = x;
    g.M = M;
    g.N = N;
    g.W = W;
    g.Q = Q;
    g.P = P;
    g.op = op;
    g.last_mask = last_word_mask(K);
    return g;
}

}  // namespace

void bgemm_1x1(const uint64_t *w, const uint64_t *x, int64_t M, int64_t N, int64_t W,
               int64_t K, int32_t *out) {
    PopcountGemm g = gemm_of(w, x, M, N, W, 1, 1, BitOp::Xor, K);
    g.epilogue.constant = K;
    g.epilogue.scale = -2;
    run_popcount_gemm(g, out);
}

void bgemm_1x2(const uint64_t *w, const uint64_t *x, int64_t M, int64_t N, int64_t W, int P,
               int64_t K, int32_t *out) {
    PopcountGemm g = gemm_of(w, x, M, N, W, 1, P, BitOp::And, K);
    // sum_p 2^p popcount(x[p, n]): the part of each output that does not depend on m.
    std::vector<int64_t> code_sums(static_cast<size_t>(std::max<int64_t>(N, 0)), 0);
    for (int p = 0; p < P; ++p) {
        for (int64_t n = 0; n < N; ++n) {
            const uint64_t *row = x + (p * N + n) * W;
            int64_t count = 0;
            for (int64_t k = 0; k < W; ++k) {
                count += popcount64(k == W - 1 ? row[k] & g.last_mask : row[k]);
            }
            code_sums[n] += count << p;
        }
    }
    g.epilogue.per_n = code_sums.data();
    g.epilogue.scale = -2;
    run_popcount_gemm(g, out);
}

void bgemm_2x2(const uint64_t *w, const uint64_t *x, int64_t M, int64_t N, int64_t W, int Q,
               int P, int64_t K, int32_t *out) {
    run_popcount_gemm(gemm_of(w, x, M, N, W, Q, P, BitOp::And, K), out);
}

}  // namespace apb
