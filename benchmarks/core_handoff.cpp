// Round-trip time of one cache line between two CPUs: thread A (pinned to cpu_a) sets a
// flag, thread B (pinned to cpu_b) answers, `rounds` times; returns the mean round trip
// in ns. A parallel region's fork and join are such hand-offs, so this is
// the floor under every packed layer's two-thread split (docs/performance.md, "Two
// threads"). benchmarks/model_threads.py --handoff loads it to print the round trip of
// each timing round beside the speed-ups.
//
//   g++ -O2 -shared -fPIC -pthread benchmarks/core_handoff.cpp -o build/libcore_handoff.so
//
// Linux only (pthread affinity). Restores the calling thread's affinity.
#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace {

void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

}  // namespace

extern "C" double apb_core_handoff_ns(int rounds, int cpu_a, int cpu_b) {
    if (rounds < 1) return 0.0;
    alignas(64) std::atomic<int> flag{0};
    cpu_set_t saved;
    pthread_getaffinity_np(pthread_self(), sizeof saved, &saved);
    pin(cpu_a);
    std::thread answer([&] {
        pin(cpu_b);
        for (int i = 0; i < rounds; ++i) {
            while (flag.load(std::memory_order_acquire) != 2 * i + 1) {
            }
            flag.store(2 * i + 2, std::memory_order_release);
        }
    });
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < rounds; ++i) {
        flag.store(2 * i + 1, std::memory_order_release);
        while (flag.load(std::memory_order_acquire) != 2 * i + 2) {
        }
    }
    const std::chrono::duration<double, std::nano> took = std::chrono::steady_clock::now() - start;
    answer.join();
    pthread_setaffinity_np(pthread_self(), sizeof saved, &saved);
    return took.count() / rounds;
}
