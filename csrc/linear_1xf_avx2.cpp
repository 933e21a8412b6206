// linear_1xf with AVX2: the table-lookup kernels of linear_1xf_simd.h, with a register
// tile of 64 rows x 2 tokens (8 int16 accumulators of the 16 ymm registers). With int8
// tables the same microkernel reads the rounded values (as int16), for the same results
// as the other ISAs; it gains nothing from them.
// Compiled with -mavx2 -mfma; F16C (part of apb's AVX2 level, see cpu_features.h)
// converts float16 corrections. Called only when cpu_features().avx2 is true.
#pragma GCC target("f16c")

#include "linear_1xf_simd.h"

namespace apb {

Linear1xfKernels linear_1xf_kernels_avx2(int table_bits) {
    using linear_1xf_simd::Lut16;
    return table_bits == 8 ? linear_1xf_simd::kernels<Lut16, 2, true>()
                           : linear_1xf_simd::kernels<Lut16, 2>();
}

}  // namespace apb
