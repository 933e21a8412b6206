// What bounds sparse_conv2d's AVX-512 sweep: the same loop (one output row of 1,024 wide
// outputs in blocks of 128, each nonzero one FMA per sixteen outputs into registers,
// csrc/sparse_conv2d_avx512.cpp's sweep_bytes) with four ways of getting its sixteen
// inputs, timed on the shape of VGG-Small's 128 -> 128 layer (128 rows of 23 nonzeros,
// byte rows at random places in 128 planes of 34 x 34):
//
//   vpmovzxbd    sixteen bytes widened across the register's lanes, as the kernel does
//   vpshufb      sixty-four bytes loaded once, spread in-lane by a byte shuffle (the
//                outputs come out in another order: timing only)
//   ymm          eight bytes widened at a time into 256-bit registers
//   fma-only     sixteen floats loaded straight into the FMA (no conversion at all)
//
// If the four take about the same time, the conversion is not what bounds the sweep.
// Prints the best of 50 passes of each, in three interleaved rounds, one thread.
//
//   g++ -O3 -mavx512f -mavx512bw -mavx512vl -mfma benchmarks/sweep_bound.cpp -o build/sweep_bound
//   build/sweep_bound
//
// Needs an AVX-512 CPU.
#include <immintrin.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

namespace {

constexpr int kColumns = 1024;  // wide outputs of one tile
constexpr int kBlock = 128;     // outputs held in registers at a time (8 vectors)

using Sweep = void (*)(const float *, const uint8_t *const *, int, float *);

__attribute__((noinline)) void widen_across(const float *values, const uint8_t *const *rows,
                                            int nnz, float *acc) {
    for (int c = 0; c < kColumns; c += kBlock) {
        __m512 sum[8];
        for (auto &s : sum) s = _mm512_setzero_ps();
        for (int k = 0; k < nnz; ++k) {
            const __m512 v = _mm512_set1_ps(values[k]);
            const uint8_t *x = rows[k] + c;
#pragma GCC unroll 8
            for (int q = 0; q < 8; ++q) {
                const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i *>(x + 16 * q));
                sum[q] = _mm512_fmadd_ps(v, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b)), sum[q]);
            }
        }
        for (int q = 0; q < 8; ++q) _mm512_storeu_ps(acc + c + 16 * q, sum[q]);
    }
}

__attribute__((noinline)) void spread_in_lane(const float *values, const uint8_t *const *rows,
                                              int nnz, float *acc) {
    // Shuffle j puts bytes j, j + 4, j + 8, j + 12 of each 16-byte lane into its dwords.
    __m512i spread[4];
    for (int j = 0; j < 4; ++j) {
        alignas(64) int8_t control[64];
        for (int i = 0; i < 64; i += 4) {
            control[i] = static_cast<int8_t>(j + i % 16);
            control[i + 1] = control[i + 2] = control[i + 3] = static_cast<int8_t>(0x80);
        }
        spread[j] = _mm512_load_si512(control);
    }
    for (int c = 0; c < kColumns; c += kBlock) {
        __m512 sum[8];
        for (auto &s : sum) s = _mm512_setzero_ps();
        for (int k = 0; k < nnz; ++k) {
            const __m512 v = _mm512_set1_ps(values[k]);
            const uint8_t *x = rows[k] + c;
#pragma GCC unroll 2
            for (int h = 0; h < 2; ++h) {
                const __m512i bytes = _mm512_loadu_si512(x + 64 * h);
#pragma GCC unroll 4
                for (int j = 0; j < 4; ++j) {
                    const __m512 f = _mm512_cvtepi32_ps(_mm512_shuffle_epi8(bytes, spread[j]));
                    sum[4 * h + j] = _mm512_fmadd_ps(v, f, sum[4 * h + j]);
                }
            }
        }
        for (int q = 0; q < 8; ++q) _mm512_storeu_ps(acc + c + 16 * q, sum[q]);
    }
}

__attribute__((noinline)) void widen_ymm(const float *values, const uint8_t *const *rows,
                                         int nnz, float *acc) {
    for (int c = 0; c < kColumns; c += kBlock) {
        __m256 sum[16];
        for (auto &s : sum) s = _mm256_setzero_ps();
        for (int k = 0; k < nnz; ++k) {
            const __m256 v = _mm256_set1_ps(values[k]);
            const uint8_t *x = rows[k] + c;
#pragma GCC unroll 16
            for (int q = 0; q < 16; ++q) {
                const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i *>(x + 8 * q));
                sum[q] = _mm256_fmadd_ps(v, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)), sum[q]);
            }
        }
        for (int q = 0; q < 16; ++q) _mm256_storeu_ps(acc + c + 8 * q, sum[q]);
    }
}

__attribute__((noinline)) void fma_only(const float *values, const uint8_t *const *rows,
                                        int nnz, float *acc) {
    // The rows read as float planes would be (meaningless values, four times the bytes):
    // the sweep with nothing but loads and FMAs.
    for (int c = 0; c < kColumns; c += kBlock) {
        __m512 sum[8];
        for (auto &s : sum) s = _mm512_setzero_ps();
        for (int k = 0; k < nnz; ++k) {
            const __m512 v = _mm512_set1_ps(values[k]);
            const float *x = reinterpret_cast<const float *>(rows[k]) + c;
#pragma GCC unroll 8
            for (int q = 0; q < 8; ++q) {
                sum[q] = _mm512_fmadd_ps(v, _mm512_loadu_ps(x + 16 * q), sum[q]);
            }
        }
        for (int q = 0; q < 8; ++q) _mm512_storeu_ps(acc + c + 16 * q, sum[q]);
    }
}

}  // namespace

int main() {
    constexpr int kChannels = 128, kPlane = 34 * 34, kNnz = 23, kRows = 128;
    std::mt19937 rng(1);
    // Codes 0..3; room past the last plane for the widest read (fma-only's 4 KiB).
    std::vector<uint8_t> planes(kChannels * kPlane + 4 * kColumns + 128);
    for (auto &b : planes) b = static_cast<uint8_t>(rng() & 3u);
    std::vector<float> values(kNnz * kRows);
    std::vector<const uint8_t *> rows(kNnz * kRows);
    for (int e = 0; e < kNnz * kRows; ++e) {
        values[e] = static_cast<float>(rng() % 1000) * 1e-3f;
        rows[e] = planes.data() + (rng() % kChannels) * kPlane + rng() % 70;
    }
    std::vector<float> acc(kColumns);
    const Sweep sweeps[] = {widen_across, spread_in_lane, widen_ymm, fma_only};
    const char *names[] = {"vpmovzxbd", "vpshufb", "ymm", "fma-only"};
    for (int round = 0; round < 3; ++round) {
        for (int s = 0; s < 4; ++s) {
            double best = 1e30;
            for (int pass = 0; pass < 50; ++pass) {
                const auto t0 = std::chrono::steady_clock::now();
                for (int m = 0; m < kRows; ++m) {
                    sweeps[s](values.data() + m * kNnz, rows.data() + m * kNnz, kNnz, acc.data());
                }
                const std::chrono::duration<double, std::micro> t =
                    std::chrono::steady_clock::now() - t0;
                best = t.count() < best ? t.count() : best;
            }
            std::printf("%-10s %8.1f us  %6.2f GFMA/s (16-float FMAs x 16)\n", names[s], best,
                        static_cast<double>(kNnz) * kRows * kColumns / best / 1e3);
        }
    }
    std::printf("checksum %g\n", static_cast<double>(acc[0]));
    return 0;
}
