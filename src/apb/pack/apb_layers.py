r"""Packed APB layers: binary weights as bits plus a sparse full-precision part, computed
with popcount kernels (docs/design.md §2).

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
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..kernels import direct
from ..memory import FP16_BITS, FP32_BITS, LayerStorage, binary_sparse_storage
from .bits import words_for
from .csr import INDEX_DTYPES, INDPTR_DTYPES, check_csr
from .geometry import ConvGeometry, LinearGeometry
from .layer import PackedLayer, check_finite, check_input_precision, check_tensor
from .ops import apb_ops


class _PackedAPB(PackedLayer):
    """``Ŵ = α·B + S``; see the module docstring."""

    def _init_weights(self, sign_bits: Tensor, alpha: Tensor, csr, value_bits: int) -> None:
        words = words_for(self.cols)
        sign_bits = check_tensor(sign_bits, "sign_bits", (self.rows, words), (torch.uint64,))
        if alpha.dim() != 1 or alpha.shape[0] not in (1, self.rows):
            raise ValueError(
                f"alpha must have shape (1,) or ({self.rows},), got {tuple(alpha.shape)}"
            )
        alpha = check_tensor(alpha, "alpha", tuple(alpha.shape), (torch.float32,))
        check_finite(alpha, "alpha")
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
            indptr = check_tensor(indptr, "csr_indptr", (self.rows + 1,), INDPTR_DTYPES)
            indices = check_tensor(indices, "csr_indices", (nnz,), INDEX_DTYPES)
            values = check_tensor(values, "csr_values", (nnz,), (value_dtype,))
            check_finite(values, "csr_values")
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

    def _fused_scales(self) -> tuple:
        """``(s, dot_scale, sparse_scale, shift)`` of the fused kernels (``s``: the clip
        scale of k-bit codes, else None)."""
        s = self._clip_scale() if 2 <= self.act_bits <= 8 else None
        scale = self.alpha if s is None else self.alpha * (s / self.act_levels)
        return (s, *self._epilogue(scale))

    def _scales(self) -> tuple:
        return self._constant(self._fused_scales, self.alpha, self.act_scale, self.bias,
                              self.out_scale, self.out_shift)

    def _direct_args(self) -> tuple:
        """What the direct fused kernels take after the input, computed once per state of
        the buffers: numpy views of the sign rows (in input column order) and the CSR
        arrays, the clip scale as a float, the epilogue's vectors."""
        b = self._buffers
        key = (b["sign_bits"], b["csr_indptr"], b["csr_indices"], b["csr_values"], b["alpha"],
               b["act_scale"], b["bias"], b["out_scale"], b["out_shift"])
        return self._constant(self._numpy_args, *key)

    def _numpy_args(self) -> tuple:
        s, dot_scale, sparse_scale, shift = self._scales()
        views = [None if t is None else t.detach().numpy() for t in (
            self._input_order_bits("sign_bits"), self.csr_indptr, self.csr_indices,
            self.csr_values, dot_scale, sparse_scale, shift)]
        return (*views[:4], 1.0 if s is None else float(s), *views[4:])

    def _weight_repr(self) -> str:
        scope = "per-channel" if self.alpha.shape[0] > 1 else "per-layer"
        frac = self.nnz / self.n_weights if self.n_weights else 0.0
        return (f"method={self.method}, alpha={scope}, fp_weights={self.nnz} "
                f"({frac:.2%}, fp{self.value_bits})")


class PackedAPBConv2d(_PackedAPB, ConvGeometry):
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

    def forward(self, x: Tensor) -> Tensor:
        if self.act_bits == 32 or not self._eager(x):
            return super().forward(x)
        x, restore = self._prepare_input(x)
        w, indptr, indices, values, s, dot_scale, sparse_scale, shift = self._direct_args()
        corr = self._sign_padding(x)
        if corr is not None:
            corr = corr.numpy()
        y = direct.apb_conv2d(x.detach().numpy(), w, indptr, indices, values, self.kernel_size,
                              self.stride, self.padding, self.dilation, self.act_bits, s, corr,
                              dot_scale, sparse_scale, shift)
        return restore(torch.from_numpy(y))

    def _output(self, x: Tensor) -> Tensor:
        """The binary product, then everything after it in one kernel
        (:func:`apb.kernels.sparse_conv2d`): ``S ⊗ x̂`` as a direct sparse convolution of
        ``x`` (no im2col of ``x̂``), ``α·c``, the bias and a folded BatchNorm. With
        quantized inputs all of it is one call (``apb_conv2d``): each call into the
        extension costs about as much as a small layer's kernels."""
        s, dot_scale, sparse_scale, shift = self._scales()
        if self.act_bits == 32:
            return apb_ops.sparse_conv2d(
                x, self.csr_indptr, self.csr_indices, self.csr_values, *self._geometry(),
                self.act_bits, s, self._binary_dot(x, s), dot_scale, sparse_scale, shift,
                self.backend,
            )
        return apb_ops.apb_conv2d(
            x, self._input_order_bits("sign_bits"), self.csr_indptr, self.csr_indices,
            self.csr_values, *self._geometry(), self.act_bits, s, self._sign_padding(x),
            dot_scale, sparse_scale, shift, self.backend,
        )

    def _sign_padding(self, x: Tensor) -> Tensor | None:
        """The padding correction of ±1 inputs (:meth:`_signed_dot`), or None: codes pad
        with 0 exactly."""
        if self.act_bits != 1 or max(self.padding) == 0:
            return None
        return self._padding_correction(self._input_order_bits("sign_bits"), x.shape[2],
                                        x.shape[3], 0)


