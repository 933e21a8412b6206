r"""How a packed layer reads its input and lays out its output: :class:`ConvGeometry`
(a ``Conv2d``, groups = 1, zero padding) and :class:`LinearGeometry` (a ``Linear``), the
mixins a weight family is combined with.

A geometry turns the input into what the products take: im2col rows (float, or packed
signs / code planes with the unfolding fused into the packing) for a convolution, the
rows themselves for a Linear layer; and it turns the ``[M, N]`` product back into the
layer's output shape.

Convolutions pack their input with im2col; zero padding stays exact: padded positions get
code 0, and a padded ±1 input, which the bits cannot say is 0 (its bit 0 reads +1),
is removed by subtracting :math:`\mathrm{corr}[m, n] = \sum_{j\ \mathrm{padded\ at}\ n}
s_w(m, j)`, computed once per input size (``bgemm_1x2`` of the weights with the padding
mask as a single plane) and cached.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .bits import pack_bits, unpack_bits
from .layer import PackedLayer
from .ops import apb_ops


def int_pair(value, what: str) -> tuple[int, int]:
    """``value`` (an int or a pair of ints) as a pair; ValueError naming ``what`` otherwise."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{what} must be an int or a pair of ints, got {value!r}")
    return pair


class ConvGeometry(PackedLayer):
    """Input packing and output layout of a convolution (groups = 1, zero padding)."""

    def _init_geometry(self, in_channels: int, out_channels: int, kernel_size, stride,
                       padding, dilation) -> None:
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = int_pair(kernel_size, "kernel_size")
        self.stride = int_pair(stride, "stride")
        self.padding = int_pair(padding, "padding")
        self.dilation = int_pair(dilation, "dilation")
        if min(*self.kernel_size, *self.stride, *self.dilation) < 1 or min(self.padding) < 0:
            raise ValueError(
                f"invalid convolution geometry: kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}"
            )
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channels must be positive, got {in_channels} -> {out_channels}")
        self.rows = out_channels
        self.cols = in_channels * self.kernel_size[0] * self.kernel_size[1]

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels, *self.kernel_size)

    def _label(self) -> str:
        kh, kw = self.kernel_size
        return f"{type(self).__name__}({self.in_channels}->{self.out_channels}, {kh}x{kw})"

    def _geometry(self) -> tuple[list[int], list[int], list[int], list[int]]:
        return (list(self.kernel_size), list(self.stride), list(self.padding),
                list(self.dilation))

    def _out_size(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (self.kernel_size, self.stride, self.padding,
                                                  self.dilation)
        return ((h + 2 * ph - dh * (kh - 1) - 1) // sh + 1,
                (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1)

    def _prepare_input(self, x: Tensor):
        self._check_dtype_device(x)
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        if x.dim() != 4:
            raise ValueError(
                f"{self._label()} takes [batch, channels, height, width] (or unbatched "
                f"[channels, height, width]) input, got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self._label()} expects {self.in_channels} input channels, got input of "
                f"shape {tuple(x.shape)}"
            )
        b, _, h, w = x.shape
        oh, ow = self._out_size(h, w)
        if oh < 1 or ow < 1:
            raise ValueError(
                f"{self._label()}: input of spatial size {h}x{w} is smaller than the "
                f"{self.kernel_size} kernel (padding {self.padding}, dilation {self.dilation})"
            )
        x = x.contiguous()

        def restore(y: Tensor) -> Tensor:
            if y.dim() == 4:  # already [B, M, OH, OW] (apb_conv2d writes it so)
                out = y
            elif b == 1:  # [M, 1·OH·OW] is already [1, M, OH, OW] in memory
                out = y.view(1, self.rows, oh, ow)
            else:
                out = y.view(self.rows, b, oh, ow).permute(1, 0, 2, 3).contiguous()
            return out[0] if unbatched else out

        return x, restore

    def _columns(self, x: Tensor, column_order: str = "chw") -> Tensor:
        """im2col rows ``[N, K]`` of a full-precision input, columns ``(c, dy, dx)`` or, for
        ``column_order="hwc"``, ``(dy, dx, c)``."""
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding,
                        stride=self.stride)
        rows = cols.transpose(1, 2).reshape(-1, self.cols)
        if column_order == "hwc":
            taps = self.kernel_size[0] * self.kernel_size[1]
            rows = rows.reshape(-1, self.in_channels, taps).transpose(1, 2).reshape(-1, self.cols)
        return rows.contiguous()

    # The quantized-input packers unfold in (dy, dx, c) column order ("hwc": each input is
    # quantized once, see apb.kernels.activation_packing), so the packed weight rows they
    # meet are kept in that order too, derived from the stored (c, dy, dx) ones.
    def _to_input_order(self, bits: Tensor) -> Tensor:
        """Packed rows ``[..., M, ceil(K/64)]``, columns ``(c, dy, dx)`` → ``(dy, dx, c)``."""
        kh, kw = self.kernel_size
        lead = bits.shape[:-1]
        unpacked = unpack_bits(bits, self.cols).reshape(*lead, self.in_channels, kh, kw)
        return pack_bits(unpacked.movedim(-3, -1).reshape(*lead, self.cols))

    def _init_input_order(self, name: str) -> None:
        """Register ``<name>_hwc``, buffer ``name`` in input column order (not saved; kept
        in step with ``name`` when a state dict is loaded)."""
        self.register_buffer(f"{name}_hwc", self._to_input_order(getattr(self, name)),
                             persistent=False)

        def refresh(module, incompatible_keys):
            setattr(module, f"{name}_hwc", module._to_input_order(getattr(module, name)))
            module._pad_cache.clear()  # computed from the weights just replaced

        self.register_load_state_dict_post_hook(refresh)

    def _input_order_bits(self, name: str) -> Tensor:
        return getattr(self, f"{name}_hwc")

    def _columns_kn(self, x: Tensor) -> Tensor:
        """im2col columns ``[K, N]`` (positions ``(b, oy, ox)``), the sparse product's input."""
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding,
                        stride=self.stride)
        return cols.permute(1, 0, 2).reshape(self.cols, -1).contiguous()

    def _sign_bits(self, x: Tensor) -> Tensor:
        return apb_ops.im2col_pack_signs(x, *self._geometry(), self.backend, "hwc")

    def _code_planes(self, x: Tensor, s: Tensor) -> Tensor:
        return apb_ops.im2col_pack_codes(x, s, self.act_bits, *self._geometry(), self.backend,
                                         "hwc")

    def _signed_dot(self, w_bits: Tensor, x_bits: Tensor, x: Tensor, key: int = 0) -> Tensor:
        """``Σ_j s_w(m, j)·x̂(n, j)`` for ±1 inputs with zero padding: the popcount product
        minus the padded positions' contribution (their bit 0 reads +1). ``w_bits`` in
        input column order."""
        dot = apb_ops.bgemm_1x1(w_bits, x_bits, self.cols, self.backend)
        if max(self.padding) == 0:
            return dot
        b, _, h, w = x.shape
        oh, ow = self._out_size(h, w)
        corr = self._padding_correction(w_bits, h, w, key)
        return (dot.view(self.rows, b, oh * ow) - corr.view(self.rows, 1, oh * ow)).view(
            self.rows, -1)

    def _padding_correction(self, w_bits: Tensor, h: int, w: int, key: int) -> Tensor:
        """``corr[m, l] = Σ_{j padded at output position l} s_w(m, j)``, int32 ``[M, OH·OW]``."""
        compiling = torch.compiler.is_compiling()
        cached = None if compiling else self._pad_cache.get((h, w, key))
        if cached is not None:
            return cached
        ones = torch.ones((1, self.in_channels, h, w), dtype=torch.float32)
        padded = (self._columns(ones, "hwc") == 0).to(torch.uint8)  # [OH·OW, K]
        mask = apb_ops.pack_planes(padded, 1, self.backend)
        corr = apb_ops.bgemm_1x2(w_bits, mask, self.backend)
        if not compiling:  # a traced value must not outlive its trace
            self._pad_cache[(h, w, key)] = corr
        return corr

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"bias={self.bias is not None}, act_bits={self.act_bits}, "
                f"{self._weight_repr()}, backend={self.backend}")


