// Bindings of the direct sparse convolution with the packed layer's epilogue, and of the
// whole packed layers with quantized inputs that end with it (apb_conv2d, apb_linear).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>

#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "bind.h"
#include "bind_util.h"
#include "cpu_features.h"
#include "apb_fused.h"
#include "sparse_conv2d.h"

namespace nb = nanobind;
using namespace apb::bind;

namespace {

constexpr const char *kFn = "sparse_conv2d";

using OptionalArray = std::optional<AnyArray>;

// A float32 [M] per-channel vector, or null when absent.
const float *channel_vector(const OptionalArray &v, const char *arg, int64_t rows) {
    if (!v) return nullptr;
    check_array<float>(*v, kFn, arg, "float32", 1);
    if (static_cast<int64_t>(v->shape(0)) != rows) {
        throw std::invalid_argument(std::string(kFn) + ": " + arg + " has shape " +
                                    shape_string(*v) + ", expected one value per output "
                                    "channel, (" + std::to_string(rows) + ",)");
    }
    return static_cast<const float *>(v->data());
}

// The fused layers' epilogue: dot_scale (required), sparse_scale and shift, each [M].
apb::SparseConvEpilogue fused_epilogue(const AnyArray &dot_scale,
                                       const OptionalArray &sparse_scale,
                                       const OptionalArray &shift, int64_t rows) {
    apb::SparseConvEpilogue e;
    e.dot_scale = channel_vector(dot_scale, "dot_scale", rows);
    e.sparse_scale = channel_vector(sparse_scale, "sparse_scale", rows);
    e.shift = channel_vector(shift, "shift", rows);
    return e;
}

// The fused end of a residual block: out = min(max(out + residual, lower), upper), with
// residual (or None) float32, C-contiguous, of the output's shape.
void set_finish(apb::SparseConvEpilogue &e, const OptionalArray &residual, double lower,
                double upper, const char *fn, const std::vector<size_t> &out_shape) {
    check_bounds(lower, upper, fn);
    e.lower = static_cast<float>(lower);
    e.upper = static_cast<float>(upper);
    if (!residual) return;
    check_array<float>(*residual, fn, "residual", "float32", out_shape.size());
    bool same = true;
    for (size_t i = 0; i < out_shape.size(); ++i) same = same && residual->shape(i) == out_shape[i];
    if (!same) {
        std::string expected = "(";
        for (size_t i = 0; i < out_shape.size(); ++i) {
            expected += (i ? ", " : "") + std::to_string(out_shape[i]);
        }
        throw std::invalid_argument(std::string(fn) + ": residual has shape " +
                                    shape_string(*residual) + ", expected the output's " +
                                    expected + ")");
    }
    e.residual = static_cast<const float *>(residual->data());
}

apb::SparseConvInput input_quantizer(int64_t act_bits, double scale) {
    if (act_bits == 32) return {apb::InputQuantizer::identity, 1.0f, 1.0f, 1.0f};
    if (act_bits == 1) return {apb::InputQuantizer::signs, 1.0f, 1.0f, 1.0f};
    if (act_bits >= 2 && act_bits <= 8) return apb::sparse_conv_codes(scale, act_bits);
    throw std::invalid_argument("sparse_conv2d: act_bits must be 32, 1 or 2..8, got " +
                                std::to_string(act_bits));
}

NumpyMatrix<float> py_sparse_conv2d(const AnyArray &x, const AnyArray &indptr,
                                    const AnyArray &indices, const AnyArray &values,
                                    int64_t kernel_h, int64_t kernel_w, int64_t stride_h,
                                    int64_t stride_w, int64_t pad_h, int64_t pad_w,
                                    int64_t dilation_h, int64_t dilation_w, int64_t act_bits,
                                    double scale, const OptionalArray &dot,
                                    const OptionalArray &dot_scale,
                                    const OptionalArray &sparse_scale,
                                    const OptionalArray &shift) {
    const apb::Conv2dGeometry g = conv2d_geometry_of(x, kFn, kernel_h, kernel_w, stride_h,
                                                     stride_w, pad_h, pad_w, dilation_h,
                                                     dilation_w);
    const apb::SparseConvInput in = input_quantizer(act_bits, scale);
    const apb::CsrMatrix a = csr_matrix(indptr, indices, values, kFn);
    const int64_t M = a.rows;
    const int64_t N = g.positions();
    apb::SparseConvEpilogue e;
    if (dot) {
        check_cpu(*dot, kFn, "dot");
        e.dot_is_float = dot->dtype() == nb::dtype<float>();
        if (!e.dot_is_float) check_dtype<int32_t>(*dot, kFn, "dot", "int32 or float32");
        check_layout(*dot, kFn, "dot", 2);
        if (static_cast<int64_t>(dot->shape(0)) != M || static_cast<int64_t>(dot->shape(1)) != N) {
            throw std::invalid_argument(
                "sparse_conv2d: dot has shape " + shape_string(*dot) + ", expected [M, N] = [" +
                std::to_string(M) + ", " + std::to_string(N) + "] (output channels, B*OH*OW)");
        }
        if (!dot_scale) {
            throw std::invalid_argument("sparse_conv2d: dot needs its dot_scale (one per "
                                        "output channel)");
        }
        e.dot = dot->data();
    } else if (dot_scale) {
        throw std::invalid_argument("sparse_conv2d: dot_scale is given without dot");
    }
    e.dot_scale = channel_vector(dot_scale, "dot_scale", M);
    e.sparse_scale = channel_vector(sparse_scale, "sparse_scale", M);
    e.shift = channel_vector(shift, "shift", M);
    NumpyMatrix<float> out = new_matrix<float>(M, N);
    const float *src = static_cast<const float *>(x.data());
    float *dst = out.data();
    run_without_gil([&] { apb::sparse_conv2d(src, g, in, a, e, dst); });
    return out;
}

// The sign rows [M, words] of a packed layer with M = a.rows output channels.
const uint64_t *sign_rows_of(const AnyArray &sign_rows, const char *fn, int64_t M,
                             int64_t words, const char *columns) {
    check_matrix<uint64_t>(sign_rows, fn, "sign_rows", "uint64");
    if (static_cast<int64_t>(sign_rows.shape(0)) != M ||
        static_cast<int64_t>(sign_rows.shape(1)) != words) {
        throw std::invalid_argument(
            std::string(fn) + ": sign_rows has shape " + shape_string(sign_rows) +
            ", expected [M, " + columns + "] = [" + std::to_string(M) + ", " +
            std::to_string(words) + "] (M = len(indptr) - 1)");
    }
    return static_cast<const uint64_t *>(sign_rows.data());
}

void check_act_bits(int64_t act_bits, const char *fn) {
    if (act_bits < 1 || act_bits > 8) {
        throw std::invalid_argument(std::string(fn) + ": act_bits must be 1 (signs) or 2..8 "
                                    "(codes), got " + std::to_string(act_bits));
    }
}

// A packed layer's arguments other than its input, checked and held once. The packed
// runtime calls a layer with the same weights at every forward; converting and checking
// eight arrays and a dozen numbers per call cost about as much as a small layer's
// kernels (LeNet-5's layers at batch 1, docs/performance.md). The arrays are held, not
// copied: the memory stays alive as long as the layer, and the kernel validates the CSR
// structure at every call, so a caller that changes an array in place cannot make it
// read out of bounds. The functions apb_conv2d / apb_linear build one per call.
class PackedLayerArgs {
  public:
    PackedLayerArgs(const char *fn, const AnyArray &sign_rows, const AnyArray &indptr,
                    const AnyArray &indices, const AnyArray &values, int64_t act_bits,
                    double scale, const AnyArray &dot_scale, const OptionalArray &sparse_scale,
                    const OptionalArray &shift)
        : fn_(fn), sign_rows_(sign_rows), indptr_(indptr), indices_(indices), values_(values),
          dot_scale_(dot_scale), sparse_scale_(sparse_scale), shift_(shift) {
        check_act_bits(act_bits, fn);
        a_ = csr_matrix(indptr_, indices_, values_, fn);
        check_matrix<uint64_t>(sign_rows_, fn, "sign_rows", "uint64");
        epilogue_ = fused_epilogue(dot_scale_, sparse_scale_, shift_, a_.rows);
        product_ = apb::BinaryProduct{nullptr, a_.rows, static_cast<int>(act_bits),
                                      static_cast<float>(scale), nullptr};
    }

