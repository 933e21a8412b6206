// Thread count for apb's OpenMP kernels.
//
// One process-wide setting, applied to every parallel region through a
// num_threads() clause, so it holds whichever Python thread calls a kernel
// (omp_set_num_threads alone only sets the calling thread's value).
#pragma once

#include <cstdint>

namespace apb {

// Threads a kernel may use. Defaults to OpenMP's own default (OMP_NUM_THREADS or the
// core count); always 1 when built without OpenMP.
int get_num_threads();

// Throws std::invalid_argument for n < 1. Without OpenMP the value is accepted and
// kernels stay single-threaded.
void set_num_threads(int n);

// Threads worth using for `work` units of roughly one element each: small inputs
// run on the calling thread, since waking a team costs more than they take, and so does
// a kernel called from inside a parallel region.
int threads_for(int64_t work);

}  // namespace apb
