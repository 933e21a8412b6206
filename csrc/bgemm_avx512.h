// What the two AVX-512 popcount GEMMs share (bgemm_avx512.cpp: a row's words across the
// lanes; bgemm_lanes_avx512.cpp: activation columns across the lanes). Include it from
// *_avx512.cpp files only: it needs -mavx512f.
#pragma once

#include "bgemm.h"
#include "simd_avx512.h"

namespace apb::bgemm_avx512_detail {

// The bitwise product of two operands: XOR for ±1 x ±1, AND for planes of codes.
template <BitOp op>
inline __m512i apply(__m512i a, __m512i b) {
    if constexpr (op == BitOp::Xor) {
        return _mm512_xor_si512(a, b);
    } else {
        return _mm512_and_si512(a, b);
    }
}

}  // namespace apb::bgemm_avx512_detail