class LinearGeometry(PackedLayer):
    """Input packing and output layout of a fully connected layer."""

    def _init_geometry(self, in_features: int, out_features: int) -> None:
        if in_features < 1 or out_features < 1:
            raise ValueError(f"features must be positive, got {in_features} -> {out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.rows, self.cols = out_features, in_features
        # Set to 2 by fold_batchnorm_ when a BatchNorm1d is folded in: it normalised dim 1,
        # which is this layer's feature axis only for [N, features] input.
        self.fold_input_dims: int | None = None

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_features, self.in_features)

    def _label(self) -> str:
        return f"{type(self).__name__}({self.in_features}->{self.out_features})"

    def _prepare_input(self, x: Tensor):
        rows, lead = self._rows(x), x.shape[:-1]

        def restore(y: Tensor) -> Tensor:
            return y.t().contiguous().reshape(*lead, self.rows)

        return rows, restore

    def _rows(self, x: Tensor) -> Tensor:
        """The input as contiguous rows ``[N, in_features]``, after checking it."""
        self._check_rows(x)
        return x.reshape(-1, self.in_features).contiguous()

    def _rows_array(self, x: Tensor) -> np.ndarray:
        """The same rows as a C-contiguous numpy array, for the direct kernel calls: numpy
        reshapes in a fifth of the time torch takes (1.5 µs), a share of a layer's call."""
        self._check_rows(x)
        a = x.detach().numpy()
        if a.ndim != 2:
            a = a.reshape(-1, self.in_features)
        return a if a.flags.c_contiguous else np.ascontiguousarray(a)

    def _check_rows(self, x: Tensor) -> None:
        """Raises unless ``x`` is a float32 CPU tensor ``[..., in_features]`` (and 2-D with
        a BatchNorm1d folded in)."""
        if not (type(x) is Tensor and x.dtype is torch.float32 and x.is_cpu):
            self._check_dtype_device(x)  # the message; a subclass may pass
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{self._label()} expects inputs whose last dimension is {self.in_features}, "
                f"got shape {tuple(x.shape)}"
            )
        if self.fold_input_dims is not None and self.out_scale is not None and (
                x.dim() != self.fold_input_dims):
            raise ValueError(
                f"{self._label()} has a BatchNorm1d folded in (fold_batchnorm_), which is "
                f"exact for [batch, features] input only, got shape {tuple(x.shape)}; run "
                "the model without folding"
            )

    def _columns(self, x: Tensor) -> Tensor:
        return x

    def _columns_kn(self, x: Tensor) -> Tensor:
        return x.t().contiguous()

    def _init_input_order(self, name: str) -> None:
        """A Linear layer's input columns are its features: the stored order."""

    def _input_order_bits(self, name: str) -> Tensor:
        return getattr(self, name)

    def _sign_bits(self, x: Tensor) -> Tensor:
        return apb_ops.pack_signs(x, self.backend)

    def _code_planes(self, x: Tensor, s: Tensor) -> Tensor:
        return apb_ops.quantize_pack_codes(x, s, self.act_bits, self.backend)

    def _signed_dot(self, w_bits: Tensor, x_bits: Tensor, x: Tensor, key: int = 0) -> Tensor:
        return apb_ops.bgemm_1x1(w_bits, x_bits, self.cols, self.backend)

    def extra_repr(self) -> str:
        inputs = "" if self.input_precision == "exact" else f", inputs={self.input_precision}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, act_bits={self.act_bits}{inputs}, "
                f"{self._weight_repr()}, backend={self.backend}")
