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

// Codes of up to kMaxThresholdPlanes planes can be decided by comparisons alone: the
// code is a non-decreasing function of x (max, min, a correctly rounded division and
// product, and rounding are all monotone), so code(x) >= k exactly when x >= T_k, the
// smallest float whose code is k or more. L comparisons then replace the division,
// the slowest step of the AVX2 packers (docs/performance.md).
constexpr int kMaxThresholdPlanes = 3;

// What to write per element: one sign plane, or `planes` code planes.
struct ActivationQuantizer {
    bool signs;
    int planes;    // 1 for signs; P in [1, 8] for codes
    float scale;   // s > 0, finite (codes only)
    float levels;  // L = 2^P - 1 (codes only)
    // thresholds[k - 1] = T_k for k = 1 .. L (codes of at most kMaxThresholdPlanes
    // planes only): code(x) = #{k : x >= T_k}, NaN giving 0 as it fails every test.
    float thresholds[(1 << kMaxThresholdPlanes) - 1];
};

// Throws std::invalid_argument unless 1 <= bits <= 8 and scale is finite and > 0.
ActivationQuantizer code_quantizer(double scale, int64_t bits);
ActivationQuantizer sign_quantizer();

// Column order of the im2col rows:
//   chw: j = (c*kh + dy)*kw + dx, as weight.reshape(M, -1) of a Conv2d weight [M, C, kh, kw];
//   hwc: j = (dy*kw + dx)*C + c, as the weight permuted to [M, kh, kw, C].
// hwc is the fast one: every input is quantized once, into per-pixel strings of C bits,
// and the unfolding then only moves those bits (runs of whole bytes when C % 8 == 0),
// instead of quantizing each input kh*kw times (pack_activations_hwc.cpp).
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
// Where the hwc im2col keeps the packed pixels (step 1): image rows with a zero border
// on both sides, so that step 2 copies every tap without testing whether it lies in
// the padding. Plane p, image b, input row y, column x (-border <= x < W + border)
// starts at byte p*plane_bytes + (b*H + y)*row_bytes + lead_bytes + x*pixel_bytes and
// holds the pixel's C bits in little-endian order, zero past C.
struct PixelLayout {
    int64_t width;        // W
    int64_t pixel_bytes;  // C/8 when C % 8 == 0 and C < 64 (pixels packed densely, so
                          // that a kernel row of taps is one run), else 8*ceil(C/64)
    int64_t lead_bytes;   // the left border
    int64_t row_bytes;    // a multiple of 8, with at least 8 bytes after the last pixel
    int64_t plane_bytes;
};

// Pixels [p0, p1) of the H*W of image b of x [B, C, H, W] (p0 and p1 at the start of
// an image row or p1 = H*W) into `out` as `layout` says; the borders are the caller's.
// May write zeros over the 8 - pixel_bytes bytes after a pixel, never past its row.
void pack_pixels_scalar(const float *x, int64_t channels, int64_t pixels,
                        const ActivationQuantizer &q, const PixelLayout &layout, int64_t b,
                        int64_t p0, int64_t p1, unsigned char *out);
void pack_pixels_avx2(const float *x, int64_t channels, int64_t pixels,
                      const ActivationQuantizer &q, const PixelLayout &layout, int64_t b,
                      int64_t p0, int64_t p1, unsigned char *out);

using PackPixelsFn = void (*)(const float *, int64_t, int64_t, const ActivationQuantizer &,
                              const PixelLayout &, int64_t, int64_t, int64_t, unsigned char *);

// The hwc im2col (pack_activations_hwc.cpp) with the pixel packer of the active ISA.
void im2col_pack_hwc(const float *x, const Conv2dGeometry &g, const ActivationQuantizer &q,
                     PackPixelsFn pack_pixels, uint64_t *out);

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
