// The float32 layers (dense.h) with AVX-512F: 16-float vectors, 8 output channels x up to
// 3 vectors of columns (24 of the 32 zmm registers) per convolution tile; linear panels
// of 32 features as 2 vectors, 4 rows per weight load, a single row with 4 sums.
// Called only when cpu_features().avx512 is true.
#include "simd_avx512.h"
#include "dense_simd.h"

namespace apb {

namespace {

struct Zmm {
    using reg = __m512;
    static constexpr int kLanes = 16;
    static constexpr int kCoBlock = 8;
    static constexpr int kLinearRows = 4;
    static constexpr int kSingleRowSums = 4;
    static reg load(const float *p) { return _mm512_loadu_ps(p); }
    static reg broadcast(float v) { return _mm512_set1_ps(v); }
    static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
    static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
    // vmaxps / vminps return their second operand when either is NaN: y's NaN stays.
    static reg bound(reg y, reg lower, reg upper) {
        return _mm512_min_ps(upper, _mm512_max_ps(lower, y));
    }
    static void store(float *p, reg v) { _mm512_storeu_ps(p, v); }
    static void store_first(float *p, reg v, int64_t n) {
        _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1u), v);
    }
};

}  // namespace

DenseKernels dense_kernels_avx512() { return dense_simd::kernels<Zmm>(); }

}  // namespace apb
