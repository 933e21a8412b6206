// apb_conv2d and apb_linear: a packed layer's kernels in sequence, their intermediate
// results in per-thread workspaces; compiled without ISA flags (each kernel dispatches
// itself).
#include "apb_fused.h"

#include <algorithm>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

#include "bgemm.h"
#include "pack_signs.h"
#include "threads.h"
#include "workspace.h"

namespace apb {

namespace {

struct BitsWorkspace;  // thread_workspace tags
struct DotWorkspace;
struct InputWorkspace;
struct SparseWorkspace;
struct TransposeWorkspace;

void check_product(const BinaryProduct &p, const CsrMatrix &a, const SparseConvEpilogue &e,
                   const char *fn) {
    if (e.dot != nullptr) {
        throw std::invalid_argument(std::string(fn) + ": the epilogue's dot is computed here");
    }
    if (e.dot_scale == nullptr) {
        throw std::invalid_argument(std::string(fn) + ": dot_scale is required");
    }
    if (p.rows != a.rows) {
        throw std::invalid_argument(std::string(fn) + ": " + std::to_string(p.rows) +
                                    " sign rows but the sparse part has " +
                                    std::to_string(a.rows) + " rows");
    }
}

}  // namespace

namespace {

// One image (g.batch == 1): x its input, out its [M, OH, OW] output.
// offsets: sparse_conv2d_offsets(g), or null when the sparse part is empty.
void conv_image(const float *x, const Conv2dGeometry &g, const ActivationQuantizer &q,
                const SparseConvInput &in, const BinaryProduct &p, const CsrMatrix &a,
                const SparseConvEpilogue &e, const int64_t *offsets, float *out) {
    const int64_t M = p.rows;
    const int64_t N = g.positions();
    const int64_t W = g.words();
    uint64_t *bits = thread_workspace<BitsWorkspace, uint64_t>(
        static_cast<size_t>(q.planes) * static_cast<size_t>(N * W));
    int32_t *dot = thread_workspace<DotWorkspace, int32_t>(static_cast<size_t>(M * N));
    im2col_pack(x, g, q, ColumnOrder::hwc, bits);
    if (q.signs) {
        bgemm_1x1(p.sign_rows, bits, M, N, W, g.columns(), dot);
        if (p.padding_correction != nullptr) {
            for (int64_t i = 0; i < M * N; ++i) dot[i] -= p.padding_correction[i];
        }
    } else {
        bgemm_1x2(p.sign_rows, bits, M, N, W, q.planes, 64 * W, dot);
    }
    SparseConvEpilogue fused = e;  // e.residual is this image's (apb_conv2d)
    fused.dot = dot;
    fused.dot_is_float = false;
    fused.out_nchw = true;
    sparse_conv2d_validated(x, g, in, a, fused, out, offsets);  // apb_conv2d validated a
}

// acc[m] = sum of values[e] * x[indices[e]] over row m's nonzeros, four partial sums
// in flight (their order, hence the rounding, is the same on every ISA).
void sparse_dot_rows(const CsrMatrix &a, const float *x, float *acc) {
    spmm_detail::with_csr_types(a, [&](auto indptr_tag, auto index_tag, auto value_tag) {
        using P = decltype(indptr_tag);
        using I = decltype(index_tag);
        using V = decltype(value_tag);
        const V *values = static_cast<const V *>(a.values);
        const auto value = [&](int64_t e) {
            if constexpr (sizeof(V) == 2) {
                float f;
                spmm_detail::halves_to_floats_portable(values + e, 1, &f);
                return f;
            } else {
                return values[e];
            }
        };
        const auto term = [&](int64_t e) {
            return value(e) * x[spmm_detail::load_index<I>(a.indices, e)];
        };
        for (int64_t m = 0; m < a.rows; ++m) {
            const int64_t e0 = spmm_detail::load_index<P>(a.indptr, m);
            const int64_t e1 = spmm_detail::load_index<P>(a.indptr, m + 1);
            float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
            int64_t e = e0;
            for (; e + 4 <= e1; e += 4) {
                s0 += term(e);
                s1 += term(e + 1);
                s2 += term(e + 2);
                s3 += term(e + 3);
            }
            for (; e < e1; ++e) s0 += term(e);
            acc[m] = (s0 + s1) + (s2 + s3);
        }
    });
}

// The input's quantizer for the bit packing and for the sparse part's x^.
ActivationQuantizer packing_quantizer(const BinaryProduct &p) {
    return p.act_bits == 1 ? sign_quantizer() : code_quantizer(p.scale, p.act_bits);
}

SparseConvInput sparse_quantizer(const BinaryProduct &p) {
    return p.act_bits == 1 ? SparseConvInput{InputQuantizer::signs, 1.0f, 1.0f, 1.0f}
                           : sparse_conv_codes(p.scale, p.act_bits);
}

}  // namespace

void apb_conv2d(const float *x, const Conv2dGeometry &g, const BinaryProduct &p,
                const CsrMatrix &a, const SparseConvEpilogue &e, float *out) {
    check_product(p, a, e, "apb_conv2d");
    const ActivationQuantizer q = packing_quantizer(p);  // both throw on a bad bit width
    const SparseConvInput in = sparse_quantizer(p);      // or scale, before any work
    spmm_csr_validate(a, g.columns());
    if (p.rows == 0 || g.positions() == 0) return;
    // Image by image: one image's packed bits, product and phase planes stay in cache,
    // where a batch's would not (tens of MB at batch 64 on ResNet-20's first layers,
    // streamed through memory three times). Images split over the threads, which then
    // need no barrier inside a layer; one image alone splits inside its kernels.
    Conv2dGeometry image = g;
    image.batch = 1;
    const int64_t in_stride = g.channels * g.height * g.width;
    const int64_t out_stride = p.rows * g.out_h * g.out_w;
    const int64_t team = g.batch > 1 ? threads_for(g.positions() * g.columns()) : 1;
    const int nt = static_cast<int>(team < g.batch ? team : g.batch);
    const std::vector<int64_t> offsets =
        a.nnz > 0 ? sparse_conv2d_offsets(image) : std::vector<int64_t>{};
    const int64_t *offset_data = a.nnz > 0 ? offsets.data() : nullptr;
    const auto run_image = [&](int64_t b) {
        SparseConvEpilogue item = e;  // the residual is laid out as out: image b's part
        if (e.residual != nullptr) item.residual = e.residual + b * out_stride;
        conv_image(x + b * in_stride, image, q, in, p, a, item, offset_data,
                   out + b * out_stride);
    };
    if (nt <= 1) {
        for (int64_t b = 0; b < g.batch; ++b) run_image(b);
        return;
    }
    std::exception_ptr error;  // exceptions must not leave a parallel region
#pragma omp parallel for num_threads(nt) schedule(dynamic)
    for (int64_t b = 0; b < g.batch; ++b) {
        try {
            run_image(b);
        } catch (...) {
#pragma omp critical(apb_conv2d_error)
            if (!error) error = std::current_exception();
        }
    }
    if (error) std::rethrow_exception(error);
}

void apb_linear(const float *x, int64_t N, int64_t K, const BinaryProduct &p,
                const CsrMatrix &a, const SparseConvEpilogue &e, float *out) {
    check_product(p, a, e, "apb_linear");
    if (p.padding_correction != nullptr) {
        throw std::invalid_argument("apb_linear: a Linear layer has no padding correction");
    }
    const ActivationQuantizer q = packing_quantizer(p);
    const SparseConvInput in = sparse_quantizer(p);
    spmm_csr_validate(a, K);
    const int64_t M = p.rows;
    const int64_t W = (K + 63) / 64;
    if (M == 0 || N == 0) return;
    uint64_t *bits = thread_workspace<BitsWorkspace, uint64_t>(
        static_cast<size_t>(q.planes) * static_cast<size_t>(N * W));
    int32_t *dot = thread_workspace<DotWorkspace, int32_t>(static_cast<size_t>(M * N));
    if (q.signs) {
        pack_signs(x, N, K, bits);
        bgemm_1x1(p.sign_rows, bits, M, N, W, K, dot);
    } else {
        quantize_pack(x, N, K, q, bits);
        bgemm_1x2(p.sign_rows, bits, M, N, W, q.planes, 64 * W, dot);
    }
    float *acc = nullptr;
    if (a.nnz > 0 && N == 1) {
        // One row (a token, a batch-1 image): each output's nonzeros are a short dot
        // product over x^; spmm_csr's column sweeps would handle one column at a time.
        float *xq = thread_workspace<InputWorkspace, float>(static_cast<size_t>(K));
        sparse_conv_quantize(x, 1, K, in, xq);
        acc = thread_workspace<SparseWorkspace, float>(static_cast<size_t>(M));
        sparse_dot_rows(a, xq, acc);
    } else if (a.nnz > 0) {
        // S ⊗ x^ as spmm_csr computes it, over x^ transposed to [K, N] (one row needs no
        // transposition).
        float *xq = thread_workspace<InputWorkspace, float>(static_cast<size_t>(K * N));
        sparse_conv_quantize(x, N, K, in, xq);
        const float *xt = xq;
        if (N > 1) {
            float *t = thread_workspace<TransposeWorkspace, float>(static_cast<size_t>(K * N));
            for (int64_t n = 0; n < N; ++n) {
                for (int64_t k = 0; k < K; ++k) t[k * N + n] = xq[n * K + k];
            }
            xt = t;
        }
        acc = thread_workspace<SparseWorkspace, float>(static_cast<size_t>(M * N));
        std::fill(acc, acc + M * N, 0.0f);
        spmm_csr(a, xt, K, N, acc);
    }
    for (int64_t m = 0; m < M; ++m) {
        const float ds = e.dot_scale[m];
        const float ss = e.sparse_scale != nullptr ? e.sparse_scale[m] : 1.0f;
        const float sh = e.shift != nullptr ? e.shift[m] : 0.0f;
        const ChannelEpilogue channel{ds, ss, sh, e.lower, e.upper, e.residual};
        const int32_t *d = dot + m * N;
        const float *sp = acc != nullptr ? acc + m * N : nullptr;
        for (int64_t n = 0; n < N; ++n) {
            float y = ds * static_cast<float>(d[n]) + sh;
            if (sp != nullptr) y += ss * sp[n];
            out[n * M + m] = finish_output(y, channel, n * M + m);
        }
    }
}

}  // namespace apb
