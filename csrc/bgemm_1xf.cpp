// Dispatch and threading for bgemm_1xf; compiled without ISA flags.
#include "bgemm_1xf.h"

#include "cpu_features.h"
#include "threads.h"

namespace apb {

namespace {

using BlockFn = void (*)(const Bgemm1xfBlock &);

BlockFn block_fn_for(Isa isa) {
    switch (isa) {
#if defined(APB_HAVE_X86_KERNELS)
        case Isa::avx512: return bgemm_1xf_block_avx512;
        case Isa::avx2: return bgemm_1xf_block_avx2;
#endif
        default: return bgemm_1xf_block_scalar;
    }
}

// Output blocks of kBlock x kBlock: a multiple of every ISA's register tile (3 x 4 for
// AVX2, 4 x 6 for AVX-512), small enough that a GEMV (N = 1) still splits over M.
constexpr int64_t kBlock = 48;

}  // namespace

void bgemm_1xf(const uint64_t *w, int64_t M, const float *x, int64_t N, int64_t K,
               float *out) {
    if (M <= 0 || N <= 0) return;
    const BlockFn run_block = block_fn_for(active_isa());  // may throw: outside the team
    const int64_t words = (K + 63) / 64;
    const int64_t mblocks = (M + kBlock - 1) / kBlock;
    const int64_t nblocks = (N + kBlock - 1) / kBlock;
    const int nt = threads_for(M * N * (K > 0 ? K : 1) / 8);
    parallel_for(nt, mblocks * nblocks, [&](int64_t t) {
        const int64_t m0 = (t % mblocks) * kBlock;
        const int64_t n0 = (t / mblocks) * kBlock;
        Bgemm1xfBlock b{w, x, out, N, K, words, m0, m0 + kBlock < M ? m0 + kBlock : M,
                        n0, n0 + kBlock < N ? n0 + kBlock : N};
        run_block(b);
    });
}

}  // namespace apb
