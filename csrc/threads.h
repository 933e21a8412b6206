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

// body(i) for every i in [0, n), split statically over `threads` OpenMP threads, or in
// order on the calling thread when threads <= 1 without entering a parallel region:
// libgomp makes a futex system call for every region, a team of one included (0.34 us
// each, measured), and a packed layer's kernels enter several per image. Exceptions
// must not leave body when threads > 1. With one thread body runs in no team of its own,
// so omp_get_thread_num() there is the enclosing region's number (or 0).
template <class Body>
void parallel_for(int threads, int64_t n, Body &&body) {
    if (threads <= 1) {
        for (int64_t i = 0; i < n; ++i) body(i);
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; ++i) body(i);
}

// The same with a dynamic schedule (items of uneven cost).
template <class Body>
void parallel_for_dynamic(int threads, int64_t n, Body &&body) {
    if (threads <= 1) {
        for (int64_t i = 0; i < n; ++i) body(i);
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(dynamic)
    for (int64_t i = 0; i < n; ++i) body(i);
}

// Whether the calling thread is inside an active parallel region (a team of more than
// one thread); false without OpenMP.
bool in_parallel_region();

// body() run by a team of `threads`, for a body made of `#pragma omp for` worksharing
// loops. One thread runs it directly, outside any region (as parallel_for, for the futex
// call a region costs), but not inside an active region: an orphaned worksharing loop
// binds to the innermost enclosing team, so it would split this call's iterations among
// threads busy with other work (apb_conv2d's images) and wait for them at its barriers.
// There a nested region of one thread gives the loops a team of their own.
template <class Body>
void run_team(int threads, Body &&body) {
    if (threads <= 1 && !in_parallel_region()) {
        body();
        return;
    }
#pragma omp parallel num_threads(threads > 1 ? threads : 1)
    body();
}

}  // namespace apb
