// max_pool2d_channels_last's row (max_pool2d_cl.h) sixteen channels at a time; compiled
// with the AVX-512 flags, called only when cpu_features().avx512.
#include <immintrin.h>

#include "max_pool2d_cl.h"

namespace {

struct Zmm {
    using reg = __m512;
    static constexpr int64_t kLanes = 16;
    static __m512 load(const float *p) { return _mm512_loadu_ps(p); }
    static void store(float *p, __m512 v) { _mm512_storeu_ps(p, v); }
    static __m512 broadcast(float v) { return _mm512_set1_ps(v); }
    // max/min return their second operand when one is NaN: a NaN y stays NaN. (The
    // zero-masked forms with every lane set are the same instructions; GCC 12 warns about
    // the plain forms' undefined pass-through operand here.)
    static __m512 bound(__m512 y, __m512 lower, __m512 upper) {
        constexpr __mmask16 kAll = 0xffff;
        return _mm512_maskz_min_ps(kAll, upper, _mm512_maskz_max_ps(kAll, lower, y));
    }
    // max_ps(b, a) is b where b > a, else a (a too when either is NaN), in the lanes
    // where b is a number; b itself where it is NaN.
    static __m512 nan_max(__m512 a, __m512 b) {
        return _mm512_mask_max_ps(b, _mm512_cmp_ps_mask(b, b, _CMP_ORD_Q), b, a);
    }
};

}  // namespace

void apb::max_pool2d_cl_row_avx512(const float *image, const MaxPool2dGeometry &g,
                                   int64_t channels, int64_t oy, PoolBounds bounds, float *row,
                                   float *out) {
    max_pool_cl::pool_row<Zmm>(image, g, channels, oy, bounds, row, out);
}
