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
:math:`\frac2n\sum\|W x_f\|^2`: the objective is then the full-precision output,
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


class StopForward(Exception):
    """Raised by a hook to end a forward pass early (sequential calibration needs a model's
    activations only up to the layers being calibrated)."""


def input_rows(module: nn.Module, x: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """The layer's input as an (n, d) matrix, one row per output position. ``mask``
    ((batch, tokens) bool, :meth:`~.calibration.CalibrationSet.token_mask`) keeps only the
    rows of real tokens of a Linear layer's (batch, tokens, features) input."""
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
    if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        return x[mask]
    return x.reshape(-1, x.shape[-1])


def _rows_key(module: nn.Module) -> tuple:
    """Layers whose rows of the same input tensor are the same matrix share a key."""
    if isinstance(module, nn.Conv2d):
        return (module.kernel_size, module.dilation, module.padding, module.stride)
    return ()


class GramCache:
    r""":math:`X^\top X` of each input tensor seen during one batch, so that layers fed the
    same tensor (the query, key and value projections of an attention block) pay for it
    once. Holds the tensors themselves, so an ``id`` cannot be reused within a batch;
    :meth:`clear` between batches."""

    def __init__(self):
        self.entries: dict[tuple, tuple[torch.Tensor, tuple]] = {}

    def clear(self) -> None:
        self.entries.clear()

    def gram(self, module: nn.Module, x: torch.Tensor, mask: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(X^T X, the sum of the rows, the number of rows)`` of ``module``'s input ``x``."""
        key = (id(x), _rows_key(module))
        hit = self.entries.get(key)
        if hit is not None and hit[0] is x:
            return hit[1]
        value = _gram(input_rows(module, x, mask))
        self.entries[key] = (x, value)
        return value


def _gram(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    rows = rows.float().cpu()
    return (rows.t() @ rows).double(), rows.sum(0).double(), rows.shape[0]


class HessianCollector:
    r"""Accumulates :math:`\sum_i x_i x_i^\top` of one layer's inputs (float64). ``mask``
    is the current batch's token mask (set by whoever runs the batches); ``cache`` a
    :class:`GramCache` shared with the other collectors of the same run."""

    def __init__(self, name: str, module: nn.Module, cache: GramCache | None = None):
        self.name = name
        self.module = module
        d = module.weight[0].numel()
        self.sum = torch.zeros((d, d), dtype=torch.float64)
        self.total = torch.zeros(d, dtype=torch.float64)  # sum of the input rows
        self.n_inputs = 0
        self.n_samples = 0
        self.mask: torch.Tensor | None = None
        self.cache = cache
        self.stop = False  # end the forward once the input is seen (StopForward)

    def __call__(self, module, args) -> None:
        x = args[0].detach()
        if self.cache is not None:
            gram, total, n = self.cache.gram(module, x, self.mask)
        else:
            gram, total, n = _gram(input_rows(module, x, self.mask))
        self.sum += gram
        self.total += total
        self.n_inputs += n
        self.n_samples += x.shape[0]
        if self.stop:
            raise StopForward

    @property
    def hessian(self) -> torch.Tensor:
        return self.sum * (2.0 / max(1, self.n_inputs))

    @property
    def mean(self) -> torch.Tensor:
        r""":math:`\mu`, the mean input row."""
        return self.total / max(1, self.n_inputs)

    @property
    def centered_hessian(self) -> torch.Tensor:
        r""":math:`\frac2n\sum (x - \mu)(x - \mu)^\top = H - 2\mu\mu^\top`: the Hessian of
        the output error once the bias absorbs its mean (:func:`apb.methods.ptq_`'s
        ``bias_correction``)."""
        mu = self.mean
        return self.hessian - 2.0 * torch.outer(mu, mu)

    @property
    def positions(self) -> float:
        """Input rows per sample: output positions of a convolution, tokens of a Linear."""
        return self.n_inputs / max(1, self.n_samples)


class PairedCollector(HessianCollector):
    r"""A :class:`HessianCollector` of the inputs :math:`x_q` of ``module`` that also pairs
    each with the input :math:`x_f` that the full-precision model gives the same layer for
    the same sample, accumulating :math:`\sum x_f x_q^\top`, and for each layer of
    ``weights`` (the layers that share this input, by name) :math:`\sum \|W x_f\|^2`,
    the scale of its relative error. The reference rows arrive first, from
    :meth:`reference_hook` (a pre-hook on the full-precision layer) or :meth:`feed`."""

    def __init__(self, name: str, module: nn.Module, weights: dict[str, torch.Tensor]):
        super().__init__(name, module)
        self.weights = {n: w.float() for n, w in weights.items()}
        self.cross_sum = torch.zeros_like(self.sum)
        self.ref_total = torch.zeros_like(self.total)
        self.ref_norms = dict.fromkeys(self.weights, 0.0)
        # ||W x_f||^2 directly (R d per row) or through sum x_f x_f^T (d^2 per row), which
        # is cheaper when the layers sharing this input have more rows than it has columns
        d = self.sum.shape[0]
        self.ref_sum = torch.zeros_like(self.sum) \
            if sum(w.shape[0] for w in self.weights.values()) > d else None
        self._pending: list[torch.Tensor] = []

    def reference_hook(self, module, args) -> None:
        self.feed(input_rows(module, args[0].detach(), self.mask).float().cpu())
        if self.stop:
            raise StopForward

    def feed(self, rows: torch.Tensor) -> None:
        """The full-precision model's input rows for the next batch."""
        self._pending.append(rows)

    def __call__(self, module, args) -> None:
        if not self._pending:
            raise OBCError(f"layer {self.name!r} was called more often in the model being "
                           "compressed than in the full-precision one; sequential "
                           "calibration needs the same calls in both")
        ref = self._pending.pop(0)
        rows = input_rows(module, args[0].detach(), self.mask).float().cpu()
        if ref.shape != rows.shape:
            raise OBCError(f"layer {self.name!r} got inputs of shape {tuple(rows.shape)} but "
                           f"{tuple(ref.shape)} in the full-precision model")
        self.cross_sum += (ref.t() @ rows).double()
        self.ref_total += ref.sum(0).double()
        self.total += rows.sum(0).double()
        if self.ref_sum is not None:
            self.ref_sum += (ref.t() @ ref).double()
        else:
            for n, w in self.weights.items():
                self.ref_norms[n] += float((ref @ w.t()).double().square().sum())
        self.sum += (rows.t() @ rows).double()
        self.n_inputs += rows.shape[0]
        self.n_samples += args[0].shape[0]
        if self.stop:
            raise StopForward

    @property
    def cross(self) -> torch.Tensor:
        r""":math:`K^\top = \frac2n\sum x_f x_q^\top` (rows: reference inputs)."""
        return self.cross_sum * (2.0 / max(1, self.n_inputs))

    @property
    def reference_mean(self) -> torch.Tensor:
        r""":math:`\mu_f`, the mean full-precision input row."""
        return self.ref_total / max(1, self.n_inputs)

    @property
    def centered_cross(self) -> torch.Tensor:
        r""":math:`\frac2n\sum (x_f - \mu_f)(x_q - \mu_q)^\top`."""
        return self.cross - 2.0 * torch.outer(self.reference_mean, self.mean)

    def reference_norm(self, name: str) -> float:
        r""":math:`\frac2n\sum \|W x_f\|^2 = \operatorname{tr}(W H_f W^\top)` of layer
        ``name``."""
        if self.ref_sum is not None:
            w = self.weights[name].double()
            return float(((w @ self.ref_sum) * w).sum()) * (2.0 / max(1, self.n_inputs))
        return self.ref_norms[name] * (2.0 / max(1, self.n_inputs))


@torch.no_grad()
def collect_hessians(model: nn.Module, names: list[str],
                     calibration: Iterable | CalibrationSet,
                     stop: bool = False) -> dict[str, HessianCollector]:
    """Run ``model`` (eval mode) over the calibration set with a hook on each layer of
    ``names`` (layers fed the same tensor share its :math:`X^\\top X`). ``stop``: end each
    forward once a layer's input is seen (for one layer)."""
    cache = GramCache()
    collectors = {n: HessianCollector(n, model.get_submodule(n), cache) for n in names}
    for c in collectors.values():
        c.stop = stop
    _run_hooked(collectors, [model], as_calibration(calibration), cache)
    return collectors


@torch.no_grad()
def collect_paired(reference: nn.Module, model: nn.Module, names: list[str],
                   calibration: Iterable | CalibrationSet, stop: bool = False
                   ) -> PairedCollector:
    """Run ``reference`` (the full-precision model) and then ``model`` on each batch, pairing
    the inputs of their layer ``names[0]`` (:class:`PairedCollector`; the layers ``names``
    share that input). ``stop``: end both forwards right after that layer's input is seen."""
    name = names[0]
    weights = {n: model.get_submodule(n).weight.detach().flatten(1).cpu() for n in names}
    collector = PairedCollector(name, model.get_submodule(name), weights)
    collector.stop = stop
    handles = [reference.get_submodule(name).register_forward_pre_hook(
        collector.reference_hook)]
    try:
        _run_hooked({name: collector}, [reference, model], as_calibration(calibration))
    finally:
        for h in handles:
            h.remove()
    return collector


def _run_hooked(collectors: dict[str, HessianCollector], models: list[nn.Module],
                calibration: CalibrationSet, cache: GramCache | None = None) -> None:
    """Each batch through each of ``models`` in turn (eval mode), with the collectors hooked
    on their modules; checks that every hooked layer saw inputs."""
    handles = [c.module.register_forward_pre_hook(c) for c in collectors.values()]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    seen = 0
    try:
        for batch in calibration:
            mask = calibration.token_mask(batch)
            for c in collectors.values():
                c.mask = mask
            for m in models:
                try:
                    calibration.run(m, batch)
                except StopForward:
                    pass
            if cache is not None:
                cache.clear()
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
