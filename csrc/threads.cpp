#include "threads.h"

#include <atomic>
#include <stdexcept>
#include <string>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace apb {

namespace {
// 0: not set by the user, use OpenMP's default.
std::atomic<int> g_num_threads{0};

// Below this many elements a kernel runs on one thread.
constexpr int64_t kMinWorkPerThread = 1 << 16;
}  // namespace

int get_num_threads() {
#if defined(_OPENMP)
    const int n = g_num_threads.load(std::memory_order_relaxed);
    return n > 0 ? n : omp_get_max_threads();
#else
    return 1;
#endif
}

void set_num_threads(int n) {
    if (n < 1) {
        throw std::invalid_argument("set_num_threads expects a thread count >= 1, got " +
                                    std::to_string(n));
    }
    g_num_threads.store(n, std::memory_order_relaxed);
}

bool in_parallel_region() {
#if defined(_OPENMP)
    return omp_in_parallel() != 0;
#else
    return false;
#endif
}

int threads_for(int64_t work) {
    // Called from a parallel region (a fused layer splitting its batch over the threads):
    // the caller's threads are all busy already.
    if (in_parallel_region()) return 1;
    const int64_t useful = work / kMinWorkPerThread;
    const int n = get_num_threads();
    if (useful < 2) return 1;
    return useful < n ? static_cast<int>(useful) : n;
}

}  // namespace apb
