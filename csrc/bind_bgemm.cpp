// Bindings of the bit-plane packing and the bitwise GEMMs (bgemm_1x1, 1x2, 2x2).
//
// Every check that keeps the kernels in bounds is made here, so the module is safe to
// call without the Python wrappers (which make the same checks with longer messages).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <string>

#include "bgemm.h"
#include "bind.h"
#include "bind_util.h"
#include "cpu_features.h"
#include "pack_planes.h"

namespace nb = nanobind;
using namespace apb::bind;

namespace {

constexpr int kMaxPlanes = 8;
constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

int64_t words_for(int64_t k) { return (k + 63) / 64; }

void check_planes(int64_t planes, const char *fn, const char *what) {
    if (planes < 1 || planes > kMaxPlanes) {
        throw std::invalid_argument(std::string(fn) + ": " + what + " must be 1.." +
                                    std::to_string(kMaxPlanes) + ", got " +
                                    std::to_string(planes));
    }
}

void check_same_words(int64_t w_words, int64_t x_words, const char *fn) {
    if (w_words != x_words) {
        throw std::invalid_argument(std::string(fn) + ": w has " + std::to_string(w_words) +
                                    " words per row but x has " + std::to_string(x_words) +
                                    "; both must be packed from the same K");
    }
}

// The number of columns: k when given (then the operands must have ceil(k/64) words
// per row), else every bit of every word, 64*W.
int64_t columns(std::optional<int64_t> k, int64_t words, const char *fn) {
    if (!k) return 64 * words;
    if (*k < 0) {
        throw std::invalid_argument(std::string(fn) + ": k must be >= 0, got " +
                                    std::to_string(*k));
    }
    if (words_for(*k) != words) {
        throw std::invalid_argument(std::string(fn) + ": the operands have " +
                                    std::to_string(words) + " words per row, but k=" +
                                    std::to_string(*k) + " needs ceil(k/64)=" +
                                    std::to_string(words_for(*k)));
    }
    return *k;
}

// |out| <= weight * K, which must fit the int32 result.
void check_fits_int32(int64_t weight, int64_t K, const char *fn) {
    if (K > kInt32Max / weight) {
        throw std::invalid_argument(std::string(fn) + ": K=" + std::to_string(K) +
                                    " columns with these plane counts can overflow the int32 "
                                    "result (|out| <= " + std::to_string(weight) +
                                    "*K); split K and add the partial results in int64");
    }
}

void surface_isa_errors() { apb::active_isa(); }  // a bad APB_ISA throws here, with the GIL

// A new int32 [M, N] filled by gemm(w, x, out) with the GIL released.
template <class Gemm>
NumpyMatrix<int32_t> run_gemm(const AnyArray &w, const AnyArray &x, int64_t M, int64_t N,
                              Gemm gemm) {
    auto out = new_matrix<int32_t>(M, N);
    const uint64_t *wp = static_cast<const uint64_t *>(w.data());
    const uint64_t *xp = static_cast<const uint64_t *>(x.data());
    int32_t *dst = out.data();
    surface_isa_errors();
    {
        nb::gil_scoped_release release;
        gemm(wp, xp, dst);
    }
    return out;
}

nb::ndarray<nb::numpy, uint64_t> py_pack_planes(const AnyArray &codes, int64_t bits) {
    check_matrix<uint8_t>(codes, "pack_planes", "codes", "uint8");
    check_planes(bits, "pack_planes", "bits");
    const int64_t N = static_cast<int64_t>(codes.shape(0));
    const int64_t K = static_cast<int64_t>(codes.shape(1));
    const int P = static_cast<int>(bits);
    auto out = new_array<uint64_t>({static_cast<size_t>(P), static_cast<size_t>(N), static_cast<size_t>(words_for(K))});
    const uint8_t *src = static_cast<const uint8_t *>(codes.data());
    uint64_t *dst = out.data();
    surface_isa_errors();
    uint8_t all;
    {
        nb::gil_scoped_release release;
        all = apb::pack_planes(src, N, K, P, dst);
    }
    if ((all >> P) != 0) {
        for (int64_t i = 0; i < N * K; ++i) {
            if ((src[i] >> P) != 0) {
                throw std::invalid_argument(
                    "pack_planes: codes must be < 2^bits = " + std::to_string(1 << P) +
                    ", got " + std::to_string(src[i]) + " at [" + std::to_string(i / K) + ", " +
                    std::to_string(i % K) + "]");
            }
        }
    }
    return out;
}

NumpyMatrix<int32_t> py_bgemm_1x1(const AnyArray &w, const AnyArray &x, int64_t k) {
    const char *fn = "bgemm_1x1";
    check_matrix<uint64_t>(w, fn, "w", "uint64");
    check_matrix<uint64_t>(x, fn, "x", "uint64");
    const int64_t M = static_cast<int64_t>(w.shape(0));
    const int64_t N = static_cast<int64_t>(x.shape(0));
    const int64_t W = static_cast<int64_t>(w.shape(1));
    check_same_words(W, static_cast<int64_t>(x.shape(1)), fn);
    const int64_t K = columns(k, W, fn);
    check_fits_int32(1, K, fn);
    return run_gemm(w, x, M, N, [&](const uint64_t *wp, const uint64_t *xp, int32_t *dst) {
        apb::bgemm_1x1(wp, xp, M, N, W, K, dst);
    });
}

NumpyMatrix<int32_t> py_bgemm_1x2(const AnyArray &w, const AnyArray &x,
                                  std::optional<int64_t> k) {
    const char *fn = "bgemm_1x2";
    check_matrix<uint64_t>(w, fn, "w", "uint64");
    check_array<uint64_t>(x, fn, "x", "uint64", 3);
    const int64_t P = static_cast<int64_t>(x.shape(0));
    check_planes(P, fn, "the number of planes of x");
    const int64_t M = static_cast<int64_t>(w.shape(0));
    const int64_t N = static_cast<int64_t>(x.shape(1));
    const int64_t W = static_cast<int64_t>(w.shape(1));
    check_same_words(W, static_cast<int64_t>(x.shape(2)), fn);
    const int64_t K = columns(k, W, fn);
    check_fits_int32((int64_t{1} << P) - 1, K, fn);
    return run_gemm(w, x, M, N, [&](const uint64_t *wp, const uint64_t *xp, int32_t *dst) {
        apb::bgemm_1x2(wp, xp, M, N, W, static_cast<int>(P), K, dst);
    });
}

NumpyMatrix<int32_t> py_bgemm_2x2(const AnyArray &w, const AnyArray &x,
                                  std::optional<int64_t> k) {
    const char *fn = "bgemm_2x2";
    check_array<uint64_t>(w, fn, "w", "uint64", 3);
    check_array<uint64_t>(x, fn, "x", "uint64", 3);
    const int64_t Q = static_cast<int64_t>(w.shape(0));
    const int64_t P = static_cast<int64_t>(x.shape(0));
    check_planes(Q, fn, "the number of planes of w");
    check_planes(P, fn, "the number of planes of x");
    const int64_t M = static_cast<int64_t>(w.shape(1));
    const int64_t N = static_cast<int64_t>(x.shape(1));
    const int64_t W = static_cast<int64_t>(w.shape(2));
    check_same_words(W, static_cast<int64_t>(x.shape(2)), fn);
    const int64_t K = columns(k, W, fn);
    check_fits_int32(((int64_t{1} << Q) - 1) * ((int64_t{1} << P) - 1), K, fn);
    return run_gemm(w, x, M, N, [&](const uint64_t *wp, const uint64_t *xp, int32_t *dst) {
        apb::bgemm_2x2(wp, xp, M, N, W, static_cast<int>(Q), static_cast<int>(P), K, dst);
    });
}

}  // namespace

