r"""Pure-torch implementations of the packed-inference kernels (the ``"reference"`` backend).

Same arguments, same bit layout and same results as the compiled kernels of
:mod:`apb.kernels` (docs/design.md §2: bit layout, kernels), written with ordinary torch ops
so that they are obviously right rather than fast: bits are unpacked to ``0/1`` and the
products are float matrix multiplications of small integers, which are exact (every
partial sum is an integer below :math:`2^{24}`, or the product runs in float64).

Layout: that of :mod:`apb.pack.bits` (``W = ceil(K/64)`` uint64 words per row, bit 1
means −1, ``P``-bit codes as bit-planes ``[P, rows, W]``).

Every function returns a new tensor (``spmm_csr`` adds into ``out`` in place, as the
kernel does) and expects CPU tensors; the checks a user needs live in the packed layers
and the file loader, not here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .bits import activation_codes, pack_bits, unpack_bits

_EXACT_FLOAT32 = 1 << 24  # integers up to here are exact in float32
_PANEL_ROWS, _PANEL_GROUP, _PANEL_BYTES = 64, 4, 32  # linear_1xf's panel: see linear_1xf_pack


def _signs(words: torch.Tensor, k: int | None, dtype: torch.dtype) -> torch.Tensor:
    """``s = 1 − 2 b`` as ``dtype``."""
    return 1 - 2 * unpack_bits(words, k).to(dtype)


def _codes(planes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bit-planes ``[P, rows, W]`` → codes ``Σ_p 2^p b_p`` ``[rows, 64 W]`` as ``dtype``."""
    bits = unpack_bits(planes).to(dtype)
    weights = (2 ** torch.arange(planes.shape[0], dtype=dtype)).view(-1, 1, 1)
    return (bits * weights).sum(0)


def _int_matmul(a: torch.Tensor, b: torch.Tensor, bound: int) -> torch.Tensor:
    """``a @ b.T`` of small-integer matrices (built in float64), exact, as int32."""
    if bound < _EXACT_FLOAT32:
        a, b = a.float(), b.float()
    return (a @ b.T).round().to(torch.int32)


# -- packing -------------------------------------------------------------------------------
def pack_signs(x: torch.Tensor) -> torch.Tensor:
    """float32 ``[N, K]`` → uint64 ``[N, W]``, bit = ``x < 0`` (NaN and −0.0 give 0)."""
    return pack_bits(x < 0)


def pack_planes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes ``[N, K]`` (each ``< 2^bits``) → bit-planes uint64 ``[bits, N, W]``."""
    planes = torch.stack([(codes >> p) & 1 for p in range(bits)])
    return pack_bits(planes)


def quantize_pack_codes(x: torch.Tensor, scale: torch.Tensor | float, bits: int) -> torch.Tensor:
    """float32 ``[N, K]`` → bit-planes of its ``bits``-bit activation codes ``[bits, N, W]``."""
    codes = torch.nan_to_num(activation_codes(x, scale, bits), nan=0.0)
    return pack_planes(codes.to(torch.uint8), bits)


def conv_out_size(size, k: int, s: int, p: int, d: int):
    """Output rows (or columns) of a convolution over ``size`` input rows, as
    ``torch.nn.Conv2d`` computes them."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _unfold_rows(x: torch.Tensor, kernel_size, stride, padding, dilation,
                 column_order: str = "chw") -> torch.Tensor:
    """im2col: ``[B, C, H, W]`` → ``[B·OH·OW, C·kh·kw]``, rows ``(b, oy, ox)``, columns
    ``(c, dy, dx)`` (``column_order="chw"``) or ``(dy, dx, c)`` (``"hwc"``), zero padding."""
    cols = F.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)
    rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    if column_order == "hwc":
        taps = kernel_size[0] * kernel_size[1]
        rows = rows.reshape(-1, x.shape[1], taps).transpose(1, 2).reshape(-1, cols.shape[1])
    return rows


