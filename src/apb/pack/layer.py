r"""What every packed layer shares: :class:`PackedLayer`, and the checks of the tensors
it is built from.

A packed layer holds a trained compressed layer's weights as bits and a few scales, and
computes ``y = W·x̂ + b`` with the popcount kernels: the weight families
(:mod:`apb.pack.apb_layers`, :mod:`apb.pack.dorefa_layers`, :mod:`apb.pack.pruned_layers`)
give the product, the geometry mixins (:mod:`apb.pack.geometry`) the input packing and
output layout of a convolution or a fully connected layer, and this base class the rest:
input quantization, bias, a folded BatchNorm, the memory accounting.

All buffers, no parameters: packed layers are for inference only. Every forward checks
its input (dtype float32, device CPU, channel / feature count, spatial size) and raises
``TypeError`` / ``ValueError`` saying what was expected.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..memory import LayerStorage
from .backend import DEFAULT_BACKEND, check_backend
from .bits import activation_codes

ACT_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 32)
"""Activation precisions a packed layer takes: ±1, 2..8-bit codes, or float32."""

INPUT_PRECISIONS = ("exact", "int8")
"""How a layer with float32 inputs (``act_bits = 32``) computes: ``"exact"`` (the float
product, the training model's output to float rounding; the default) or ``"int8"`` (each
input row quantized to int8 codes, symmetric per row, then an exact integer product:
about 1 % relative error, several times faster; :func:`apb.pack.set_input_precision`)."""


def check_input_precision(precision: str) -> str:
    if precision not in INPUT_PRECISIONS:
        raise ValueError(f"unknown input precision {precision!r}; choose one of "
                         f"{', '.join(INPUT_PRECISIONS)}")
    return precision


def check_tensor(t: Tensor, name: str, shape: tuple, dtypes: tuple) -> Tensor:
    """``t`` detached and contiguous, after checking that it is a tensor of ``shape`` and one
    of ``dtypes`` (TypeError / ValueError naming ``name`` otherwise)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        names = " or ".join(str(d) for d in dtypes)
        raise TypeError(f"{name} must have dtype {names}, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    return t.detach().contiguous()


def check_finite(t: Tensor, name: str) -> None:
    """ValueError if floating-point ``t`` holds NaN or Inf."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} holds NaN or Inf values")


class PackedLayer(nn.Module):
    """What every packed layer shares: input quantization, the output epilogue (bias, a
    folded affine map), cached constants, and the memory accounting.

    A concrete layer is a weight family and a geometry (``PackedAPBConv2d(_PackedAPB,
    ConvGeometry)``). The geometry sets the shape attributes ``rows`` (M) and ``cols`` (K)
    and implements ``_prepare_input``; the family sets ``kind`` (the file format's name)
    and implements ``_product(x) -> [M, N]`` (bias excluded) and ``storage()``.
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
            act_scale = check_tensor(act_scale, "act_scale", (1,), (torch.float32,))
            check_finite(act_scale, "act_scale")
        elif act_scale is not None:
            raise ValueError(f"act_scale is only used by 2..8-bit activations, not {act_bits}")
        self.register_buffer("act_scale", act_scale)
        if bias is not None:
            bias = check_tensor(bias, "bias", (self.rows,), (torch.float32,))
            check_finite(bias, "bias")
        self.register_buffer("bias", bias)
        # A folded affine map (BatchNorm, fold_batchnorm_): inference-only, never saved.
        self.register_buffer("out_scale", None, persistent=False)
        self.register_buffer("out_shift", None, persistent=False)
        self._pad_cache: dict[tuple, Tensor] = {}
        self._constants: dict[str, tuple[tuple, object]] = {}

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
        scale = check_tensor(scale, "scale", (self.rows,), (torch.float32,))
        shift = check_tensor(shift, "shift", (self.rows,), (torch.float32,))
        check_finite(scale, "scale")
        check_finite(shift, "shift")
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
        version counter are the key; one entry per ``compute`` name): a few small torch ops
        per layer and image saved. Not cached while torch.compile traces, where a traced
        value must not outlive its trace."""
        if torch.compiler.is_compiling():
            return compute()
        key = [None if t is None else (id(t), t._version) for t in tensors]
        cached = self._constants.get(compute.__name__)
        if cached is None or cached[0] != key:
            cached = self._constants[compute.__name__] = (key, compute())
        return cached[1]

    def _eager(self, x: Tensor) -> bool:
        """Whether this forward may call the compiled kernels directly (:mod:`apb.kernels.
        direct`) instead of through their ``torch.ops.apb`` operators: with the ``"kernels"``
        backend on a plain tensor, outside torch.compile / torch.export tracing and the
        profiler (which should see the operators). The operator's dispatch costs about
        5 µs a call, as much as a small layer's kernels; the result is the same."""
        return (self.backend == "kernels" and type(x) is Tensor
                and not torch.compiler.is_compiling()
                and not torch.autograd._profiler_enabled())

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

    # -- full-precision inputs: exact, or quantized to int8 for speed ----------------------
    input_precision = "exact"
    """How float32 inputs meet the weights: ``"exact"`` (float products), or ``"int8"``
    (each input row quantized to int8, :meth:`set_input_precision`)."""

    @property
    def takes_int8_inputs(self) -> bool:
        """Whether :meth:`set_input_precision` can switch this layer to ``"int8"``."""
        return False

    def set_input_precision(self, precision: str) -> None:
        """``"exact"`` (always) or ``"int8"`` (where :attr:`takes_int8_inputs`)."""
        check_input_precision(precision)
        if precision != "exact":
            raise ValueError(
                f"{self._label()} (method {self.method}, act_bits={self.act_bits}) has no "
                f"{precision} input path: only APB / binary Linear layers with full-precision "
                "inputs (act_bits=32) have one"
            )
