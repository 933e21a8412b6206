// Times apb's bitwise GEMMs on the ResNet-18 shapes without Python in the way, so that a
// sampling profiler can attribute the time to the kernels' functions (the Python
// module is stripped of symbols; this links the static kernel library, which is not).
//
//   make build-inplace VENV=/work/main/.venv
//   g++ -O2 -g -fopenmp -Icsrc benchmarks/bgemm_profile.cpp build/inplace/libapb_kernels.a \
//       -o build/bgemm_profile
//   build/bgemm_profile 1x1 40 1            # kernel, timed runs, threads [, shape index]
//   perf record -e cpu-clock -F 10000 -o build/perf.data build/bgemm_profile 1x1 200 1
//   perf report -i build/perf.data --stdio
//
// Prints per shape the best of the timed runs in ms and in G bit-ops/s (the apb bench
// gemm harness reports medians; the best is what a profile of a busy machine compares).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "bgemm.h"
#include "threads.h"

namespace {

double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

constexpr int kShapes[7][3] = {{64, 576, 2916},  {128, 576, 2916}, {128, 1152, 676},
                               {256, 1152, 676}, {256, 2304, 144}, {512, 2304, 144},
                               {512, 4608, 25}};

}  // namespace

int main(int argc, char **argv) {
    if (argc < 2 || (std::strcmp(argv[1], "1x1") && std::strcmp(argv[1], "1x2") &&
                     std::strcmp(argv[1], "2x2"))) {
        std::fprintf(stderr, "usage: %s 1x1|1x2|2x2 [runs] [threads] [shape 0-6]\n", argv[0]);
        return 2;
    }
    const char *kind = argv[1];
    const int runs = argc > 2 ? std::atoi(argv[2]) : 40;
    apb::set_num_threads(argc > 3 ? std::atoi(argv[3]) : 1);
    const int only = argc > 4 ? std::atoi(argv[4]) : -1;
    const int Q = kind[0] == '2' ? 2 : 1, P = kind[2] == '2' ? 2 : 1;
    std::mt19937_64 rng(1);
    double total = 0;
    std::printf("%s:", kind);
    for (int s = 0; s < 7; ++s) {
        if (only >= 0 && s != only) continue;
        const int64_t M = kShapes[s][0], K = kShapes[s][1], N = kShapes[s][2];
        const int64_t W = (K + 63) / 64;
        std::vector<uint64_t> w(Q * M * W), x(P * N * W);
        for (auto &v : w) v = rng();
        for (auto &v : x) v = rng();
        std::vector<int32_t> out(M * N);
        const auto run = [&] {
            if (Q == 2) {
                apb::bgemm_2x2(w.data(), x.data(), M, N, W, Q, P, K, out.data());
            } else if (P == 2) {
                apb::bgemm_1x2(w.data(), x.data(), M, N, W, P, K, out.data());
            } else {
                apb::bgemm_1x1(w.data(), x.data(), M, N, W, K, out.data());
            }
        };
        run();
        double best = 1e9;
        for (int r = 0; r < runs; ++r) {
            const double t0 = now();
            run();
            best = std::min(best, now() - t0);
        }
        total += best;
        std::printf(" %.3f(%.0fG)", best * 1e3, static_cast<double>(Q * P * M * K * N) / best / 1e9);
    }
    std::printf("  total %.3f ms\n", total * 1e3);
    return 0;
}
