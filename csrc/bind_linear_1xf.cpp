// Bindings of the binary x float Linear layer (linear_1xf) and its weight panel.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <optional>

#include "bind.h"
#include "bind_util.h"
#include "cpu_features.h"
#include "linear_1xf.h"

namespace nb = nanobind;
using namespace apb::bind;
namespace layout = apb::linear_1xf_layout;

namespace {

constexpr const char *kFn = "linear_1xf";
using OptionalArray = std::optional<AnyArray>;

nb::ndarray<nb::numpy, uint8_t> py_linear_1xf_pack(const AnyArray &w, int64_t k) {
    constexpr const char *fn = "linear_1xf_pack";
    check_matrix<uint64_t>(w, fn, "w", "uint64");
    if (k < 0) throw std::invalid_argument(std::string(fn) + ": k must be >= 0, got " + std::to_string(k));
    const int64_t M = static_cast<int64_t>(w.shape(0));
    const int64_t words = static_cast<int64_t>(w.shape(1));
    if (words != (k + 63) / 64) {
        throw std::invalid_argument(std::string(fn) + ": w has " + std::to_string(words) +
                                    " words per row, but k=" + std::to_string(k) +
                                    " columns need ceil(k/64)=" + std::to_string((k + 63) / 64));
    }
    auto panel = new_array<uint8_t>({static_cast<size_t>(layout::tiles(M)),
                                     static_cast<size_t>(layout::groups(k)),
                                     static_cast<size_t>(layout::kTileBytes)});
    const uint64_t *src = static_cast<const uint64_t *>(w.data());
    uint8_t *dst = panel.data();
    {
        nb::gil_scoped_release release;
        apb::linear_1xf_pack(src, M, k, dst);
    }
    return panel;
}

// A float32 [len] vector; `what` says what it holds.
const float *float_vector(const AnyArray &v, const char *arg, int64_t len, const char *what) {
    check_array<float>(v, kFn, arg, "float32", 1);
    if (static_cast<int64_t>(v.shape(0)) != len) {
        throw std::invalid_argument(std::string(kFn) + ": " + arg + " has shape " +
                                    shape_string(v) + ", expected " + what + ", (" +
                                    std::to_string(len) + ",)");
    }
    return static_cast<const float *>(v.data());
}

NumpyMatrix<float> py_linear_1xf(const AnyArray &x, const AnyArray &panel, int64_t out_features,
                                 const AnyArray &alpha, const OptionalArray &indptr,
                                 const OptionalArray &indices, const OptionalArray &values,
                                 const OptionalArray &bias, int table_bits) {
    check_matrix<float>(x, kFn, "x", "float32");
    check_array<uint8_t>(panel, kFn, "panel", "uint8", 3);
    const int64_t M = out_features;
    if (M < 0) {
        throw std::invalid_argument(std::string(kFn) + ": out_features must be >= 0, got " +
                                    std::to_string(M));
    }
    const int64_t N = static_cast<int64_t>(x.shape(0));
    const int64_t K = static_cast<int64_t>(x.shape(1));
    const int64_t T = layout::tiles(M), Q = layout::groups(K);
    if (static_cast<int64_t>(panel.shape(0)) != T || static_cast<int64_t>(panel.shape(1)) != Q ||
        static_cast<int64_t>(panel.shape(2)) != layout::kTileBytes) {
        throw std::invalid_argument(
            std::string(kFn) + ": panel has shape " + shape_string(panel) + ", but M=" +
            std::to_string(M) + " outputs and K=" + std::to_string(K) +
            " inputs need (ceil(M/64), ceil(K/4), 32)=(" + std::to_string(T) + ", " +
            std::to_string(Q) + ", 32); build it with linear_1xf_pack(sign_bits, K)");
    }
    if (table_bits != 16 && table_bits != 8) {
        throw std::invalid_argument(std::string(kFn) + ": table_bits must be 16 (exact) or 8 "
                                    "(int8 tables), got " + std::to_string(table_bits));
    }
    apb::Linear1xf layer;
    layer.table_bits = table_bits;
    layer.panel = static_cast<const uint8_t *>(panel.data());
    layer.M = M;
    layer.K = K;
    check_array<float>(alpha, kFn, "alpha", "float32", 1);
    layer.alpha_len = static_cast<int64_t>(alpha.shape(0));
    if (layer.alpha_len != 1 && layer.alpha_len != M) {
        throw std::invalid_argument(std::string(kFn) + ": alpha has shape " + shape_string(alpha) +
                                    ", expected (1,) (per layer) or (" + std::to_string(M) +
                                    ",) (per output)");
    }
    layer.alpha = static_cast<const float *>(alpha.data());
    if (bias) layer.bias = float_vector(*bias, "bias", M, "one value per output");
    apb::CsrMatrix csr{};
    const int given = (indptr ? 1 : 0) + (indices ? 1 : 0) + (values ? 1 : 0);
    if (given != 0 && given != 3) {
        throw std::invalid_argument(std::string(kFn) + ": give all of indptr, indices and "
                                    "values (the sparse part), or none");
    }
    if (given == 3) {
        csr = csr_matrix(*indptr, *indices, *values, kFn);
        if (csr.rows != M) {
            throw std::invalid_argument(std::string(kFn) + ": indptr has " +
                                        std::to_string(indptr->shape(0)) + " entries, but M=" +
                                        std::to_string(M) + " outputs need M+1=" +
                                        std::to_string(M + 1));
        }
        layer.sparse = &csr;
    }
    auto out = new_matrix<float>(N, M);
    const float *xp = static_cast<const float *>(x.data());
    float *dst = out.data();
    apb::active_isa();  // surface a bad APB_ISA before letting go of the GIL
    {
        nb::gil_scoped_release release;
        apb::linear_1xf(layer, xp, N, dst);
    }
    return out;
}

double py_lookup_rate(int trials, int table_bits) {
    apb::linear_1xf_kernel_name(table_bits);  // a bad APB_ISA or table_bits, with the GIL
    nb::gil_scoped_release release;
    return apb::linear_1xf_lookup_rate(trials, table_bits);
}

}  // namespace

