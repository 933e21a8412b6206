// apb_conv2d: the packed layer's three kernels in sequence, their intermediate results
// in per-thread workspaces; compiled without ISA flags (each kernel dispatches itself).
#include "apb_conv2d.h"

#include <stdexcept>
#include <string>

#include "bgemm.h"
#include "workspace.h"

namespace apb {

namespace {

struct BitsWorkspace;  // thread_workspace tags
struct DotWorkspace;

}  // namespace

void apb_conv2d(const float *x, const Conv2dGeometry &g, const BinaryProduct &p,
                const CsrMatrix &a, const SparseConvEpilogue &e, float *out) {
    if (e.dot != nullptr) {
        throw std::invalid_argument("apb_conv2d: the epilogue's dot is computed here");
    }
    if (p.rows != a.rows) {
        throw std::invalid_argument("apb_conv2d: " + std::to_string(p.rows) +
                                    " sign rows but the sparse part has " +
                                    std::to_string(a.rows) + " rows");
    }
    const bool signs = p.act_bits == 1;
    // Both throw on a bad bit width or scale, before any work.
    const ActivationQuantizer q = signs ? sign_quantizer() : code_quantizer(p.scale, p.act_bits);
    const SparseConvInput in = signs ? SparseConvInput{InputQuantizer::signs, 1.0f, 1.0f, 1.0f}
                                     : sparse_conv_codes(p.scale, p.act_bits);
    spmm_csr_validate(a, g.columns());
    const int64_t M = p.rows;
    const int64_t N = g.positions();
    const int64_t W = g.words();
    if (M == 0 || N == 0) return;
    uint64_t *bits = thread_workspace<BitsWorkspace, uint64_t>(
        static_cast<size_t>(q.planes) * static_cast<size_t>(N * W));
    int32_t *dot = thread_workspace<DotWorkspace, int32_t>(static_cast<size_t>(M * N));
    im2col_pack(x, g, q, ColumnOrder::hwc, bits);
    if (signs) {
        bgemm_1x1(p.sign_rows, bits, M, N, W, g.columns(), dot);
        if (p.padding_correction != nullptr) {
            // dot[m, b*L + l] -= corr[m, l], L = OH*OW.
            const int64_t L = g.out_h * g.out_w;
            for (int64_t m = 0; m < M; ++m) {
                const int32_t *corr = p.padding_correction + m * L;
                int32_t *row = dot + m * N;
                for (int64_t b = 0; b < g.batch; ++b, row += L) {
                    for (int64_t l = 0; l < L; ++l) row[l] -= corr[l];
                }
            }
        }
    } else {
        bgemm_1x2(p.sign_rows, bits, M, N, W, q.planes, 64 * W, dot);
    }
    SparseConvEpilogue fused = e;
    fused.dot = dot;
    fused.dot_is_float = false;
    sparse_conv2d(x, g, in, a, fused, out);
}

}  // namespace apb
