// Shared by the binding files: argument checks and result allocation for nanobind
// ndarrays (DLPack / buffer protocol, so numpy arrays and torch tensors pass without
// copies and no PyTorch header is needed).
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>
#include <initializer_list>
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

// Row-major in every dimension. Strides of size-1 dimensions, and all strides of an
// empty array, are irrelevant (numpy and torch leave them arbitrary).
inline bool is_c_contiguous(const AnyArray &a) {
    for (size_t i = 0; i < a.ndim(); ++i) {
        if (a.shape(i) == 0) return true;
    }
    int64_t expected = 1;
    for (size_t i = a.ndim(); i-- > 0;) {
        if (a.shape(i) != 1 && a.stride(i) != expected) return false;
        expected *= static_cast<int64_t>(a.shape(i));
    }
    return true;
}

inline void check_cpu(const AnyArray &a, const char *fn, const char *arg) {
    if (a.device_type() != nb::device::cpu::value) {
        throw nb::type_error((std::string(fn) + ": " + arg +
                              " must be in CPU memory; move it with .cpu() first")
                                 .c_str());
    }
}

template <typename T>
void check_dtype(const AnyArray &a, const char *fn, const char *arg, const char *expected) {
    if (a.dtype() != nb::dtype<T>()) {
        throw nb::type_error((std::string(fn) + ": " + arg + " must have dtype " + expected +
                              ", got " + dtype_name(a.dtype()))
                                 .c_str());
    }
}

// Rank and layout only (for arguments that may have one of several dtypes).
inline void check_layout(const AnyArray &a, const char *fn, const char *arg, size_t ndim) {
    if (a.ndim() != ndim) {
        throw std::invalid_argument(std::string(fn) + ": " + arg + " must be " +
                                    std::to_string(ndim) + "-D, got shape " +
                                    shape_string(a));
    }
    if (!is_c_contiguous(a)) {
        throw std::invalid_argument(std::string(fn) + ": " + arg +
                                    " must be C-contiguous (row-major); pass "
                                    "np.ascontiguousarray(x) or x.contiguous()");
    }
}

// A CPU, C-contiguous array of dtype T and rank ndim.
template <typename T>
void check_array(const AnyArray &a, const char *fn, const char *arg, const char *expected,
                 size_t ndim) {
    check_cpu(a, fn, arg);
    check_dtype<T>(a, fn, arg, expected);
    check_layout(a, fn, arg, ndim);
}

template <typename T>
void check_matrix(const AnyArray &a, const char *fn, const char *arg, const char *expected) {
    check_array<T>(a, fn, arg, expected, 2);
}

template <typename T>
NumpyMatrix<T> new_matrix(int64_t rows, int64_t cols) {
    T *buf = new T[static_cast<size_t>(rows) * static_cast<size_t>(cols)];
    nb::capsule owner(buf, [](void *p) noexcept { delete[] static_cast<T *>(p); });
    return NumpyMatrix<T>(buf, {static_cast<size_t>(rows), static_cast<size_t>(cols)},
                          owner);
}

// A C-contiguous numpy array of any rank, owned by the returned object.
template <typename T>
nb::ndarray<nb::numpy, T> new_array(std::initializer_list<size_t> shape) {
    size_t count = 1;
    for (size_t d : shape) count *= d;
    T *buf = new T[count];
    nb::capsule owner(buf, [](void *p) noexcept { delete[] static_cast<T *>(p); });
    return nb::ndarray<nb::numpy, T>(buf, shape, owner);
}

}  // namespace apb::bind
