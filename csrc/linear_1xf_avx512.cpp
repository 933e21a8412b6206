// linear_1xf with AVX-512. With VBMI and VNNI (every AVX-512 CPU with VPOPCNTDQ that
// apb's AVX-512 level admits, in practice), the vpermb + vpdpbusd microkernel of
// linear_1xf_vbmi_avx512.cpp; otherwise the table-lookup kernels of linear_1xf_simd.h
// compiled with EVEX encodings, whose 32 vector registers hold a register tile of 64 rows
// x 4 tokens (16 int16 accumulators), twice AVX2's reuse of each weight load.
// APB_LINEAR_1XF_KERNEL=lut16 picks the latter on any AVX-512 CPU (for comparisons).
// Compiled with the AVX-512 flags (F, BW, VL, VPOPCNTDQ); called only when
// cpu_features().avx512 is true.
#pragma GCC target("f16c")

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "simd_avx512.h"
// The sparse AXPY in 16-float vectors.
#define APB_L1XF_ZMM 1
#include "linear_1xf_simd.h"

namespace apb {

Linear1xfKernels linear_1xf_kernels_avx512(int table_bits) {
    static const bool vbmi = [] {
        __builtin_cpu_init();  // in case no constructor of this library has run it yet
        return __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vnni");
    }();
    const char *choice = std::getenv("APB_LINEAR_1XF_KERNEL");
    const bool want_lut16 = choice != nullptr && std::strcmp(choice, "lut16") == 0;
    if (choice != nullptr && choice[0] != '\0' && !want_lut16 && std::strcmp(choice, "vbmi") != 0) {
        throw std::invalid_argument(std::string("APB_LINEAR_1XF_KERNEL='") + choice +
                                    "' is not a linear_1xf kernel; expected lut16 or vbmi");
    }
    if (!want_lut16 && choice != nullptr && choice[0] != '\0' && !vbmi) {
        throw std::runtime_error("APB_LINEAR_1XF_KERNEL=vbmi, but this CPU lacks AVX-512 VBMI or VNNI");
    }
    if (vbmi && !want_lut16) return linear_1xf_kernels_avx512_vbmi(table_bits);
    using linear_1xf_simd::Lut16;
    return table_bits == 8 ? linear_1xf_simd::kernels<Lut16, 4, true>()
                           : linear_1xf_simd::kernels<Lut16, 4>();
}

}  // namespace apb
