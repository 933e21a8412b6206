// Activation packing for the bitwise layers: quantize and bit-pack in one pass, for a
// Linear layer (rows of x) and for a convolution (im2col fused in, so the unfolded
// matrix is never materialised in float).
//
// Layouts are those of pack_signs (pack_signs.h): a row of K columns becomes
// ceil(K/64) little-endian words, padding bits past K are 0. k-bit codes are stored as
// bit-planes, uint64 [P, rows, ceil(K/64)], plane p holding bit p of every code.
//
// Quantizers (decided per element, in float32):
//   signs:  bit  = x < 0, by the IEEE bit pattern as in pack_signs (NaN, -0.0 -> 0).
//   codes:  code = round_half_even(min(max(x, 0), s) / s * L),   L = 2^P - 1,
//           evaluated in exactly this order (a true division, then the product), so it
//           is bit-identical to apb.nn.UniformActivation's forward. NaN gives code 0.
//
// Convolution: x float32 [B, C, H, W]; output position n = (b*OH + oy)*OW + ox, column
// j = (c*kh + dy)*kw + dx, as weight.reshape(M, -1) of a Conv2d weight [M, C, kh, kw].
// Input pixel of (n, j): (b, c, oy*sh - ph + dy*dh, ox*sw - pw + dx*dw). A pixel outside
// the image (zero padding) has the value 0: sign bit 0, code 0.
#pragma once

#include <cstdint>
#include <cstring>

namespace apb {

struct Conv2dGeometry {
    int64_t batch, channels, height, width;
    int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
    int64_t out_h, out_w;

    int64_t positions() const { return batch * out_h * out_w; }
    int64_t columns() const { return channels * kernel_h * kernel_w; }
    int64_t words() const { return (columns() + 63) / 64; }
};

// Checks the parameters (sizes >= 0, kernel, stride and dilation >= 1, padding >= 0,
// every value < 2^31, an output of at least 1 x 1) and computes out_h, out_w as
// torch.nn.Conv2d does; throws std::invalid_argument otherwise.
Conv2dGeometry conv2d_geometry(int64_t batch, int64_t channels, int64_t height, int64_t width,
                               int64_t kernel_h, int64_t kernel_w, int64_t stride_h,
                               int64_t stride_w, int64_t pad_h, int64_t pad_w,
                               int64_t dilation_h, int64_t dilation_w);

// What to write per element: one sign plane, or `planes` code planes.
struct ActivationQuantizer {
    bool signs;
    int planes;    // 1 for signs; P in [1, 8] for codes
    float scale;   // s > 0, finite (codes only)
    float levels;  // L = 2^P - 1 (codes only)
};

// Throws std::invalid_argument unless 1 <= bits <= 8 and scale is finite and > 0.
ActivationQuantizer code_quantizer(double scale, int64_t bits);
ActivationQuantizer sign_quantizer();

// Column order of the im2col rows:
//   chw: j = (c*kh + dy)*kw + dx, as weight.reshape(M, -1) of a Conv2d weight [M, C, kh, kw];
//   hwc: j = (dy*kw + dx)*C + c, as the weight permuted to [M, kh, kw, C].
// hwc is the fast one: every input is quantized once, into per-pixel words of C bits
// (ceil(C/64) words per plane), and the unfolding then only moves those words (whole
// words when C % 64 == 0), instead of quantizing each input kh*kw times.
enum class ColumnOrder : int { chw, hwc };

// out: uint64 [q.planes, g.positions(), g.words()].
void im2col_pack(const float *x, const Conv2dGeometry &g, const ActivationQuantizer &q,
                 ColumnOrder order, uint64_t *out);

// x float32 [N, K]; out: uint64 [q.planes, N, ceil(K/64)].
void quantize_pack(const float *x, int64_t N, int64_t K, const ActivationQuantizer &q,
                   uint64_t *out);

// Per ISA. im2col: the OW positions of output row `row` = b*OH + oy. Rows: row n of x.
// Both write plane p of their positions at out + p*plane_stride. The AVX2 ones exist
// only in x86 builds (APB_HAVE_X86_KERNELS) and serve the AVX-512 dispatch as well.
void im2col_pack_row_scalar(const float *x, const Conv2dGeometry &g,
                            const ActivationQuantizer &q, int64_t row, uint64_t *out,
                            int64_t plane_stride);
void im2col_pack_row_avx2(const float *x, const Conv2dGeometry &g,
                          const ActivationQuantizer &q, int64_t row, uint64_t *out,
                          int64_t plane_stride);
void quantize_pack_row_scalar(const float *x, int64_t K, const ActivationQuantizer &q,
                              int64_t n, uint64_t *out, int64_t plane_stride);
void quantize_pack_row_avx2(const float *x, int64_t K, const ActivationQuantizer &q,
                            int64_t n, uint64_t *out, int64_t plane_stride);
// Pixels: the C channels of every pixel of image b of x [B, C, H, W] as ceil(C/64)
// words, for the pixels [p0, p1) of the H*W (hwc im2col, step 1): plane p of pixel
// b*H*W + i at out + p*plane_stride + (b*H*W + i)*ceil(C/64).
void pack_pixels_scalar(const float *x, int64_t channels, int64_t pixels,
                        const ActivationQuantizer &q, int64_t b, int64_t p0, int64_t p1,
                        uint64_t *out, int64_t plane_stride);
void pack_pixels_avx2(const float *x, int64_t channels, int64_t pixels,
                      const ActivationQuantizer &q, int64_t b, int64_t p0, int64_t p1,
                      uint64_t *out, int64_t plane_stride);

// Shared by the per-ISA files; `static` so each keeps its own copy (see pack_signs.h).
namespace pack_activations_detail {

// The code of one element, in the order of operations of the header comment. The
// comparisons send NaN to 0; rounding half to even is done on the integer and
// fractional parts (exact for q <= 255), so it does not depend on the FP environment.
static inline uint32_t quantize_code(float x, float s, float levels) {
    float v = x > 0.0f ? x : 0.0f;
    v = v < s ? v : s;
    const float q = v / s * levels;
    const uint32_t whole = static_cast<uint32_t>(q);
    const float fraction = q - static_cast<float>(whole);
    if (fraction > 0.5f || (fraction == 0.5f && (whole & 1u))) return whole + 1;
    return whole;
}

// The input row (or column) that kernel tap d of output row (column) out_index reads;
// outside [0, height) (or [0, width)) it is zero padding.
static inline int64_t tap(int64_t out_index, int64_t stride, int64_t pad, int64_t d,
                          int64_t dilation) {
    return out_index * stride - pad + d * dilation;
}

}  // namespace pack_activations_detail

}  // namespace apb
