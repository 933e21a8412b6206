r"""Calibration for post-training compression: layer Hessians through forward hooks, and
BatchNorm statistics corrected afterwards.

A ``Linear`` layer sees input rows :math:`x \in \mathbb{R}^{d}` (every token of every sample
when the input has more than two dimensions); a ``Conv2d`` layer's input is unfolded (im2col)
so that each output position is one row of :math:`C_{in} k_h k_w` values and the
convolution is the matrix product :math:`W x` with :math:`W` flattened to
:math:`C_{out} \times C_{in} k_h k_w`. Over the :math:`n` rows of the calibration set,

.. math:: H = \frac{2}{n} \sum_i x_i x_i^\top ,

the Hessian of the mean squared output error :math:`\frac1n\|WX - \hat W X\|^2` in each row
of :math:`W`.

Sequential calibration (:class:`PairedCollector`) pairs each input :math:`x_q` the layer sees
in the model being compressed (the layers before it already compressed) with the input
:math:`x_f` the same sample gives it in the full-precision model, and accumulates
:math:`H = \frac2n\sum x_q x_q^\top`, :math:`K = \frac2n\sum x_f x_q^\top` and
:math:`H_f = \frac2n\sum x_f x_f^\top`: the objective is then the full-precision output,
:math:`\frac1n\|W X_f - \hat W X_q\|^2` (see :meth:`apb.methods.obc_layer.LayerProblem.build`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .calibration import CalibrationSet, Forward, as_calibration
from .obc_layer import OBCError


def check_supported(name: str, module: nn.Module) -> None:
    """Raise :class:`OBCError` naming ``module`` unless OBC can compress it: an ``nn.Linear``
    or an ungrouped, zero-padded ``nn.Conv2d`` (exact types: subclasses such as
    ``MultiheadAttention``'s ``out_proj`` are used through their weights directly, so their
    inputs cannot be observed)."""
    if type(module) is nn.Linear:
        return
    if type(module) is nn.Conv2d:
        if module.groups != 1:
            raise OBCError(f"layer {name!r} is a grouped convolution (groups={module.groups}), "
                           "which OBC does not support; leave it out with filter_fn")
        if module.padding_mode != "zeros":
            raise OBCError(f"layer {name!r} uses padding_mode={module.padding_mode!r}; OBC "
                           "supports zero padding only; leave it out with filter_fn")
        return
    raise OBCError(f"layer {name!r} is a {type(module).__name__}; OBC compresses nn.Linear "
                   "and nn.Conv2d modules only; leave it out with filter_fn")


def input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as an (n, d) matrix, one row per output position."""
    if isinstance(module, nn.Conv2d):
        padding = module.padding
        if isinstance(padding, str):  # "same" / "valid": pad as the module does, then unfold
            if padding == "same":
                pads = []
                for k, dil in zip(module.kernel_size[::-1], module.dilation[::-1]):
                    total = dil * (k - 1)
                    pads += [total // 2, total - total // 2]
                x = F.pad(x, pads)
            padding = 0
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding,
                        stride=module.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


class HessianCollector:
    """Accumulates :math:`\\sum_i x_i x_i^\\top` of one layer's inputs (float64)."""

    def __init__(self, name: str, module: nn.Module):
        self.name = name
        self.module = module
        d = module.weight[0].numel()
        self.sum = torch.zeros((d, d), dtype=torch.float64)
        self.n_inputs = 0
        self.n_samples = 0

    def __call__(self, module, args) -> None:
        x = args[0].detach()
        rows = input_rows(module, x).float().cpu()
        self.sum += (rows.t() @ rows).double()
        self.n_inputs += rows.shape[0]
        self.n_samples += x.shape[0]

    @property
    def hessian(self) -> torch.Tensor:
        return self.sum * (2.0 / max(1, self.n_inputs))

    @property
    def positions(self) -> float:
        """Input rows per sample: output positions of a convolution, tokens of a Linear."""
        return self.n_inputs / max(1, self.n_samples)


class PairedCollector(HessianCollector):
    r"""A :class:`HessianCollector` of the inputs :math:`x_q` of ``module`` that also pairs
    each with the input :math:`x_f` of ``reference`` (the same layer of the full-precision
    model) for the same sample, accumulating :math:`\sum x_f x_q^\top` and
    :math:`\sum x_f x_f^\top`. The reference model must run on a batch before the model
    being compressed does."""

    def __init__(self, name: str, module: nn.Module, reference: nn.Module):
        super().__init__(name, module)
        self.reference = reference
        self.cross_sum = torch.zeros_like(self.sum)
        self.ref_sum = torch.zeros_like(self.sum)
        self._pending: list[torch.Tensor] = []

    def reference_hook(self, module, args) -> None:
        self._pending.append(input_rows(module, args[0].detach()).float().cpu())

    def __call__(self, module, args) -> None:
        if not self._pending:
            raise OBCError(f"layer {self.name!r} was called more often in the model being "
                           "compressed than in the full-precision one; sequential "
                           "calibration needs the same calls in both")
        ref = self._pending.pop(0)
        rows = input_rows(module, args[0].detach()).float().cpu()
        if ref.shape != rows.shape:
            raise OBCError(f"layer {self.name!r} got inputs of shape {tuple(rows.shape)} but "
                           f"{tuple(ref.shape)} in the full-precision model")
        self.cross_sum += (ref.t() @ rows).double()
        self.ref_sum += (ref.t() @ ref).double()
        super().__call__(module, args)

    @property
    def cross(self) -> torch.Tensor:
        r""":math:`K^\top = \frac2n\sum x_f x_q^\top` (rows: reference inputs)."""
        return self.cross_sum * (2.0 / max(1, self.n_inputs))

    @property
    def reference_hessian(self) -> torch.Tensor:
        r""":math:`H_f = \frac2n\sum x_f x_f^\top`."""
        return self.ref_sum * (2.0 / max(1, self.n_inputs))


@torch.no_grad()
def collect_hessians(model: nn.Module, names: list[str],
                     calibration: Iterable | CalibrationSet) -> dict[str, HessianCollector]:
    """Run ``model`` (eval mode) over the calibration set with a hook on each layer of
    ``names``."""
    collectors = {n: HessianCollector(n, model.get_submodule(n)) for n in names}
    _run_hooked(collectors, [model], as_calibration(calibration))
    return collectors


@torch.no_grad()
def collect_paired(reference: nn.Module, model: nn.Module, name: str,
                   calibration: Iterable | CalibrationSet) -> PairedCollector:
    """Run ``reference`` (the full-precision model) and then ``model`` on each batch, pairing
    the inputs of their layer ``name`` (:class:`PairedCollector`)."""
    collector = PairedCollector(name, model.get_submodule(name), reference.get_submodule(name))
    handle = collector.reference.register_forward_pre_hook(collector.reference_hook)
    try:
        _run_hooked({name: collector}, [reference, model], as_calibration(calibration))
    finally:
        handle.remove()
    return collector


def _run_hooked(collectors: dict[str, HessianCollector], models: list[nn.Module],
                calibration: CalibrationSet) -> None:
    """Each batch through each of ``models`` in turn (eval mode), with the collectors hooked
    on their modules; checks that every hooked layer saw inputs."""
    handles = [c.module.register_forward_pre_hook(c) for c in collectors.values()]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    seen = 0
    try:
        for batch in calibration:
            for m in models:
                calibration.run(m, batch)
            seen += 1
    finally:
        for h in handles:
            h.remove()
        for m, mode in zip(models, modes):
            m.train(mode)
    if seen == 0:
        raise OBCError("the calibration set is empty")
    for c in collectors.values():
        if c.n_inputs == 0:
            raise OBCError(
                f"layer {c.name!r} was never called during calibration (its parent computes "
                "with its weight directly, e.g. nn.MultiheadAttention); OBC cannot see its "
                "inputs: leave it out with filter_fn"
            )


BATCHNORM_MODES = ("shift", "reestimate", "keep")


def batchnorms(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """The BatchNorm layers that keep running statistics, with their names."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def _statistics(model: nn.Module) -> dict[str, tuple[torch.Tensor, ...]]:
    return {n: (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
            for n, m in batchnorms(model)}


class BatchNormCorrection:
    r"""What post-training compression does to BatchNorm statistics once layers are
    compressed. Built on the full-precision model, before it is compressed; called on the
    compressed model.

    - ``reestimate``: every running mean and variance re-estimated on the calibration
      batches (:func:`recalibrate_batchnorm`).
    - ``shift``: the trained statistics :math:`\mu, \sigma^2` moved by the change that
      compression makes to the calibration estimates, per channel,

      .. math:: \mu' = \mu + (m_q - m_f), \qquad \sigma'^2 = \sigma^2\, v_q / v_f ,

      with :math:`m, v` what ``reestimate`` would compute for the compressed (:math:`q`) and
      the full-precision (:math:`f`) model on the same batches. The sampling error of a small
      calibration set is common to both estimates and cancels, so an uncompressed layer keeps
      its trained statistics exactly, while the mean and scale that compression moves are
      corrected. (On LeNet-5 with 1,024 calibration digits, ``reestimate`` alone costs the
      full-precision model 0.2 points.) Channels with :math:`v_f = 0` take :math:`v_q`.
    - ``keep``: unchanged.
    """

    def __init__(self, mode: str, reference: nn.Module,
                 calibration: Iterable | CalibrationSet):
        if mode not in BATCHNORM_MODES:
            raise ValueError(f"batchnorm must be one of {', '.join(BATCHNORM_MODES)}, "
                             f"got {mode!r}")
        self.mode = mode
        self.calibration = calibration = as_calibration(calibration)
        self.trained = _statistics(reference)
        self.calibrated = {}
        if mode == "shift" and self.trained:
            state = {n: {k: v.clone() for k, v in m.state_dict().items()}
                     for n, m in batchnorms(reference)}
            recalibrate_batchnorm(reference, calibration)
            self.calibrated = _statistics(reference)
            for n, m in batchnorms(reference):
                m.load_state_dict(state[n])

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> int:
        """Correct ``model``'s BatchNorm statistics; returns how many layers changed."""
        if self.mode == "keep":
            return 0
        count = recalibrate_batchnorm(model, self.calibration)
        if self.mode == "shift":
            for name, m in batchnorms(model):
                if name not in self.trained:
                    raise OBCError(f"BatchNorm {name!r} is not in the full-precision model; "
                                   "batchnorm='shift' needs the same BatchNorm layers in both")
                mean, var, tracked = self.trained[name]
                ref_mean, ref_var, _ = self.calibrated[name]
                m.num_batches_tracked.copy_(tracked)
                ratio = m.running_var / ref_var.clamp_min(torch.finfo(ref_var.dtype).tiny)
                m.running_var.copy_(torch.where(ref_var > 0, var * ratio, m.running_var))
                m.running_mean.copy_(mean + (m.running_mean - ref_mean))
        return count


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable | CalibrationSet,
                          device: torch.device | str = "cpu",
                          forward: Forward | None = None) -> int:
    """Re-estimate every BatchNorm's running mean and variance on ``batches`` (a cumulative
    average over all of them; see :mod:`~.calibration` for what a batch may be), the rest of
    the model in eval mode. Returns the number of BatchNorm layers updated."""
    calibration = as_calibration(batches, device, forward)
    norms = [m for _, m in batchnorms(model)]
    if not norms:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in norms]
    model.eval()
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: every batch weighs the same
            m.train()
        for batch in calibration:
            calibration.run(model, batch)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return len(norms)
