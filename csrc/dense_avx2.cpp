// The float32 layers (dense.h) with AVX2 + FMA: 8-float vectors, 4 output channels x up
// to 3 vectors of columns (12 of the 16 ymm registers) per convolution tile; linear
// panels of 32 features as 4 vectors, 2 rows per weight load, a single row with 2 sums.
// Called only when cpu_features().avx2 is true.
#include "simd_avx2.h"
#include "dense_simd.h"

namespace apb {

namespace {

struct Ymm {
    using reg = __m256;
    static constexpr int kLanes = 8;
    static constexpr int kCoBlock = 4;
    static constexpr int kLinearRows = 2;
    static constexpr int kSingleRowSums = 2;
    static reg load(const float *p) { return _mm256_loadu_ps(p); }
    static reg broadcast(float v) { return _mm256_set1_ps(v); }
    static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
    static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
    // maxps / minps return their second operand when either is NaN: y's NaN stays.
    static reg bound(reg y, reg lower, reg upper) {
        return _mm256_min_ps(upper, _mm256_max_ps(lower, y));
    }
    static void store(float *p, reg v) { _mm256_storeu_ps(p, v); }
    static void store_first(float *p, reg v, int64_t n) {
        _mm256_maskstore_ps(p, avx2::first_lanes(n), v);
    }
};

}  // namespace

DenseKernels dense_kernels_avx2() { return dense_simd::kernels<Ymm>(); }

}  // namespace apb