    int64_t rows() const { return a_.rows; }
    int act_bits() const { return product_.act_bits; }

  protected:
    // The product for inputs of `words` words a row (its sign rows checked against them).
    apb::BinaryProduct product(int64_t words, const char *columns) const {
        apb::BinaryProduct p = product_;
        p.sign_rows = sign_rows_of(sign_rows_, fn_, a_.rows, words, columns);
        return p;
    }

    const char *fn_;
    AnyArray sign_rows_, indptr_, indices_, values_, dot_scale_;
    OptionalArray sparse_scale_, shift_;
    apb::CsrMatrix a_{};
    apb::SparseConvEpilogue epilogue_{};
    apb::BinaryProduct product_{};
};

class ApbLinearLayer : public PackedLayerArgs {
  public:
    ApbLinearLayer(const AnyArray &sign_rows, const AnyArray &indptr, const AnyArray &indices,
                   const AnyArray &values, int64_t act_bits, double scale,
                   const AnyArray &dot_scale, const OptionalArray &sparse_scale,
                   const OptionalArray &shift)
        : PackedLayerArgs("apb_linear", sign_rows, indptr, indices, values, act_bits, scale,
                          dot_scale, sparse_scale, shift) {}

    NumpyMatrix<float> operator()(const AnyArray &x, const OptionalArray &residual,
                                  double lower, double upper) const {
        check_matrix<float>(x, fn_, "x", "float32");
        const int64_t M = a_.rows;
        const int64_t N = static_cast<int64_t>(x.shape(0));
        const int64_t K = static_cast<int64_t>(x.shape(1));
        const apb::BinaryProduct p = product((K + 63) / 64, "ceil(K/64)");
        apb::SparseConvEpilogue e = epilogue_;
        set_finish(e, residual, lower, upper, fn_,
                   {static_cast<size_t>(N), static_cast<size_t>(M)});
        NumpyMatrix<float> out = new_matrix<float>(N, M);
        const float *src = static_cast<const float *>(x.data());
        float *dst = out.data();
        run_without_gil([&] { apb::apb_linear(src, N, K, p, a_, e, dst); });
        return out;
    }
};

class ApbConv2dLayer : public PackedLayerArgs {
  public:
    ApbConv2dLayer(const AnyArray &sign_rows, const AnyArray &indptr, const AnyArray &indices,
                   const AnyArray &values, int64_t kernel_h, int64_t kernel_w,
                   int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                   int64_t dilation_h, int64_t dilation_w, int64_t act_bits, double scale,
                   const AnyArray &dot_scale, const OptionalArray &sparse_scale,
                   const OptionalArray &shift)
        : PackedLayerArgs("apb_conv2d", sign_rows, indptr, indices, values, act_bits, scale,
                          dot_scale, sparse_scale, shift),
          kernel_h_(kernel_h), kernel_w_(kernel_w), stride_h_(stride_h), stride_w_(stride_w),
          pad_h_(pad_h), pad_w_(pad_w), dilation_h_(dilation_h), dilation_w_(dilation_w) {}