void apb::bind::bind_bgemm(nb::module_ &m) {
    m.def("pack_planes", &py_pack_planes, nb::arg("codes"), nb::arg("bits"),
          "Pack uint8 codes [N, K] (each < 2^bits, 1 <= bits <= 8) into bit-planes uint64 "
          "[bits, N, ceil(K/64)]: bit j of word w of plane p is bit p of codes[n, 64*w + j]; "
          "padding bits past K are 0.");
    m.def("bgemm_1x1", &py_bgemm_1x1, nb::arg("w"), nb::arg("x"), nb::arg("k"),
          "Binary x binary: int32 [M, N] with out[m, n] = k - 2*popcount(w[m] ^ x[n]) over the "
          "first k columns, for w uint64 [M, ceil(k/64)] and x uint64 [N, ceil(k/64)].");
    m.def("bgemm_1x2", &py_bgemm_1x2, nb::arg("w"), nb::arg("x"), nb::arg("k") = nb::none(),
          "Binary weights x k-bit codes: int32 [M, N] with out[m, n] = sum_p 2^p "
          "(popcount(x[p, n]) - 2*popcount(w[m] & x[p, n])), w uint64 [M, W], x uint64 "
          "[P, N, W]; over the first k columns if k is given, else all 64*W.");
    m.def("bgemm_2x2", &py_bgemm_2x2, nb::arg("w"), nb::arg("x"), nb::arg("k") = nb::none(),
          "k-bit codes x k-bit codes: int32 [M, N] with out[m, n] = sum_{q, p} 2^(q+p) "
          "popcount(w[q, m] & x[p, n]), w uint64 [Q, M, W], x uint64 [P, N, W]; over the "
          "first k columns if k is given, else all 64*W.");
}
