// Shared by the binding files: argument checks and result allocation for nanobind
// ndarrays (DLPack / buffer protocol, so numpy arrays and torch tensors pass without
// copies and no PyTorch header is needed).
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace apb::bind {

namespace nb = nanobind;


using AnyArray = nb::ndarray<nb::ro>;
template <typename T>
using NumpyMatrix = nb::ndarray<nb::numpy, T, nb::ndim<2>>;

inline std::string dtype_name(const nb::dlpack::dtype &dt) {
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

inline std::string shape_string(const AnyArray &a) {
    std::string s = "(";
    for (size_t i = 0; i < a.ndim(); ++i) {
        if (i) s += ", ";
        s += std::to_string(a.shape(i));
    }
    return s + (a.ndim() == 1 ? ",)" : ")");
}

// Row-major with rows of shape[1] elements. Strides of size-1 dimensions, and all
// strides of an empty array, are irrelevant (numpy and torch leave them arbitrary).
inline bool is_c_contiguous_2d(const AnyArray &a) {
    const int64_t rows = static_cast<int64_t>(a.shape(0));
    const int64_t cols = static_cast<int64_t>(a.shape(1));
    if (rows == 0 || cols == 0) return true;
    return (cols == 1 || a.stride(1) == 1) && (rows == 1 || a.stride(0) == cols);
}

// Row-major in every dimension (C order), under the same rules as above.
inline bool is_c_contiguous(const AnyArray &a) {
    for (size_t i = 0; i < a.ndim(); ++i) {
        if (a.shape(i) == 0) return true;
    }
    int64_t expected = 1;
    for (size_t i = a.ndim(); i-- > 0;) {
        const int64_t extent = static_cast<int64_t>(a.shape(i));
        if (extent != 1 && a.stride(i) != expected) return false;
        expected *= extent;
    }
    return true;
}

template <typename T>
void check_cpu_dtype(const AnyArray &a, const char *fn, const char *arg, const char *expected) {
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
}

template <typename T>
void check_matrix(const AnyArray &a, const char *fn, const char *arg, const char *expected) {
    check_cpu_dtype<T>(a, fn, arg, expected);
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

// An ndim-D C-contiguous CPU array of T; `layout` names the dimensions for the
// message, e.g. "[planes, rows, words]".
template <typename T>
void check_array(const AnyArray &a, size_t ndim, const char *fn, const char *arg,
                 const char *expected, const char *layout) {
    check_cpu_dtype<T>(a, fn, arg, expected);
    if (a.ndim() != ndim) {
        throw std::invalid_argument(std::string(fn) + ": " + arg + " must be " +
                                    std::to_string(ndim) + "-D " + layout + ", got shape " +
                                    shape_string(a));
    }
    if (!is_c_contiguous(a)) {
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

template <typename T>
using NumpyArray3 = nb::ndarray<nb::numpy, T, nb::ndim<3>>;

template <typename T>
NumpyArray3<T> new_array3(int64_t d0, int64_t d1, int64_t d2) {
    T *buf = new T[static_cast<size_t>(d0) * static_cast<size_t>(d1) * static_cast<size_t>(d2)];
    nb::capsule owner(buf, [](void *p) noexcept { delete[] static_cast<T *>(p); });
    return NumpyArray3<T>(
        buf, {static_cast<size_t>(d0), static_cast<size_t>(d1), static_cast<size_t>(d2)}, owner);
}

}  // namespace apb::bind