    nb::ndarray<nb::numpy, float> operator()(const AnyArray &x,
                                             const OptionalArray &padding_correction,
                                             const OptionalArray &residual, double lower,
                                             double upper) const {
        const apb::Conv2dGeometry g =
            conv2d_geometry_of(x, fn_, kernel_h_, kernel_w_, stride_h_, stride_w_, pad_h_,
                               pad_w_, dilation_h_, dilation_w_);
        const int64_t M = a_.rows;
        apb::BinaryProduct p = product(g.words(), "ceil(C*kh*kw/64)");
        if (padding_correction) {
            if (p.act_bits != 1) {
                throw std::invalid_argument("apb_conv2d: padding_correction is for 1-bit "
                                            "(sign) inputs only");
            }
            check_matrix<int32_t>(*padding_correction, fn_, "padding_correction", "int32");
            const int64_t L = g.out_h * g.out_w;
            if (static_cast<int64_t>(padding_correction->shape(0)) != M ||
                static_cast<int64_t>(padding_correction->shape(1)) != L) {
                throw std::invalid_argument(
                    "apb_conv2d: padding_correction has shape " +
                    shape_string(*padding_correction) + ", expected [M, OH*OW] = [" +
                    std::to_string(M) + ", " + std::to_string(L) + "]");
            }
            p.padding_correction = static_cast<const int32_t *>(padding_correction->data());
        }
        apb::SparseConvEpilogue e = epilogue_;
        const std::vector<size_t> shape{static_cast<size_t>(g.batch), static_cast<size_t>(M),
                                        static_cast<size_t>(g.out_h),
                                        static_cast<size_t>(g.out_w)};
        set_finish(e, residual, lower, upper, fn_, shape);
        auto out = new_array<float>({shape[0], shape[1], shape[2], shape[3]});
        const float *src = static_cast<const float *>(x.data());
        float *dst = out.data();
        run_without_gil([&] { apb::apb_conv2d(src, g, p, a_, e, dst); });
        return out;
    }

