// max_pool2d_channels_last's row (max_pool2d_cl.h) eight channels at a time; compiled
// with the AVX2 flags, called only when cpu_features().avx2.
#include <immintrin.h>

#include "max_pool2d_cl.h"

namespace {

struct Ymm {
    using reg = __m256;
    static constexpr int64_t kLanes = 8;
    static __m256 load(const float *p) { return _mm256_loadu_ps(p); }
    static void store(float *p, __m256 v) { _mm256_storeu_ps(p, v); }
    static __m256 broadcast(float v) { return _mm256_set1_ps(v); }
    // max/min return their second operand when one is NaN: a NaN y stays NaN.
    static __m256 bound(__m256 y, __m256 lower, __m256 upper) {
        return _mm256_min_ps(upper, _mm256_max_ps(lower, y));
    }
    // max_ps(b, a) is b where b > a, else a (a too when either is NaN); then b where b is
    // NaN.
    static __m256 nan_max(__m256 a, __m256 b) {
        return _mm256_blendv_ps(_mm256_max_ps(b, a), b, _mm256_cmp_ps(b, b, _CMP_UNORD_Q));
    }
};

}  // namespace

void apb::max_pool2d_cl_row_avx2(const float *image, const MaxPool2dGeometry &g,
                                 int64_t channels, int64_t oy, PoolBounds bounds, float *row,
                                 float *out) {
    max_pool_cl::pool_row<Ymm>(image, g, channels, oy, bounds, row, out);
}