def im2col_pack_signs(x, kernel_size, stride, padding, dilation,
                      column_order: str = "chw") -> torch.Tensor:
    """Convolution input ``[B, C, H, W]`` → sign bits of its im2col rows ``[N, W]``; a padded
    position is 0, so its bit is 0 (+1): the layer subtracts a correction for it."""
    return pack_signs(_unfold_rows(x, kernel_size, stride, padding, dilation, column_order))


def im2col_pack_codes(x, scale, bits, kernel_size, stride, padding, dilation,
                      column_order: str = "chw") -> torch.Tensor:
    """Convolution input → bit-planes of the activation codes of its im2col rows
    ``[bits, N, W]``; padded positions get code 0 (exactly the value 0)."""
    codes = torch.nan_to_num(activation_codes(x, scale, bits), nan=0.0)
    rows = _unfold_rows(codes, kernel_size, stride, padding, dilation, column_order)
    return pack_planes(rows.to(torch.uint8), bits)


def quantized_input(x: torch.Tensor, act_bits: int, scale) -> torch.Tensor:
    """``x̂`` as the training layer computes it: ``x`` (32 bits), ``sign(x)`` with
    ``sign(0) = +1`` (1 bit), ``code·(s/L)`` (2..8 bits; NaN gives code 0, as the packers)."""
    if act_bits == 32:
        return x
    if act_bits == 1:
        return torch.where(x < 0, -torch.ones_like(x), torch.ones_like(x))
    s = torch.as_tensor(scale, dtype=torch.float32)
    codes = torch.nan_to_num(activation_codes(x, s, act_bits), nan=0.0)
    return codes * (s / ((1 << act_bits) - 1))


# -- products ------------------------------------------------------------------------------
def bgemm_1x1(w: torch.Tensor, x: torch.Tensor, k: int) -> torch.Tensor:
    """``out[m, n] = k − 2·popcount(w[m] XOR x[n]) = Σ_j s_w(m, j) s_x(n, j)``, int32 ``[M, N]``."""
    return _int_matmul(_signs(w, k, torch.float64), _signs(x, k, torch.float64), k)


