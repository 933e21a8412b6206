r"""Packed inference layers: binary weights as bits, computed with popcount kernels.

:class:`PackedAPBConv2d` / :class:`PackedAPBLinear` hold an APB layer (and the binary
baselines, which are APB with no full-precision weights) as

.. math::

    \hat W = \alpha \odot B + S, \qquad
    y[m, n] = \alpha_m\, c\, \mathrm{dot}[m, n] + (S \otimes \hat x)[m, n] + b_m

with ``B = sign(W)`` bit-packed (bit 1 = −1) in uint64 rows, ``α`` per layer or per output
channel, ``S`` the CSR matrix of the corrections ``W − α sign(W)`` at the full-precision
positions, ``dot`` the integer popcount product of ``B`` with the quantized input and
``c = 1`` for ±1 activations, ``s/L`` for ``k``-bit codes of clip scale ``s``. With
full-precision inputs ``dot`` is the float sign-select product. ``x̂``, the dequantized
input the training layer computed with, feeds ``S``.

:class:`PackedDoReFaConv2d` / :class:`PackedDoReFaLinear` hold DoReFa ``Q``-bit weights
:math:`\hat W = (2c - L_w)/L_w`, :math:`L_w = 2^Q - 1`, as ``Q`` bit-planes of the codes
``c``. The affine map is applied exactly on the integer results:

* ``k``-bit activations ``x̂ = (s/L)·a``:
  :math:`y = \frac{s}{L L_w}\big(2\,\mathrm{dot}_{2\times2}(c, a) - L_w \textstyle\sum_j a_{nj}\big)`;
* ±1 activations and full-precision ones use
  :math:`2c - L_w = -\sum_q 2^q s_q` (``s_q`` the ±1 reading of plane ``q``), i.e. ``Q``
  binary products: :math:`y = -\frac1{L_w}\sum_q 2^q\,\mathrm{dot}(s_q, x̂)`.

Convolutions pack their input with im2col; zero padding stays exact: padded positions get
code 0, and a padded ±1 input, which the bits cannot say is 0 (its bit 0 reads +1),
is removed by subtracting :math:`\mathrm{corr}[m, n] = \sum_{j\ \mathrm{padded\ at}\ n}
s_w(m, j)`, computed once per input size (``bgemm_1x2`` of the weights with the padding
mask as a single plane) and cached.

All buffers, no parameters: packed layers are for inference only. Every forward checks
its input (dtype float32, device CPU, channel / feature count, spatial size) and raises
``TypeError`` / ``ValueError`` saying what was expected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..memory import (
    FP16_BITS,
    FP32_BITS,
    LayerStorage,
    binary_sparse_storage,
    index_bits,
    quantized_storage,
    sparse_storage,
)
from . import ops  # noqa: F401  (registers torch.ops.apb.*)
from .backend import DEFAULT_BACKEND, check_backend
from .reference import activation_codes, pack_bits, unpack_bits, words_for

ACT_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 32)
apb_ops = torch.ops.apb


def _pair(value, what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{what} must be an int or a pair of ints, got {value!r}")
    return pair


def _check_tensor(t: Tensor, name: str, shape: tuple, dtypes: tuple) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        names = " or ".join(str(d) for d in dtypes)
        raise TypeError(f"{name} must have dtype {names}, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    return t.detach().contiguous()


def _check_finite(t: Tensor, name: str) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} holds NaN or Inf values")


INDEX_DTYPES = (torch.uint8, torch.uint16, torch.int32)
INDPTR_DTYPES = (torch.uint8, torch.uint16, torch.int32, torch.int64)


class PackedLayer(nn.Module):
    """What every packed layer shares: input quantization, the output layout, the
    padding correction of ±1 convolution inputs, and the memory accounting.

    Subclasses set ``kind`` (the file format's name), the shape attributes ``rows`` (M)
    and ``cols`` (K), and implement ``_product(x) -> [M, N]`` (bias excluded).
    """

    kind = "?"
    rows: int
    cols: int

    def _init_common(self, *, method: str, act_bits: int, act_scale: Tensor | None,
                     bias: Tensor | None, backend: str | None) -> None:
        if act_bits not in ACT_BITS:
            raise ValueError(f"act_bits must be one of {ACT_BITS}, got {act_bits}")
        self.method = method
        self.act_bits = act_bits
        self.backend = check_backend(backend or DEFAULT_BACKEND)
        if 2 <= act_bits <= 8:
            if act_scale is None:
                raise ValueError(f"{act_bits}-bit activations need their clip scale act_scale")
            act_scale = _check_tensor(act_scale, "act_scale", (1,), (torch.float32,))
            _check_finite(act_scale, "act_scale")
        elif act_scale is not None:
            raise ValueError(f"act_scale is only used by 2..8-bit activations, not {act_bits}")
        self.register_buffer("act_scale", act_scale)
        if bias is not None:
            bias = _check_tensor(bias, "bias", (self.rows,), (torch.float32,))
            _check_finite(bias, "bias")
        self.register_buffer("bias", bias)
        # A folded affine map (BatchNorm, fold_batchnorm_): inference-only, never saved.
        self.register_buffer("out_scale", None, persistent=False)
        self.register_buffer("out_shift", None, persistent=False)
        self._pad_cache: dict[tuple, Tensor] = {}
        self._constants: tuple[tuple, object] | None = None

    # -- what the layer stores (docs/design.md §3) ------------------------------------------------
    def storage(self) -> LayerStorage:
        raise NotImplementedError

    def stored_extras(self) -> list[Tensor]:
        """Tensors the accounting counts outside the layer's weight storage (fp32 each)."""
        return [t for t in (self.bias, self.act_scale) if t is not None]

    @property
    def n_weights(self) -> int:
        return self.rows * self.cols

    # -- activations -----------------------------------------------------------------------
    @property
    def act_levels(self) -> int:
        return (1 << self.act_bits) - 1

    def _clip_scale(self) -> Tensor:
        """``s`` of :class:`apb.nn.UniformActivation` (``clamp_min(1e-8)``, as in training)."""
        return self.act_scale.clamp_min(1e-8)

    def _dequantized(self, x: Tensor) -> Tensor:
        """``x̂``: the quantized input the training layer computed with, as float32."""
        if self.act_bits == 32:
            return x
        if self.act_bits == 1:
            return torch.where(x < 0, -torch.ones_like(x), torch.ones_like(x))
        s = self._clip_scale()
        return activation_codes(x, s, self.act_bits) * (s / self.act_levels)

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        x, restore = self._prepare_input(x)
        return restore(self._output(x))

    def _output(self, x: Tensor) -> Tensor:
        """``[M, N]``: the product, the bias and the folded affine map, if any."""
        y = self._product(x)
        if self.bias is not None:
            y = y + self.bias[:, None]
        if self.out_scale is not None:
            y = y * self.out_scale[:, None] + self.out_shift[:, None]
        return y

    # -- a folded per-channel affine map (inference only) ---------------------------------
    @property
    def folded(self) -> bool:
        """Whether an affine map (a BatchNorm, :func:`apb.pack.fold_batchnorm_`) has been
        folded into the output; such a layer computes the folded model and is not saved."""
        return self.out_scale is not None

    def fold_affine_(self, scale: Tensor, shift: Tensor) -> None:
        """From now on output ``y ↦ scale·y + shift`` per output channel (composed with any
        map folded before). For inference: the saved file keeps the unfolded layer."""
        scale = _check_tensor(scale, "scale", (self.rows,), (torch.float32,))
        shift = _check_tensor(shift, "shift", (self.rows,), (torch.float32,))
        _check_finite(scale, "scale")
        _check_finite(shift, "shift")
        if self.out_scale is not None:
            scale, shift = scale * self.out_scale, scale * self.out_shift + shift
        self.out_scale, self.out_shift = scale.clone(), shift.clone()

    def _epilogue(self, dot_scale: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``(dot_scale, sparse_scale, shift)`` per output channel of the fused kernel:
        ``y = dot_scale·dot + sparse_scale·(S ⊗ x̂) + shift`` is the product of ``α·c·dot +
        S ⊗ x̂``, plus the bias, through the folded map."""
        if self.out_scale is None:
            return dot_scale.expand(self.rows).contiguous(), None, self.bias
        shift = self.out_shift if self.bias is None else self.out_scale * self.bias + self.out_shift
        return (dot_scale * self.out_scale).contiguous(), self.out_scale, shift

    def _constant(self, compute, *tensors: Tensor | None):
        """``compute()``, a function of the buffers ``tensors`` only, computed once and
        reused while none of them is replaced or changed in place (their identity and
        version counter are the key): a few small torch ops per layer and image saved.
        Not cached while torch.compile traces, where a traced value must not outlive its
        trace."""
        if torch.compiler.is_compiling():
            return compute()
        key = tuple((id(t), t._version) if t is not None else None for t in tensors)
        cached = self._constants
        if cached is None or cached[0] != key:
            cached = self._constants = (key, compute())
        return cached[1]

    def _prepare_input(self, x: Tensor):
        raise NotImplementedError

    def _product(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _check_dtype_device(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{self._label()} takes a torch.Tensor, got {type(x).__name__}")
        if x.dtype != torch.float32:
            raise TypeError(
                f"{self._label()} takes float32 input, got {x.dtype}; convert it with .float()"
            )
        if x.device.type != "cpu":
            raise ValueError(
                f"{self._label()} runs on the CPU, got an input on {x.device}; use .cpu()"
            )

    def _label(self) -> str:
        return type(self).__name__

    def set_backend(self, backend: str) -> None:
        self.backend = check_backend(backend)


class _ConvGeometry(PackedLayer):
    """Input packing and output layout of a convolution (groups = 1, zero padding)."""

    def _init_geometry(self, in_channels: int, out_channels: int, kernel_size, stride,
                       padding, dilation) -> None:
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
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
            if b == 1:  # [M, 1·OH·OW] is already [1, M, OH, OW] in memory
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


class _LinearGeometry(PackedLayer):
    """Input packing and output layout of a fully connected layer."""

    def _init_geometry(self, in_features: int, out_features: int) -> None:
        if in_features < 1 or out_features < 1:
            raise ValueError(f"features must be positive, got {in_features} -> {out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.rows, self.cols = out_features, in_features

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_features, self.in_features)

    def _label(self) -> str:
        return f"{type(self).__name__}({self.in_features}->{self.out_features})"

    def _prepare_input(self, x: Tensor):
        self._check_dtype_device(x)
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{self._label()} expects inputs whose last dimension is {self.in_features}, "
                f"got shape {tuple(x.shape)}"
            )
        lead = x.shape[:-1]
        x = x.reshape(-1, self.in_features).contiguous()

        def restore(y: Tensor) -> Tensor:
            return y.t().contiguous().reshape(*lead, self.rows)

        return x, restore

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
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, act_bits={self.act_bits}, "
                f"{self._weight_repr()}, backend={self.backend}")


# -- binary + sparse (APB, BNN) ----------------------------------------------------------
class _PackedAPB(PackedLayer):
    """``Ŵ = α·B + S``; see the module docstring."""

    def _init_weights(self, sign_bits: Tensor, alpha: Tensor, csr, value_bits: int) -> None:
        words = words_for(self.cols)
        sign_bits = _check_tensor(sign_bits, "sign_bits", (self.rows, words), (torch.uint64,))
        if alpha.dim() != 1 or alpha.shape[0] not in (1, self.rows):
            raise ValueError(
                f"alpha must have shape (1,) or ({self.rows},), got {tuple(alpha.shape)}"
            )
        alpha = _check_tensor(alpha, "alpha", tuple(alpha.shape), (torch.float32,))
        _check_finite(alpha, "alpha")
        if value_bits not in (FP32_BITS, FP16_BITS):
            raise ValueError(f"value_bits must be 32 or 16, got {value_bits}")
        self.value_bits = value_bits
        self.register_buffer("sign_bits", sign_bits)
        self.register_buffer("alpha", alpha)
        value_dtype = torch.float32 if value_bits == FP32_BITS else torch.float16
        if csr is None:
            indptr = torch.zeros(self.rows + 1, dtype=torch.uint8)
            indices = torch.zeros(0, dtype=torch.uint8)
            values = torch.zeros(0, dtype=value_dtype)
        else:
            indptr, indices, values = csr
            nnz = values.shape[0] if isinstance(values, Tensor) and values.dim() == 1 else -1
            indptr = _check_tensor(indptr, "csr_indptr", (self.rows + 1,), INDPTR_DTYPES)
            indices = _check_tensor(indices, "csr_indices", (nnz,), INDEX_DTYPES)
            values = _check_tensor(values, "csr_values", (nnz,), (value_dtype,))
            _check_finite(values, "csr_values")
            check_csr(indptr, indices, self.cols)
        self.register_buffer("csr_indptr", indptr)
        self.register_buffer("csr_indices", indices)
        self.register_buffer("csr_values", values)
        self._init_input_order("sign_bits")

    @property
    def nnz(self) -> int:
        return self.csr_values.shape[0]

    def storage(self) -> LayerStorage:
        return binary_sparse_storage(self.rows, self.cols, self.nnz, value_bits=self.value_bits,
                                     n_scalars=self.alpha.shape[0])

    def describe(self) -> dict:
        return {"alpha": float(self.alpha.mean())}

    def _binary_dot(self, x: Tensor, s: Tensor | None) -> Tensor:
        """The binary product ``B ⊗ x̂``: the int32 popcount result, or float32 for
        full-precision inputs (``s``: the clip scale of k-bit codes, else None)."""
        if self.act_bits == 32:
            return apb_ops.bgemm_1xf(self.sign_bits, self._columns(x), self.backend)
        w_bits = self._input_order_bits("sign_bits")
        if self.act_bits == 1:
            return self._signed_dot(w_bits, self._sign_bits(x), x)
        return apb_ops.bgemm_1x2(w_bits, self._code_planes(x, s), self.backend)

    def _product(self, x: Tensor) -> Tensor:
        s = self._clip_scale() if 2 <= self.act_bits <= 8 else None
        dot = self._binary_dot(x, s)
        dot_scale = self.alpha if s is None else self.alpha * (s / self.act_levels)
        y = dot_scale.view(-1, 1) * dot.float()
        if self.nnz:
            y = y + apb_ops.spmm_csr(self.csr_indptr, self.csr_indices, self.csr_values,
                                     self._columns_kn(self._dequantized(x)), self.rows,
                                     self.backend)
        return y

    def _weight_repr(self) -> str:
        scope = "per-channel" if self.alpha.shape[0] > 1 else "per-layer"
        frac = self.nnz / self.n_weights if self.n_weights else 0.0
        return (f"method={self.method}, alpha={scope}, fp_weights={self.nnz} "
                f"({frac:.2%}, fp{self.value_bits})")


class PackedAPBConv2d(_PackedAPB, _ConvGeometry):
    """A packed APB (or binary) ``Conv2d``: sign bits ``[M, ceil(K/64)]``, ``α``, CSR ``S``.

    Build one with :func:`apb.pack.pack_` or :func:`apb.pack.load_packed`; the constructor
    takes the packed tensors themselves and checks that they fit together.
    """

    kind = "apb_conv2d"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, *, stride=1,
                 padding=0, dilation=1, sign_bits: Tensor, alpha: Tensor,
                 csr: tuple[Tensor, Tensor, Tensor] | None = None, value_bits: int = FP32_BITS,
                 bias: Tensor | None = None, act_bits: int = 32, act_scale: Tensor | None = None,
                 method: str = "apb", backend: str | None = None):
        super().__init__()
        self._init_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation)
        self._init_common(method=method, act_bits=act_bits, act_scale=act_scale, bias=bias,
                          backend=backend)
        self._init_weights(sign_bits, alpha, csr, value_bits)

    def _output(self, x: Tensor) -> Tensor:
        """The binary product, then everything after it in one kernel
        (:func:`apb.kernels.sparse_conv2d`): ``S ⊗ x̂`` as a direct sparse convolution of
        ``x`` (no im2col of ``x̂``), ``α·c``, the bias and a folded BatchNorm."""
        s, dot_scale, sparse_scale, shift = self._constant(
            self._fused_scales, self.alpha, self.act_scale, self.bias, self.out_scale,
            self.out_shift,
        )
        dot = self._binary_dot(x, s)
        return apb_ops.sparse_conv2d(
            x, self.csr_indptr, self.csr_indices, self.csr_values, *self._geometry(),
            self.act_bits, s, dot, dot_scale, sparse_scale, shift, self.backend,
        )

    def _fused_scales(self) -> tuple:
        """``(s, dot_scale, sparse_scale, shift)`` of :meth:`_output` (``s``: the clip scale
        of k-bit codes, else None)."""
        s = self._clip_scale() if 2 <= self.act_bits <= 8 else None
        scale = self.alpha if s is None else self.alpha * (s / self.act_levels)
        return (s, *self._epilogue(scale))


class PackedAPBLinear(_PackedAPB, _LinearGeometry):
    """A packed APB (or binary) ``Linear``: sign bits ``[M, ceil(K/64)]``, ``α``, CSR ``S``."""

    kind = "apb_linear"

    def __init__(self, in_features: int, out_features: int, *, sign_bits: Tensor,
                 alpha: Tensor, csr: tuple[Tensor, Tensor, Tensor] | None = None,
                 value_bits: int = FP32_BITS, bias: Tensor | None = None, act_bits: int = 32,
                 act_scale: Tensor | None = None, method: str = "apb",
                 backend: str | None = None):
        super().__init__()
        self._init_geometry(in_features, out_features)
        self._init_common(method=method, act_bits=act_bits, act_scale=act_scale, bias=bias,
                          backend=backend)
        self._init_weights(sign_bits, alpha, csr, value_bits)


# -- DoReFa k-bit weights ----------------------------------------------------------------
class _PackedDoReFa(PackedLayer):
    r"""``Ŵ = (2c − L_w)/L_w`` with the codes ``c`` as bit-planes; see the module docstring."""

    def _init_weights(self, weight_planes: Tensor) -> None:
        if weight_planes.dim() != 3 or not 2 <= weight_planes.shape[0] <= 8:
            raise ValueError(
                f"weight_planes must be [bits (2..8), {self.rows}, {words_for(self.cols)}], "
                f"got shape {tuple(weight_planes.shape)}"
            )
        shape = (weight_planes.shape[0], self.rows, words_for(self.cols))
        self.register_buffer(
            "weight_planes", _check_tensor(weight_planes, "weight_planes", shape, (torch.uint64,))
        )
        self._init_input_order("weight_planes")
        ones = pack_bits(torch.ones(1, 1, self.cols, dtype=torch.uint8))
        self.register_buffer("_ones_plane", ones, persistent=False)

    @property
    def weight_bits(self) -> int:
        return self.weight_planes.shape[0]

    @property
    def weight_levels(self) -> int:
        return (1 << self.weight_bits) - 1

    def storage(self) -> LayerStorage:
        return quantized_storage(self.rows, self.cols, self.weight_bits, n_scalars=0)

    def describe(self) -> dict:
        return {}

    def _product(self, x: Tensor) -> Tensor:
        lw = self.weight_levels
        if 2 <= self.act_bits <= 8:
            s = self._clip_scale()
            planes = self._code_planes(x, s)
            dot = apb_ops.bgemm_2x2(self._input_order_bits("weight_planes"), planes, self.backend)
            code_sums = apb_ops.bgemm_2x2(self._ones_plane, planes, self.backend)
            exact = 2 * dot - lw * code_sums  # Σ_j (2c − L_w)·a, an exact integer
            return (s / self.act_levels / lw) * exact.float()
        # 2c − L_w = −Σ_q 2^q s_q: one binary product per plane
        if self.act_bits == 1:
            x_bits = self._sign_bits(x)
            w_planes = self._input_order_bits("weight_planes")
            dots = [self._signed_dot(w_planes[q], x_bits, x, key=q)
                    for q in range(self.weight_bits)]
        else:
            cols = self._columns(x)
            dots = [apb_ops.bgemm_1xf(self.weight_planes[q], cols, self.backend)
                    for q in range(self.weight_bits)]
        total = dots[0]
        for q in range(1, self.weight_bits):
            total = total + (1 << q) * dots[q]  # exact: integers, or one float rounding each
        return -total.float() / lw

    def _weight_repr(self) -> str:
        return f"method={self.method}, weight_bits={self.weight_bits}"


class PackedDoReFaConv2d(_PackedDoReFa, _ConvGeometry):
    """A packed DoReFa ``Conv2d``: ``Q`` bit-planes of weight codes ``[Q, M, ceil(K/64)]``."""

    kind = "dorefa_conv2d"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, *, stride=1,
                 padding=0, dilation=1, weight_planes: Tensor, bias: Tensor | None = None,
                 act_bits: int = 32, act_scale: Tensor | None = None,
                 backend: str | None = None):
        super().__init__()
        self._init_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation)
        self._init_common(method="dorefa", act_bits=act_bits, act_scale=act_scale, bias=bias,
                          backend=backend)
        self._init_weights(weight_planes)


class PackedDoReFaLinear(_PackedDoReFa, _LinearGeometry):
    """A packed DoReFa ``Linear``: ``Q`` bit-planes of weight codes ``[Q, M, ceil(K/64)]``."""

    kind = "dorefa_linear"

    def __init__(self, in_features: int, out_features: int, *, weight_planes: Tensor,
                 bias: Tensor | None = None, act_bits: int = 32,
                 act_scale: Tensor | None = None, backend: str | None = None):
        super().__init__()
        self._init_geometry(in_features, out_features)
        self._init_common(method="dorefa", act_bits=act_bits, act_scale=act_scale, bias=bias,
                          backend=backend)
        self._init_weights(weight_planes)


# -- pruned k-bit weights (pruning + quantization) ----------------------------------------
class _PackedPruned(PackedLayer):
    r"""``Ŵ = α_m P ⊙ (2c − L)/L`` (:class:`apb.nn.PruneQuantizer`): a keep mask ``P``,
    ``Q``-bit codes ``c`` (``L = 2^Q − 1``; ``Q = 1``: ``c = 1`` is ``+α``, ``c = 0`` is
    ``−α``) and a scale per output channel.

    The products run on the binary kernels: with :math:`s(b) = 1 - 2b`,
    :math:`2c - L = -\sum_q 2^q s(c_q)`, and a pruned position is the mean of a +1 and a
    −1: :math:`P \odot s(c_q) = \tfrac12\,[s(u_q) + s(v_q)]` with
    :math:`u_q = c_q \wedge P`, :math:`v_q = c_q \vee \neg P`. So

    .. math::

        \hat W = -\frac{\alpha_m}{2L} \sum_q 2^q\,[s(u_q) + s(v_q)],

    ``2Q`` binary products whose integer (or float) sum is scaled once. Codes are 0 at
    pruned positions (the canonical form every file holds).
    """

    def _init_weights(self, keep_bits: Tensor, code_planes: Tensor, alpha: Tensor) -> None:
        words = words_for(self.cols)
        keep_bits = _check_tensor(keep_bits, "keep_bits", (self.rows, words), (torch.uint64,))
        if code_planes.dim() != 3 or not 1 <= code_planes.shape[0] <= 8:
            raise ValueError(
                f"code_planes must be [bits (1..8), {self.rows}, {words}], got shape "
                f"{tuple(code_planes.shape)}"
            )
        shape = (code_planes.shape[0], self.rows, words)
        code_planes = _check_tensor(code_planes, "code_planes", shape, (torch.uint64,))
        alpha = _check_tensor(alpha, "alpha", (self.rows,), (torch.float32,))
        _check_finite(alpha, "alpha")
        # bitwise work on int64 views: torch implements few operations for uint64
        valid = pack_bits(torch.ones(1, self.cols, dtype=torch.uint8)).view(torch.int64)
        keep, codes = keep_bits.view(torch.int64), code_planes.view(torch.int64)
        if bool(((keep & ~valid) != 0).any()):
            raise ValueError("keep_bits has bits set past the last column")
        if bool(((codes & ~keep.unsqueeze(0)) != 0).any()):
            raise ValueError("code_planes must be 0 at pruned positions (where keep_bits is 0)")
        self.register_buffer("keep_bits", keep_bits)
        self.register_buffer("code_planes", code_planes)
        self.register_buffer("alpha", alpha)
        # u_q = c_q AND P, v_q = c_q OR NOT P (within the row: padding bits stay 0)
        u = codes & keep
        v = (codes | ~keep) & valid
        self.register_buffer("_u_planes", u.view(torch.uint64), persistent=False)
        self.register_buffer("_v_planes", v.view(torch.uint64), persistent=False)
        self._init_input_order("_u_planes")
        self._init_input_order("_v_planes")

    @property
    def weight_bits(self) -> int:
        return self.code_planes.shape[0]

    @property
    def weight_levels(self) -> int:
        return (1 << self.weight_bits) - 1

    @property
    def nnz(self) -> int:
        return int(bitcount(self.keep_bits))

    def storage(self) -> LayerStorage:
        return sparse_storage(self.rows, self.cols, self.nnz, value_bits=self.weight_bits,
                              n_scalars=self.rows)

    def describe(self) -> dict:
        return {"alpha": float(self.alpha.mean())}

    def _product(self, x: Tensor) -> Tensor:
        if self.act_bits == 32:
            xin = self._columns(x)
        elif self.act_bits == 1:
            xin = self._sign_bits(x)
        else:
            xin = self._code_planes(x, self._clip_scale())
        # full-precision inputs unfold in stored column order, packed ones in input order
        pairs = ((self._u_planes, self._v_planes) if self.act_bits == 32 else
                 (self._input_order_bits("_u_planes"), self._input_order_bits("_v_planes")))
        total = None
        for q in range(self.weight_bits):
            for half, planes in enumerate(pairs):
                if self.act_bits == 32:
                    d = apb_ops.bgemm_1xf(planes[q], xin, self.backend)
                elif self.act_bits == 1:
                    d = self._signed_dot(planes[q], xin, x, key=2 * q + half)
                else:
                    d = apb_ops.bgemm_1x2(planes[q], xin, self.backend)
                d = d * (1 << q) if q else d  # exact: integers, or a power-of-two scaling
                total = d if total is None else total + d
        scale = -self.alpha.view(-1, 1) / (2 * self.weight_levels)
        if 2 <= self.act_bits <= 8:
            scale = scale * (self._clip_scale() / self.act_levels)
        return scale * total.float()

    def _weight_repr(self) -> str:
        frac = 1.0 - self.nnz / self.n_weights if self.n_weights else 0.0
        return (f"method={self.method}, weight_bits={self.weight_bits}, "
                f"sparsity={frac:.2%}")


class PackedPrunedConv2d(_PackedPruned, _ConvGeometry):
    """A packed pruned + quantized ``Conv2d``: keep mask ``[M, ceil(K/64)]``, code bit-planes
    ``[Q, M, ceil(K/64)]`` (0 where pruned), ``α`` per output channel."""

    kind = "pruned_conv2d"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, *, stride=1,
                 padding=0, dilation=1, keep_bits: Tensor, code_planes: Tensor,
                 alpha: Tensor, bias: Tensor | None = None, act_bits: int = 32,
                 act_scale: Tensor | None = None, backend: str | None = None):
        super().__init__()
        self._init_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation)
        self._init_common(method="prune_quant", act_bits=act_bits, act_scale=act_scale,
                          bias=bias, backend=backend)
        self._init_weights(keep_bits, code_planes, alpha)


class PackedPrunedLinear(_PackedPruned, _LinearGeometry):
    """A packed pruned + quantized ``Linear`` (see :class:`PackedPrunedConv2d`)."""

    kind = "pruned_linear"

    def __init__(self, in_features: int, out_features: int, *, keep_bits: Tensor,
                 code_planes: Tensor, alpha: Tensor, bias: Tensor | None = None,
                 act_bits: int = 32, act_scale: Tensor | None = None,
                 backend: str | None = None):
        super().__init__()
        self._init_geometry(in_features, out_features)
        self._init_common(method="prune_quant", act_bits=act_bits, act_scale=act_scale,
                          bias=bias, backend=backend)
        self._init_weights(keep_bits, code_planes, alpha)


def bitcount(words: Tensor) -> Tensor:
    """Set bits of a uint64 tensor, summed (int64)."""
    return unpack_bits(words).sum(dtype=torch.int64)


PACKED_TYPES = (PackedAPBConv2d, PackedAPBLinear, PackedDoReFaConv2d, PackedDoReFaLinear,
                PackedPrunedConv2d, PackedPrunedLinear)


def check_csr(indptr: Tensor, indices: Tensor, cols: int) -> None:
    """Raise ``ValueError`` unless ``(indptr, indices)`` is a canonical CSR structure of a
    matrix with ``cols`` columns: ``indptr[0] = 0``, non-decreasing, ``indptr[-1] = nnz``,
    and each row's column indices strictly increasing and ``< cols``. Checked before any
    kernel sees the arrays."""
    ptr = indptr.to(torch.int64)
    nnz = indices.shape[0]
    if int(ptr[0]) != 0:
        raise ValueError(f"CSR indptr must start at 0, got {int(ptr[0])}")
    steps = ptr.diff()
    if bool((steps < 0).any()):
        row = int((steps < 0).nonzero()[0, 0])
        raise ValueError(f"CSR indptr decreases at row {row}")
    if int(ptr[-1]) != nnz:
        raise ValueError(f"CSR indptr ends at {int(ptr[-1])}, but there are {nnz} values")
    if nnz == 0:
        return
    idx = indices.to(torch.int64)
    if int(idx.min()) < 0 or int(idx.max()) >= cols:
        raise ValueError(
            f"CSR column indices must lie in [0, {cols}), got [{int(idx.min())}, {int(idx.max())}]"
        )
    row_start = torch.zeros(nnz, dtype=torch.bool)
    row_start[ptr[:-1][steps > 0]] = True
    increasing = (idx.diff() > 0) | row_start[1:]
    if not bool(increasing.all()):
        at = int((~increasing).nonzero()[0, 0]) + 1
        raise ValueError(f"CSR column indices are not increasing within a row (entry {at})")


def csr_index_dtype(cols: int) -> torch.dtype:
    """In-memory dtype of the column indices: the accounting's unsigned width (uint8 /
    uint16 / 32 bits) as a type the kernels take (32 bits: int32)."""
    bits = index_bits(max(cols - 1, 0))
    return {8: torch.uint8, 16: torch.uint16}.get(bits, torch.int32)


def csr_indptr_dtype(nnz: int) -> torch.dtype:
    """In-memory dtype of the row pointers: the accounting's width, signed where the
    kernels want it (32 bits: int32, or int64 past 2^31 values; 64 bits: int64)."""
    bits = index_bits(nnz)
    if bits == 32 and nnz < 2**31:
        return torch.int32
    return {8: torch.uint8, 16: torch.uint16}.get(bits, torch.int64)


__all__ = [
    "PACKED_TYPES", "PackedAPBConv2d", "PackedAPBLinear", "PackedDoReFaConv2d",
    "PackedDoReFaLinear", "PackedLayer", "PackedPrunedConv2d", "PackedPrunedLinear",
    "bitcount", "check_csr", "csr_index_dtype", "csr_indptr_dtype",
]
