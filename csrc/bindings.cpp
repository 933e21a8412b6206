// The apb._C extension module: argument checks, then the kernels.
//
// Arrays come in as DLPack / buffer-protocol views (nanobind ndarray), so numpy
// arrays and torch tensors pass without copies and no PyTorch header is needed.
// The Python wrappers in apb.kernels check arguments first with friendlier
// messages; the checks here keep the module safe when called directly.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "pack_signs.h"
#include "threads.h"

namespace nb = nanobind;

namespace {

using AnyArray = nb::ndarray<nb::ro>;
template <typename T>
using NumpyMatrix = nb::ndarray<nb::numpy, T, nb::ndim<2>>;

std::string dtype_name(const nb::dlpack::dtype &dt) {
    std::string kind;
    switch (static_cast<nb::dlpack::dtype_code>(dt.code)) {
        case nb::dlpack::dtype_code::Int: kind = "int"; break;
        case nb::dlpack::dtype_code::UInt: kind = "uint"; break;
        case nb::dlpack::dtype_code::Float: kind = "float"; break;
        case nb::dlpack::dtype_code::Bfloat: kind = "bfloat"; break;
        case nb::dlpack::dtype_code::Complex: kind = "complex"; break;
        case nb::dlpack::dtype_code::Bool: kind = "bool"; break;
        default: kind = "dtype" + std::to_string(dt.code) + "_";
    }
    return kind + std::to_string(dt.bits);
}

std::string shape_string(const AnyArray &a) {
    std::string s = "(";
    for (size_t i = 0; i < a.ndim(); ++i) {
        if (i) s += ", ";
        s += std::to_string(a.shape(i));
    }
    return s + (a.ndim() == 1 ? ",)" : ")");
}

// Row-major with rows of shape[1] elements. Strides of size-1 dimensions, and all
// strides of an empty array, are irrelevant (numpy and torch leave them arbitrary).
bool is_c_contiguous_2d(const AnyArray &a) {
    const int64_t rows = static_cast<int64_t>(a.shape(0));
    const int64_t cols = static_cast<int64_t>(a.shape(1));
    if (rows == 0 || cols == 0) return true;
    return (cols == 1 || a.stride(1) == 1) && (rows == 1 || a.stride(0) == cols);
}

template <typename T>
void check_matrix(const AnyArray &a, const char *fn, const char *arg, const char *expected) {
    if (a.device_type() != nb::device::cpu::value) {
        throw nb::type_error((std::string(fn) + ": " + arg +
                              " must be in CPU memory; move it with .cpu() first")
                                 .c_str());
    }
    if (a.dtype() != nb::dtype<T>()) {
        throw nb::type_error((std::string(fn) + ": " + arg + " must have dtype " + expected +
                              ", got " + dtype_name(a.dtype()))
                                 .c_str());
    }
    if (a.ndim() != 2) {
        throw std::invalid_argument(std::string(fn) + ": " + arg +
                                    " must be 2-D, got shape " + shape_string(a));
    }
    if (!is_c_contiguous_2d(a)) {
        throw std::invalid_argument(std::string(fn) + ": " + arg +
                                    " must be C-contiguous (row-major); pass "
                                    "np.ascontiguousarray(x) or x.contiguous()");
    }
}

template <typename T>
NumpyMatrix<T> new_matrix(int64_t rows, int64_t cols) {
    T *buf = new T[static_cast<size_t>(rows) * static_cast<size_t>(cols)];
    nb::capsule owner(buf, [](void *p) noexcept { delete[] static_cast<T *>(p); });
    return NumpyMatrix<T>(buf, {static_cast<size_t>(rows), static_cast<size_t>(cols)},
                          owner);
}

NumpyMatrix<uint64_t> pack_signs(const AnyArray &x) {
    check_matrix<float>(x, "pack_signs", "x", "float32");
    const int64_t M = static_cast<int64_t>(x.shape(0));
    const int64_t K = static_cast<int64_t>(x.shape(1));
    const int64_t W = (K + 63) / 64;
    auto out = new_matrix<uint64_t>(M, W);
    const float *src = static_cast<const float *>(x.data());
    uint64_t *dst = out.data();
    apb::active_isa();  // surface a bad APB_ISA before letting go of the GIL
    {
        nb::gil_scoped_release release;
        apb::pack_signs(src, M, K, dst);
    }
    return out;
}

NumpyMatrix<float> unpack_signs(const AnyArray &bits, int64_t k) {
    check_matrix<uint64_t>(bits, "unpack_signs", "bits", "uint64");
    if (k < 0) {
        throw std::invalid_argument("unpack_signs: k must be >= 0, got " + std::to_string(k));
    }
    const int64_t M = static_cast<int64_t>(bits.shape(0));
    const int64_t W = static_cast<int64_t>(bits.shape(1));
    if (W != (k + 63) / 64) {
        throw std::invalid_argument("unpack_signs: bits has " + std::to_string(W) +
                                    " words per row, but k=" + std::to_string(k) +
                                    " needs ceil(k/64)=" + std::to_string((k + 63) / 64));
    }
    auto out = new_matrix<float>(M, k);
    const uint64_t *src = static_cast<const uint64_t *>(bits.data());
    float *dst = out.data();
    {
        nb::gil_scoped_release release;
        apb::unpack_signs(src, M, W, k, dst);
    }
    return out;
}

std::vector<std::string> available_isa_names() {
    std::vector<std::string> names;
    for (apb::Isa isa : apb::available_isas()) names.emplace_back(apb::isa_name(isa));
    return names;
}

}  // namespace

NB_MODULE(_C, m) {
    m.doc() = "apb's compiled CPU kernels (bit packing, bitwise GEMM), dispatched at run "
              "time to the best instruction set the CPU has.";

    m.def("pack_signs", &pack_signs, nb::arg("x"),
          "Pack the signs of a float32 [M, K] C-contiguous matrix into uint64 "
          "[M, ceil(K/64)]: bit j of word w of row m is 1 iff x[m, 64*w + j] < 0 "
          "(so +0, -0 and NaN give 0); padding bits past K are 0.");
    m.def("unpack_signs", &unpack_signs, nb::arg("bits"), nb::arg("k"),
          "Inverse of pack_signs: uint64 [M, ceil(k/64)] to float32 [M, k] of +1 "
          "(bit 0) and -1 (bit 1).");

    m.def("active_isa", []() { return std::string(apb::isa_name(apb::active_isa())); },
          "Instruction set the kernels run with: 'scalar', 'avx2' or 'avx512'.");
    m.def("available_isas", &available_isa_names,
          "Instruction sets this CPU and this build support, 'scalar' first.");
    m.def(
        "set_isa",
        [](const std::string &name) { apb::set_active_isa(apb::isa_from_name(name)); },
        nb::arg("name"),
        "Run the kernels with this instruction set from now on (process-wide).");

    m.def("set_num_threads", &apb::set_num_threads, nb::arg("n"),
          "Threads the kernels may use (process-wide, n >= 1).");
    m.def("get_num_threads", &apb::get_num_threads,
          "Threads the kernels may use; 1 when built without OpenMP.");
#if defined(_OPENMP)
    m.attr("has_openmp") = true;
#else
    m.attr("has_openmp") = false;
#endif
}