class PackedAPBLinear(_PackedAPB, LinearGeometry):
    r"""A packed APB (or binary) ``Linear``: sign bits ``[M, ceil(K/64)]``, ``α``, CSR ``S``.

    With full-precision inputs (``act_bits = 32``) it computes exactly by default (float
    sign-select, ``bgemm_1xf``, then ``spmm_csr``). :meth:`set_input_precision` ``("int8")``
    switches it to the fast path of :func:`apb.kernels.linear_1xf`, one kernel call from
    ``x [..., K]`` to ``y [..., M]``:

    .. math::

        y_n = a\,\alpha\, s_n\,(B \otimes q_n) + a\,(S \otimes x_n) + a\,b + b',
        \qquad q_n = \mathrm{clip}(\mathrm{rint}(x_n / s_n), -127, 127),\ s_n = \max|x_n|/127

    (``a``, ``b'``: a folded BatchNorm, else 1 and 0). Only ``x``'s rounding to ``q_n`` is
    approximate: about 1 % relative error on the binary part. The weights then run from a
    panel (:func:`apb.kernels.linear_1xf_pack`), a non-persistent buffer derived from the
    sign bits when the switch is made and after a state dict is loaded; it is never saved,
    and the precision is a run-time choice, not part of the file.
    """

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
        self.register_buffer("linear_1xf_panel", None, persistent=False)
        self.register_load_state_dict_post_hook(_refresh_panel)

    @property
    def takes_int8_inputs(self) -> bool:
        return self.act_bits == 32

    def set_input_precision(self, precision: str) -> None:
        if check_input_precision(precision) == "int8" and not self.takes_int8_inputs:
            super().set_input_precision(precision)  # raises, saying why
        self.input_precision = precision
        self.linear_1xf_panel = None
        if precision == "int8":
            self.linear_1xf_panel = apb_ops.linear_1xf_pack(self.sign_bits, self.cols,
                                                            self.backend)

    def forward(self, x: Tensor) -> Tensor:
        if self.act_bits <= 8:  # quantized inputs: one kernel call (apb_linear)
            if self._eager(x):
                w, indptr, indices, values, s, dot_scale, sparse_scale, shift = (
                    self._direct_args())
                y = torch.from_numpy(direct.apb_linear(self._rows_array(x), w, indptr,
                                                       indices, values, self.act_bits, s,
                                                       dot_scale, sparse_scale, shift))
            else:
                s, dot_scale, sparse_scale, shift = self._scales()
                y = apb_ops.apb_linear(self._rows(x), self.sign_bits, self.csr_indptr,
                                       self.csr_indices, self.csr_values, self.act_bits, s,
                                       dot_scale, sparse_scale, shift, self.backend)
            return self._leading(y, x)
        if self.input_precision == "exact":
            return super().forward(x)
        # Buffers read from the dict: nn.Module.__getattr__ costs ~0.6 µs a read, a tenth
        # of this layer's kernel time on one token.
        b = self._buffers
        if self._eager(x):
            args = self._constant(self._linear_1xf_args, b["linear_1xf_panel"], b["alpha"],
                                  b["csr_indptr"], b["csr_indices"], b["csr_values"],
                                  b["bias"], b["out_scale"], b["out_shift"])
            return self._leading(torch.from_numpy(direct.linear_1xf(self._rows_array(x),
                                                                    *args)), x)
        rows = self._rows(x)
        if b["out_scale"] is None:
            alpha, values, bias = b["alpha"], b["csr_values"], b["bias"]
        else:
            alpha, values, bias = self._constant(self._folded_epilogue, b["alpha"],
                                                 b["csr_values"], b["bias"], b["out_scale"],
                                                 b["out_shift"])
        sparse = ((b["csr_indptr"], b["csr_indices"], values) if values.shape[0]
                  else (None, None, None))
        y = apb_ops.linear_1xf(rows, b["linear_1xf_panel"], alpha, self.rows, *sparse, bias,
                               self.backend)
        return self._leading(y, x)

    def _leading(self, y: Tensor, x: Tensor) -> Tensor:
        """``y [N, M]`` with the leading dimensions of the input ``x [..., K]``."""
        return y if x.dim() == 2 else y.view(*x.shape[:-1], self.rows)

    def _linear_1xf_args(self) -> tuple:
        """:func:`apb.kernels.direct.linear_1xf`'s arguments after the input, as numpy
        views: the panel, α, M, the CSR part (or None) and the bias, a folded BatchNorm
        multiplied in."""
        alpha, values, bias = ((self.alpha, self.csr_values, self.bias) if self.out_scale is None
                               else self._folded_epilogue())
        sparse = (self.csr_indptr, self.csr_indices, values) if self.nnz else (None,) * 3
        view = lambda t: None if t is None else t.detach().numpy()  # noqa: E731
        return (view(self.linear_1xf_panel), view(alpha), self.rows, *map(view, sparse),
                view(bias))

    def _folded_epilogue(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(α, S values, bias)`` of :func:`apb.kernels.linear_1xf` with the folded map
        ``y ↦ a·y + b'`` multiplied in: ``a·α``, ``a_m·S[m, :]`` (float32), ``a·bias + b'``."""
        a, values = self.out_scale, self.csr_values
        rows = torch.repeat_interleave(torch.arange(self.rows),
                                       self.csr_indptr.to(torch.int64).diff(),
                                       output_size=self.nnz)
        values = (values.float() * a[rows]).contiguous()
        shift = self.out_shift if self.bias is None else a * self.bias + self.out_shift
        return (self.alpha * a).contiguous(), values, shift.contiguous()


def _refresh_panel(layer: PackedAPBLinear, incompatible_keys) -> None:
    """After ``load_state_dict``: the panel of the sign bits just loaded, if one is kept."""
    if layer.linear_1xf_panel is not None:
        layer.set_input_precision(layer.input_precision)
