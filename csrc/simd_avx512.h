// The AVX-512 intrinsics header for the *_avx512.cpp files (include it from those files
// only: it needs -mavx512f).
#pragma once

// GCC 12's AVX-512 header builds its "undefined" vectors from self-initialised
// variables, which -Wuninitialized reports wherever such an intrinsic is inlined.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
