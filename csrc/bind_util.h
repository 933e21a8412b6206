// Shared by the binding files: argument checks and result allocation for nanobind
// ndarrays (DLPack / buffer protocol, so numpy arrays and torch tensors pass without
// copies and no PyTorch header is needed).
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cpu_features.h"
#include "pack_activations.h"
#include "result_pool.h"
#include "spmm_csr.h"

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

// The bounds of an epilogue's min(max(y, lower), upper): lower <= upper, neither NaN.
inline void check_bounds(double lower, double upper, const char *fn) {
    if (std::isnan(lower) || std::isnan(upper) || lower > upper) {
        throw std::invalid_argument(std::string(fn) + ": need lower <= upper (not NaN), got " +
                                    std::to_string(lower) + " and " + std::to_string(upper));
    }
}

// Result memory comes from the result pool (result_pool.h): large blocks are recycled
// instead of being returned to the kernel and faulted in again. Uninitialized; T is a
// plain number type.
template <typename T>
T *new_result(size_t count) {
    static_assert(std::is_trivially_default_constructible_v<T> &&
                  std::is_trivially_destructible_v<T>);
    if (count > SIZE_MAX / sizeof(T)) throw std::bad_alloc();
    return static_cast<T *>(apb::acquire_result(count * sizeof(T)));
}

inline nb::capsule result_owner(void *buf) {
    return nb::capsule(buf, [](void *p) noexcept { apb::release_result(p); });
}

template <typename T>
NumpyMatrix<T> new_matrix(int64_t rows, int64_t cols) {
    T *buf = new_result<T>(static_cast<size_t>(rows) * static_cast<size_t>(cols));
    return NumpyMatrix<T>(buf, {static_cast<size_t>(rows), static_cast<size_t>(cols)},
                          result_owner(buf));
}

// kernel() without the GIL, once a bad APB_ISA has been reported (it throws, which needs
// the GIL held).
template <class Kernel>
void run_without_gil(Kernel &&kernel) {
    apb::active_isa();
    nb::gil_scoped_release release;
    kernel();
}

// A C-contiguous numpy array of any rank, owned by the returned object.
template <typename T>
nb::ndarray<nb::numpy, T> new_array(std::initializer_list<size_t> shape) {
    size_t count = 1;
    for (size_t d : shape) count *= d;
    T *buf = new_result<T>(count);
    return nb::ndarray<nb::numpy, T>(buf, shape, result_owner(buf));
}

// The CSR index type of a 1-D array, or a TypeError naming the accepted ones.
inline CsrIndex csr_index_type(const AnyArray &a, const char *fn, const char *arg,
                               bool allow_int64) {
    check_cpu(a, fn, arg);
    const nb::dlpack::dtype dt = a.dtype();
    if (dt == nb::dtype<uint8_t>()) return CsrIndex::u8;
    if (dt == nb::dtype<uint16_t>()) return CsrIndex::u16;
    if (dt == nb::dtype<int32_t>()) return CsrIndex::i32;
    if (allow_int64 && dt == nb::dtype<int64_t>()) return CsrIndex::i64;
    throw nb::type_error((std::string(fn) + ": " + arg + " must have dtype uint8, uint16, " +
                          (allow_int64 ? "int32 or int64" : "or int32") + ", got " +
                          dtype_name(dt))
                             .c_str());
}

// The CSR value type (float32 or float16) of a 1-D array, or a TypeError.
inline CsrValue csr_value_type(const AnyArray &a, const char *fn) {
    check_cpu(a, fn, "values");
    const nb::dlpack::dtype dt = a.dtype();
    if (dt == nb::dtype<float>()) return CsrValue::f32;
    const nb::dlpack::dtype half{static_cast<uint8_t>(nb::dlpack::dtype_code::Float), 16, 1};
    if (dt == half) return CsrValue::f16;
    throw nb::type_error((std::string(fn) + ": values must have dtype float32 or float16, got " +
                          dtype_name(dt))
                             .c_str());
}

// A CSR matrix over the three arrays (types and 1-D layouts checked; the structure
// itself is validated by the kernel before it touches memory). rows = len(indptr) - 1.
inline CsrMatrix csr_matrix(const AnyArray &indptr, const AnyArray &indices,
                            const AnyArray &values, const char *fn) {
    CsrMatrix a{};
    a.indptr_type = csr_index_type(indptr, fn, "indptr", true);
    a.index_type = csr_index_type(indices, fn, "indices", false);
    a.value_type = csr_value_type(values, fn);
    check_layout(indptr, fn, "indptr", 1);
    check_layout(indices, fn, "indices", 1);
    check_layout(values, fn, "values", 1);
    if (indptr.shape(0) < 1) {
        throw std::invalid_argument(std::string(fn) + ": indptr needs at least one entry "
                                    "(M + 1 for M rows)");
    }
    if (indices.shape(0) != values.shape(0)) {
        throw std::invalid_argument(std::string(fn) +
                                    ": indices and values must have the same length, got " +
                                    std::to_string(indices.shape(0)) + " and " +
                                    std::to_string(values.shape(0)));
    }
    a.indptr = indptr.data();
    a.indices = indices.data();
    a.values = values.data();
    a.rows = static_cast<int64_t>(indptr.shape(0)) - 1;
    a.nnz = static_cast<int64_t>(indices.shape(0));
    return a;
}

// The geometry of a convolution over x, float32 [B, C, H, W] C-contiguous (checked),
// as torch.nn.Conv2d computes it; std::invalid_argument for impossible parameters.
inline Conv2dGeometry conv2d_geometry_of(const AnyArray &x, const char *fn, int64_t kernel_h,
                                         int64_t kernel_w, int64_t stride_h, int64_t stride_w,
                                         int64_t pad_h, int64_t pad_w, int64_t dilation_h,
                                         int64_t dilation_w) {
    check_array<float>(x, fn, "x", "float32", 4);
    return conv2d_geometry(static_cast<int64_t>(x.shape(0)), static_cast<int64_t>(x.shape(1)),
                           static_cast<int64_t>(x.shape(2)), static_cast<int64_t>(x.shape(3)),
                           kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                           dilation_w);
}

}  // namespace apb::bind
