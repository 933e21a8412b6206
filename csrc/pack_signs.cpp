// Dispatch and threading for sign packing; compiled without ISA flags.
#include "pack_signs.h"

#include "cpu_features.h"
#include "threads.h"

namespace apb {

namespace {

using PackRowFn = void (*)(const float *, int64_t, uint64_t *);

PackRowFn pack_row_for(Isa isa) {
    switch (isa) {
#if defined(APB_HAVE_X86_KERNELS)
        case Isa::avx512: return pack_signs_row_avx512;
        case Isa::avx2: return pack_signs_row_avx2;
#endif
        default: return pack_signs_row_scalar;
    }
}

}  // namespace

void pack_signs(const float *x, int64_t M, int64_t K, uint64_t *out) {
    const int64_t W = pack_detail::words_for(K);
    if (M <= 0 || W == 0) return;
    const PackRowFn pack_row = pack_row_for(active_isa());  // may throw: outside the team
    const int nt = threads_for(M * K);
    parallel_for(nt, M, [&](int64_t m) { pack_row(x + m * K, K, out + m * W); });
}

void unpack_signs(const uint64_t *bits, int64_t M, int64_t W, int64_t K, float *out) {
    if (M <= 0 || K <= 0) return;
    const int nt = threads_for(M * K);
    parallel_for(nt, M, [&](int64_t m) {
        const uint64_t *row = bits + m * W;
        float *y = out + m * K;
        for (int64_t k = 0; k < K; ++k) {
            y[k] = ((row[k / 64] >> (k % 64)) & 1u) ? -1.0f : 1.0f;
        }
    });
}

}  // namespace apb