void apb::bind::bind_linear_1xf(nb::module_ &m) {
    m.def("linear_1xf_pack", &py_linear_1xf_pack, nb::arg("w"), nb::arg("k"),
          "Weight panel of linear_1xf from pack_signs rows: w uint64 [M, ceil(k/64)] "
          "C-contiguous -> uint8 [ceil(M/64), ceil(k/4), 32].");
    m.def("linear_1xf", &py_linear_1xf, nb::arg("x"), nb::arg("panel"), nb::arg("out_features"),
          nb::arg("alpha"), nb::arg("indptr").none(), nb::arg("indices").none(),
          nb::arg("values").none(), nb::arg("bias").none(), nb::arg("table_bits") = 16,
          "Binary Linear layer with float inputs: x float32 [N, K]; panel uint8 "
          "[ceil(M/64), ceil(K/4), 32] (linear_1xf_pack); alpha float32 [1] or [M]; "
          "optional CSR correction (indptr uint8/uint16/int32/int64 [M+1], indices "
          "uint8/uint16/int32 [nnz] < K, values float32/float16 [nnz]) and bias float32 "
          "[M]; all C-contiguous. Returns float32 [N, M]: alpha * s_n * (B x a_n) + S x + "
          "bias, a_n the int8 codes of row n (scale s_n = max|x_n| / 127); table_bits=8 "
          "rounds each token's table values to int8 (faster where the ISA can use it).");
    m.def("linear_1xf_kernel_name",
          [](int table_bits) { return std::string(apb::linear_1xf_kernel_name(table_bits)); },
          nb::arg("table_bits") = 16,
          "The microkernel linear_1xf runs with the active ISA: scalar, lut16, vbmi or vbmi8.");
    m.def("linear_1xf_lookup_rate", &py_lookup_rate, nb::arg("trials") = 20, nb::arg("table_bits") = 16,
          "One core's table-lookup rate of linear_1xf's microkernel on L1 data (active ISA), "
          "in G lookups/s (one lookup: one weight row x 4 inputs of one token).");
}