  private:
    int64_t kernel_h_, kernel_w_, stride_h_, stride_w_, pad_h_, pad_w_, dilation_h_,
        dilation_w_;
};

NumpyMatrix<float> py_apb_linear(const AnyArray &x, const AnyArray &sign_rows,
                                 const AnyArray &indptr, const AnyArray &indices,
                                 const AnyArray &values, int64_t act_bits, double scale,
                                 const AnyArray &dot_scale, const OptionalArray &sparse_scale,
                                 const OptionalArray &shift, const OptionalArray &residual,
                                 double lower, double upper) {
    check_matrix<float>(x, "apb_linear", "x", "float32");
    return ApbLinearLayer(sign_rows, indptr, indices, values, act_bits, scale, dot_scale,
                          sparse_scale, shift)(x, residual, lower, upper);
}

nb::ndarray<nb::numpy, float> py_apb_conv2d(const AnyArray &x, const AnyArray &sign_rows,
                                 const AnyArray &indptr, const AnyArray &indices,
                                 const AnyArray &values, int64_t kernel_h, int64_t kernel_w,
                                 int64_t stride_h, int64_t stride_w, int64_t pad_h,
                                 int64_t pad_w, int64_t dilation_h, int64_t dilation_w,
                                 int64_t act_bits, double scale,
                                 const OptionalArray &padding_correction,
                                 const AnyArray &dot_scale, const OptionalArray &sparse_scale,
                                 const OptionalArray &shift, const OptionalArray &residual,
                                 double lower, double upper) {
    // The geometry first: a bad input or kernel is reported before the weights are.
    conv2d_geometry_of(x, "apb_conv2d", kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                       dilation_h, dilation_w);
    return ApbConv2dLayer(sign_rows, indptr, indices, values, kernel_h, kernel_w, stride_h,
                          stride_w, pad_h, pad_w, dilation_h, dilation_w, act_bits, scale,
                          dot_scale, sparse_scale, shift)(x, padding_correction, residual,
                                                          lower, upper);
}

}  // namespace

