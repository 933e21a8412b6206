// Dispatch and threading for bit-plane packing; compiled without ISA flags.
#include "pack_planes.h"

#include "cpu_features.h"
#include "threads.h"

namespace apb {

namespace {

using PackPlanesRowFn = uint8_t (*)(const uint8_t *, int64_t, int, int64_t, uint64_t *);

PackPlanesRowFn pack_row_for(Isa isa) {
    switch (isa) {
#if defined(APB_HAVE_X86_KERNELS)
        case Isa::avx512: return pack_planes_row_avx512;
        case Isa::avx2: return pack_planes_row_avx2;
#endif
        default: return pack_planes_row_scalar;
    }
}

}  // namespace

uint8_t pack_planes(const uint8_t *codes, int64_t N, int64_t K, int P, uint64_t *out) {
    const int64_t W = (K + 63) / 64;
    if (N <= 0 || W == 0) return 0;
    const PackPlanesRowFn pack_row = pack_row_for(active_isa());  // may throw: outside the team
    const int nt = threads_for(N * K);
    const int64_t plane_stride = N * W;
    unsigned all = 0;
    if (nt == 1) {  // no parallel region: it costs futex calls even for one thread
        for (int64_t n = 0; n < N; ++n) all |= pack_row(codes + n * K, K, P, plane_stride, out + n * W);
        return static_cast<uint8_t>(all);
    }
#pragma omp parallel for num_threads(nt) schedule(static) reduction(| : all)
    for (int64_t n = 0; n < N; ++n) all |= pack_row(codes + n * K, K, P, plane_stride, out + n * W);
    return static_cast<uint8_t>(all);
}

}  // namespace apb