def bgemm_1x2(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``out[m, n] = Σ_j s_w(m, j)·code_x(n, j)`` for ``x`` bit-planes ``[P, N, W]``, int32."""
    k = w.shape[1] * 64  # padding bits are 0 in x, so they add 0
    bound = k * ((1 << x.shape[0]) - 1)
    return _int_matmul(_signs(w, None, torch.float64), _codes(x, torch.float64), bound)


def bgemm_2x2(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``out[m, n] = Σ_j code_w(m, j)·code_x(n, j)`` for bit-planes ``w [Q, M, W]``,
    ``x [P, N, W]``, int32 ``[M, N]``."""
    k = w.shape[2] * 64
    bound = k * ((1 << w.shape[0]) - 1) * ((1 << x.shape[0]) - 1)
    return _int_matmul(_codes(w, torch.float64), _codes(x, torch.float64), bound)


def bgemm_1xf(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``out[m, n] = Σ_j s_w(m, j)·x[n, j]``: binary weights ``[M, W]`` times float32
    activations ``[N, K]``, float32 ``[M, N]``."""
    return _signs(w, x.shape[1], torch.float32) @ x.T


def _panel_slots() -> tuple[torch.Tensor, torch.Tensor]:
    """``(byte, high)`` int64 ``[64]``: where row ``r`` of a panel tile keeps its 4-bit
    index in each group's 32 bytes (byte, and 1 for the high nibble), the layout of
    ``csrc/linear_1xf.h`` (``panel_slot``)."""
    r = torch.arange(_PANEL_ROWS)
    high, p, parity, lane = r // 32, (r // 16) % 2, (r // 8) % 2, r % 8
    j = 2 * lane + parity
    byte = torch.where(j < 8, 8 * p + j, 16 + 8 * p + (j - 8))
    return byte, high


def linear_1xf_pack(sign_bits: torch.Tensor, k: int) -> torch.Tensor:
    """Sign rows uint64 ``[M, ceil(k/64)]`` → the panel of :func:`linear_1xf`, uint8
    ``[ceil(M/64), ceil(k/4), 32]``: per tile of 64 rows and group ``q`` of 4 columns, row
    ``r``'s nibble ``Σ_c 2^c b[r, 4q + c]`` at :func:`_panel_slots` (rows past ``M`` and
    columns past ``k`` are 0)."""
    m = sign_bits.shape[0]
    tiles, groups = -(-m // _PANEL_ROWS), -(-k // _PANEL_GROUP)
    bits = torch.zeros((tiles * _PANEL_ROWS, groups * _PANEL_GROUP), dtype=torch.int64)
    bits[:m, :k] = unpack_bits(sign_bits, k).to(torch.int64)
    nibbles = (bits.view(tiles, _PANEL_ROWS, groups, _PANEL_GROUP)
               << torch.arange(_PANEL_GROUP)).sum(-1)  # [T, 64, Q]
    byte, high = _panel_slots()
    panel = torch.zeros((tiles, _PANEL_BYTES, groups), dtype=torch.int64)
    panel.index_add_(1, byte, nibbles << (4 * high).view(1, -1, 1))
    return panel.transpose(1, 2).to(torch.uint8).contiguous()


def _panel_signs(panel: torch.Tensor, m: int, k: int) -> torch.Tensor:
    """The ±1 weights ``[m, k]`` (float64) a :func:`linear_1xf_pack` panel holds."""
    tiles, groups, _ = panel.shape
    byte, high = _panel_slots()
    nibbles = (panel.to(torch.int64)[:, :, byte] >> (4 * high)) & 15  # [T, Q, 64]
    bits = (nibbles.unsqueeze(-1) >> torch.arange(_PANEL_GROUP)) & 1  # [T, Q, 64, 4]
    rows = bits.permute(0, 2, 1, 3).reshape(tiles * _PANEL_ROWS, groups * _PANEL_GROUP)
    return 1 - 2 * rows[:m, :k].to(torch.float64)


def int8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, scales)`` of :func:`linear_1xf`'s symmetric per-row int8 quantization, in
    float32 as the kernels compute it: ``s_n = amax_n / 127``, ``codes = clip(rint(x ·
    (127 / amax_n)), −127, 127)`` (ties to even); a row with Inf/NaN gets ``s = NaN``, a
    row with ``amax < 1e-36`` ``s = 0``, both codes 0."""
    amax = x.abs().amax(dim=1) if x.shape[1] else x.new_zeros(x.shape[0])
    finite = torch.isfinite(x).all(dim=1)
    usable = finite & (amax >= 1e-36)
    safe = torch.where(usable, amax, torch.ones_like(amax))
    codes = torch.round(x * (127.0 / safe)[:, None]).clamp(-127, 127)
    codes = torch.where(usable[:, None], codes, torch.zeros_like(codes))
    scales = torch.where(usable, safe / 127.0, torch.zeros_like(amax))
    return codes, torch.where(finite, scales, torch.full_like(scales, float("nan")))


def linear_1xf(x: torch.Tensor, panel: torch.Tensor, alpha: torch.Tensor, out_features: int,
               indptr: torch.Tensor | None, indices: torch.Tensor | None,
               values: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """float32 ``[N, M]``: ``float32(D[n, m])·(α_m·s_n) + (S x)[n, m] + bias_m`` with
    ``D = codes @ signsᵀ`` the exact integer product of :func:`int8_rows` codes and the
    panel's signs (float64), ``S`` the optional CSR matrix ``(indptr, indices, values)``."""
    codes, scales = int8_rows(x)
    signs = _panel_signs(panel, out_features, x.shape[1])
    d = (codes.to(torch.float64) @ signs.T).float()
    y = d * (alpha[None, :] * scales[:, None])
    if indptr is not None:
        sparse = torch.zeros((out_features, x.shape[0]), dtype=torch.float32)
        spmm_csr(indptr, indices, values, x.T, sparse)
        y = y + sparse.T
    if bias is not None:
        y = y + bias
    return y


def spmm_csr(
    indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, x: torch.Tensor,
    out: torch.Tensor,
) -> None:
    """In place: ``out[m, :] += Σ_{e ∈ indptr[m]..indptr[m+1]} values[e]·x[indices[e], :]``
    for ``x`` float32 ``[K, N]`` and ``out`` float32 ``[M, N]``."""
    counts = indptr.to(torch.int64).diff()
    rows = torch.repeat_interleave(torch.arange(out.shape[0]), counts)
    out.index_add_(0, rows, values.float()[:, None] * x[indices.to(torch.int64)])


def sparse_conv2d(x, indptr, indices, values, kernel_size, stride, padding, dilation,
                  act_bits, scale, dot, dot_scale, sparse_scale, shift) -> torch.Tensor:
    """float32 ``[M, B·OH·OW]``: ``dot_scale·dot + sparse_scale·(S ⊛ x̂) + shift`` per output
    channel, with ``S ⊛ x̂`` the CSR matrix times the unfolded ``x̂`` (absent terms 0, absent
    scales 1)."""
    columns = _unfold_rows(quantized_input(x, act_bits, scale), kernel_size, stride, padding,
                           dilation)
    out = torch.zeros((indptr.shape[0] - 1, columns.shape[0]), dtype=torch.float32)
    spmm_csr(indptr, indices, values, columns.T, out)
    if sparse_scale is not None:
        out = out * sparse_scale[:, None]
    if dot is not None:
        out = out + dot_scale[:, None] * dot.float()
    if shift is not None:
        out = out + shift[:, None]
    return out


def apb_conv2d(x, sign_rows, indptr, indices, values, kernel_size, stride, padding, dilation,
               act_bits, scale, padding_correction, dot_scale, sparse_scale, shift):
    """The packed convolution with 1..8-bit inputs, as the three kernels it fuses: the
    hwc im2col packing, the binary product (minus ``padding_correction`` per batch item for
    ±1 inputs) and :func:`sparse_conv2d` with that product as ``dot``; float32
    ``[B, M, OH, OW]``."""
    if act_bits == 1:
        bits = im2col_pack_signs(x, kernel_size, stride, padding, dilation, "hwc")
        dot = bgemm_1x1(sign_rows, bits, x.shape[1] * kernel_size[0] * kernel_size[1])
        if padding_correction is not None:
            m, positions = padding_correction.shape
            dot = (dot.view(m, -1, positions) - padding_correction[:, None]).view(m, -1)
    else:
        bits = im2col_pack_codes(x, scale, act_bits, kernel_size, stride, padding, dilation,
                                 "hwc")
        dot = bgemm_1x2(sign_rows, bits)
    out = sparse_conv2d(x, indptr, indices, values, kernel_size, stride, padding, dilation,
                        act_bits, scale, dot, dot_scale, sparse_scale, shift)
    oh, ow = (conv_out_size(x.shape[2 + i], kernel_size[i], stride[i], padding[i], dilation[i])
              for i in range(2))
    return out.view(out.shape[0], x.shape[0], oh, ow).permute(1, 0, 2, 3).contiguous()


def apb_linear(x, sign_rows, indptr, indices, values, act_bits, scale, dot_scale, sparse_scale,
               shift):
    """The packed Linear layer with 1..8-bit inputs, float32 ``[N, M]``: the binary product
    of the packed rows, ``S ⊗ x̂`` and the epilogue of :func:`sparse_conv2d`."""
    if act_bits == 1:
        dot = bgemm_1x1(sign_rows, pack_signs(x), x.shape[1])
    else:
        dot = bgemm_1x2(sign_rows, quantize_pack_codes(x, scale, act_bits))
    sparse = torch.zeros((indptr.shape[0] - 1, x.shape[0]), dtype=torch.float32)
    spmm_csr(indptr, indices, values, quantized_input(x, act_bits, scale).T, sparse)
    if sparse_scale is not None:
        sparse = sparse * sparse_scale[:, None]
    out = sparse + dot_scale[:, None] * dot.float()
    if shift is not None:
        out = out + shift[:, None]
    return out.T.contiguous()