void apb::bind::bind_sparse_conv2d(nb::module_ &m) {
    m.def("sparse_conv2d", &py_sparse_conv2d, nb::arg("x"), nb::arg("indptr"),
          nb::arg("indices"), nb::arg("values"), nb::arg("kernel_h"), nb::arg("kernel_w"),
          nb::arg("stride_h"), nb::arg("stride_w"), nb::arg("pad_h"), nb::arg("pad_w"),
          nb::arg("dilation_h"), nb::arg("dilation_w"), nb::arg("act_bits"), nb::arg("scale"),
          nb::arg("dot").none(), nb::arg("dot_scale").none(), nb::arg("sparse_scale").none(),
          nb::arg("shift").none(),
          "float32 [M, B*OH*OW]: dot_scale[m]*dot[m, n] + sparse_scale[m]*(S conv x^)[m, n] "
          "+ shift[m], S the CSR matrix [M, C*kh*kw] (columns (c, dy, dx)), x float32 "
          "[B, C, H, W], x^ = x (act_bits 32), sign(x) (1) or code*scale/L (2..8), zero "
          "padding exact. dot int32/float32 [M, N] or None; the vectors float32 [M] or None.");
    m.def("apb_conv2d", &py_apb_conv2d, nb::arg("x"), nb::arg("sign_rows"), nb::arg("indptr"),
          nb::arg("indices"), nb::arg("values"), nb::arg("kernel_h"), nb::arg("kernel_w"),
          nb::arg("stride_h"), nb::arg("stride_w"), nb::arg("pad_h"), nb::arg("pad_w"),
          nb::arg("dilation_h"), nb::arg("dilation_w"), nb::arg("act_bits"), nb::arg("scale"),
          nb::arg("padding_correction").none(), nb::arg("dot_scale"),
          nb::arg("sparse_scale").none(), nb::arg("shift").none(),
          nb::arg("residual").none() = nb::none(),
          nb::arg("lower") = -std::numeric_limits<double>::infinity(),
          nb::arg("upper") = std::numeric_limits<double>::infinity(),
          "A packed convolution with quantized inputs in one call: float32 [B, M, OH, OW], "
          "out[b, m, l] = dot_scale[m]*dot[m, n] + sparse_scale[m]*(S conv x^)[m, n] + "
          "shift[m] for n = b*OH*OW + l, dot the "
          "popcount product of sign_rows (uint64 [M, ceil(K/64)], columns (dy, dx, c)) with "
          "x's packed im2col rows, x^ = sign(x) (act_bits 1; minus padding_correction, int32 "
          "[M, OH*OW], when padded) or code*scale/L (2..8), S the CSR matrix [M, C*kh*kw] "
          "(columns (c, dy, dx)); then min(max(out + residual, lower), upper), residual "
          "float32 of the output's shape or None (NaN kept).");
    nb::class_<ApbConv2dLayer>(
        m, "ApbConv2dLayer",
        "apb_conv2d's arguments other than x, padding_correction, residual and the bounds, "
        "checked and held once; call it as apb_conv2d without them.")
        .def(nb::init<const AnyArray &, const AnyArray &, const AnyArray &, const AnyArray &,
                      int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                      int64_t, double, const AnyArray &, const OptionalArray &,
                      const OptionalArray &>(),
             nb::arg("sign_rows"), nb::arg("indptr"), nb::arg("indices"), nb::arg("values"),
             nb::arg("kernel_h"), nb::arg("kernel_w"), nb::arg("stride_h"), nb::arg("stride_w"),
             nb::arg("pad_h"), nb::arg("pad_w"), nb::arg("dilation_h"), nb::arg("dilation_w"),
             nb::arg("act_bits"), nb::arg("scale"), nb::arg("dot_scale"),
             nb::arg("sparse_scale").none(), nb::arg("shift").none())
        .def("__call__", &ApbConv2dLayer::operator(), nb::arg("x"),
             nb::arg("padding_correction").none() = nb::none(),
             nb::arg("residual").none() = nb::none(),
             nb::arg("lower") = -std::numeric_limits<double>::infinity(),
             nb::arg("upper") = std::numeric_limits<double>::infinity())
        .def_prop_ro("rows", &ApbConv2dLayer::rows)
        .def_prop_ro("act_bits", &ApbConv2dLayer::act_bits);
    nb::class_<ApbLinearLayer>(
        m, "ApbLinearLayer",
        "apb_linear's arguments other than x, residual and the bounds, checked and held "
        "once; call it as apb_linear without them.")
        .def(nb::init<const AnyArray &, const AnyArray &, const AnyArray &, const AnyArray &,
                      int64_t, double, const AnyArray &, const OptionalArray &,
                      const OptionalArray &>(),
             nb::arg("sign_rows"), nb::arg("indptr"), nb::arg("indices"), nb::arg("values"),
             nb::arg("act_bits"), nb::arg("scale"), nb::arg("dot_scale"),
             nb::arg("sparse_scale").none(), nb::arg("shift").none())
        .def("__call__", &ApbLinearLayer::operator(), nb::arg("x"),
             nb::arg("residual").none() = nb::none(),
             nb::arg("lower") = -std::numeric_limits<double>::infinity(),
             nb::arg("upper") = std::numeric_limits<double>::infinity())
        .def_prop_ro("rows", &ApbLinearLayer::rows)
        .def_prop_ro("act_bits", &ApbLinearLayer::act_bits);
    m.def("apb_linear", &py_apb_linear, nb::arg("x"), nb::arg("sign_rows"), nb::arg("indptr"),
          nb::arg("indices"), nb::arg("values"), nb::arg("act_bits"), nb::arg("scale"),
          nb::arg("dot_scale"), nb::arg("sparse_scale").none(), nb::arg("shift").none(),
          nb::arg("residual").none() = nb::none(),
          nb::arg("lower") = -std::numeric_limits<double>::infinity(),
          nb::arg("upper") = std::numeric_limits<double>::infinity(),
          "A packed Linear layer with quantized inputs in one call: float32 [N, M] = "
          "dot_scale[m]*dot[m, n] + sparse_scale[m]*(S x^_n)[m] + shift[m] for x float32 "
          "[N, K], dot the popcount product of sign_rows (uint64 [M, ceil(K/64)]) with x's "
          "packed rows, x^ = sign(x) (act_bits 1) or code*scale/L (2..8), S the CSR matrix "
          "[M, K]; then min(max(out + residual, lower), upper), residual float32 [N, M] or "
          "None (NaN kept).");
}
