// Small AVX2 helpers shared by the *_avx2.cpp files; include it from those files
// only (it needs -mavx2). `static` so no copy is shared with other translation units.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace apb::avx2 {

// Lanes [0, n) all ones, the rest zero: the mask of a maskload/maskstore that touches
// only the first n (< 8) floats.
static inline __m256i first_lanes(int64_t n) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), lane);
}

static inline float horizontal_sum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

}  // namespace apb::avx2
