r"""Post-training compression: ``ptq_(model, config, calibration)``.

One entry point for the methods that compress a trained model from a small calibration set
without retraining (OBC pruning / quantization, post-training APB). In order:

1. pick the layers (:func:`apb.methods.select_layers`, ``filter_fn``) and check that each is
   an ``nn.Linear`` or an ungrouped ``nn.Conv2d``;
2. run the model over the calibration batches with a hook on each layer, accumulating its
   Hessian :math:`H = \frac2n XX^\top` (:mod:`apb.methods.obc_calib`);
3. pick each layer's level: the same target for every layer, or, for a model-wide budget,
   the levels with the least summed relative error that fit it (:mod:`~.obc_global`);
4. solve each layer, with OBC's exact greedy OBS loop (:mod:`~.obc_layer`) or the
   lazy-batch solver (:mod:`~.lazy_batch`) as ``solver`` says (:mod:`~.ptq_solve`), and
   replace it, in place, by a ``QuantConv2d`` / ``QuantLinear`` whose weight quantizer
   holds the result;
5. correct the BatchNorm statistics (:class:`~.obc_calib.BatchNormCorrection`).

With ``sequential``, steps 2, 4 and 5 run one stage at a time, in module order (a stage:
the layers fed the same input tensor, :mod:`~.obc_stages`): each layer is fitted to the
full-precision model's output from the inputs it sees with the layers before it already
compressed (and their BatchNorms corrected), minimising :math:`\|W X_f - \hat W X_q\|^2`
(:meth:`~.obc_layer.LayerProblem.build`), so errors do not compound. A model-wide budget's
levels then come from the global step on independent calibration.

With ``bias_correction``, a layer's bias joins the objective: the Hessian is centered and
the bias moved by the mean output change (:func:`_bias`).

The error of a layer is relative, :math:`\|\Delta W X\|^2 / \|W X\|^2`: a BatchNorm (or the
next layer) rescales each layer's output, so absolute errors would not compare across layers.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from ..nn.attention import split_attention_
from ..nn.layers import QuantConv2d, QuantLinear
from .base import CompressionConfig, FilterFn, Method, select_layers
from .calibration import CalibrationSet, Forward
from .obc_calib import (
    BATCHNORM_MODES,
    BatchNormCorrection,
    HessianCollector,
    PairedCollector,
    check_supported,
    collect_hessians,
)
from .obc_layer import LayerLevel, LayerProblem, LayerSolution, OBCError
from .obc_stages import Sequential
from .ptq_solve import (
    PRECISIONS,
    SOLVERS,
    budget_total,
    global_step,
    relative_error,
    solve,
)

__all__ = ["PRECISIONS", "PTQConfig", "PTQReport", "PostTrainingMethod", "ptq_",
           "relative_error"]


@dataclass
class PTQConfig(CompressionConfig):
    """Fields every post-training method shares (activations stay full precision).

    Attributes:
        dampening: λ of the dampened Hessian ``H + λ·mean(diag H)·I``, which keeps it
            invertible (0: none; a singular H is then an error).
        solver: exact (OBC's greedy loop, the reference), lazy (GPTQ-style lazy batches,
            :mod:`apb.methods.lazy_batch`) or auto: exact for layers of at most
            exact_weights weights, lazy above (:mod:`apb.methods.ptq_solve`).
        exact_weights: the auto solver's limit.
        exact_columns: exact solver: rows with up to this many weights are solved exactly,
            one greedy loop over the whole row (OBC); wider rows in column blocks.
        block_size: columns per block (exact solver: for wider rows, with exact OBS
            compensation between blocks; lazy solver: the lazy batches).
        act_order: lazy solver: visit the columns by descending Hessian diagonal (GPTQ's
            activation order; not for N:M sparsity) rather than left to right.
        sequential: compress the layers in module order, each fitted to the full-precision
            output from the inputs it gets from the layers already compressed
            (min ||W X_f - W^ X_q||^2), rather than all from the full-precision model's inputs
            (in stages, :mod:`apb.methods.obc_stages`).
        mask_padding: leave the padded token positions of dict batches with an
            attention_mask out of the Hessians (:mod:`apb.methods.calibration`).
        bias_correction: layers with a bias: solve with the centered Hessian
            2/n sum (x - mu)(x - mu)^T and move the bias by the mean output change,
            b' = b + W mu_f - W^ mu_q, which minimises the output error over the bias too
            (bias correction, Nagel et al. 2019, here inside the OBS objective).
        batchnorm: what happens to BatchNorm statistics afterwards: shift (the trained
            statistics moved by the change compression makes on the calibration data),
            reestimate (re-estimated on the calibration data) or keep.
        precision: float64 or float32 arithmetic in the greedy loops.
    """

    dampening: float = 0.01
    solver: str = "auto"
    exact_weights: int = 65_536
    exact_columns: int = 512
    block_size: int = 128
    act_order: bool = True
    sequential: bool = False
    mask_padding: bool = True
    bias_correction: bool = False
    batchnorm: str = "shift"
    precision: str = "float64"

    def validate(self) -> None:
        super().validate()
        if self.act_bits != 32:
            raise ValueError("post-training compression keeps activations at full precision: "
                             f"act_bits must be 32, got {self.act_bits}")
        if not self.dampening >= 0:
            raise ValueError(f"dampening must be >= 0, got {self.dampening}")
        if self.exact_columns < 1 or self.block_size < 1:
            raise ValueError("exact_columns and block_size must be positive")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        if self.exact_weights < 0:
            raise ValueError(f"exact_weights must be >= 0, got {self.exact_weights}")
        if self.batchnorm not in BATCHNORM_MODES:
            raise ValueError(f"batchnorm must be one of {', '.join(BATCHNORM_MODES)}, "
                             f"got {self.batchnorm!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, "
                             f"got {self.precision!r}")


class PostTrainingMethod(Method):
    """A method :func:`ptq_` runs. Subclasses say what each layer becomes; each registers
    itself under its ``config_class`` (:func:`post_training_method`)."""

    post_training = True
    config: PTQConfig
    by_config: dict[type[PTQConfig], type[PostTrainingMethod]] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        PostTrainingMethod.by_config[cls.config_class] = cls

    def budget(self) -> tuple[str, float] | None:
        """``(kind, value)`` of a model-wide budget (kinds: :data:`BUDGET_UNITS`), or None
        when every layer gets :meth:`uniform_level`."""
        return None

    def uniform_level(self, name: str, weight: torch.Tensor) -> LayerLevel:
        raise NotImplementedError

    def level_grid(self, name: str, weight: torch.Tensor) -> list[LayerLevel]:
        """The levels the global step chooses among for this layer."""
        raise NotImplementedError

    def level_cost(self, kind: str, level: LayerLevel, rows: int, cols: int,
                   positions: float) -> float:
        raise NotImplementedError

    def fit(self, W: torch.Tensor, level: LayerLevel) -> dict:
        """Per-layer parameters fitted to the original weights (``grid``, ``alpha``)."""
        return {}

    def make_layer(self, module: nn.Module, solution: LayerSolution,
                   level: LayerLevel) -> nn.Module:
        """The compressed layer holding ``solution``."""
        raise NotImplementedError

    def checkpoint_method(self) -> tuple[str, dict]:
        """``(name, config)`` under which ``apb.methods.create(name, **config).prepare``
        rebuilds the compressed model's structure (its state comes from the state dict)."""
        return self.name, asdict(self.config)

    def compress_without_calibration(self, model: nn.Module,
                                     filter_fn: FilterFn | None) -> list[str] | None:
        """Methods that need no Hessians (naive baselines) compress here and return the
        layer names; None: go through the OBS pipeline."""
        return None


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, ...]
    level: str
    relative_error: float | None
    seconds: float


@dataclass
class PTQReport:
    """What :func:`ptq_` did: per layer its level, relative output error and time."""

    method: str
    layers: list[LayerReport] = field(default_factory=list)
    budget: tuple[str, float] | None = None
    bn_layers: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "method": self.method, "budget": list(self.budget) if self.budget else None,
            "bn_layers": self.bn_layers, "seconds": self.seconds,
            "layers": [asdict(r) for r in self.layers],
        }


def post_training_method(config: PTQConfig) -> PostTrainingMethod:
    """The post-training method a configuration belongs to."""
    cls = PostTrainingMethod.by_config.get(type(config))
    if cls is None:
        raise TypeError(f"no post-training method takes a {type(config).__name__}; give an "
                        "OBCConfig or an APBPTQConfig")
    return cls(config)


def ptq_(
    model: nn.Module,
    config: PTQConfig,
    calibration: Iterable,
    filter_fn: FilterFn | None = None,
    *,
    forward: Forward | None = None,
    progress: bool = False,
    device: torch.device | str = "cpu",
) -> PTQReport:
    """Compress ``model`` in place after training (see the module docstring).

    Args:
        model: built from ``nn.Linear`` / ``nn.Conv2d`` layers (BatchNorm, pooling,
            attention, ... are run but not compressed).
        config: an :class:`apb.methods.OBCConfig` or :class:`apb.methods.APBPTQConfig`.
        calibration: batches: input tensors, ``(inputs, labels)`` tuples or dicts of keyword
            arguments (:mod:`~apb.methods.calibration`); iterated a few times (a few times
            per layer with ``sequential``).
        filter_fn: ``filter_fn(module, name)`` picks the layers (default: all but the first
            and the classifier, per ``keep_first`` / ``keep_last``).
        forward: ``forward(model, batch)`` runs the model on one batch, for models that take
            their batches another way.
        progress: a progress bar per layer.
        device: where the calibration batches run (the model's device).
    """
    started = time.perf_counter()
    method = post_training_method(config)
    report = PTQReport(method.name)
    calib = CalibrationSet(calibration, device, forward, config.mask_padding)
    split_attention_(model)  # attention projections become layers that hooks can see
    batchnorm = BatchNormCorrection(config.batchnorm, model, calib)
    done = method.compress_without_calibration(model, filter_fn)
    if done is not None:
        report.bn_layers = batchnorm(model)
    elif config.sequential:
        names = _checked_targets(model, config, filter_fn)
        report.budget = method.budget()
        levels = None
        if report.budget is not None:
            chosen = _choose_independent(model, method, names, calib, report.budget,
                                         progress)
            levels = {name: chosen[name][0] for name in names}
        report.bn_layers = _compress_sequential(model, method, names, calib, report,
                                                progress, batchnorm, levels)
    else:
        names = _checked_targets(model, config, filter_fn)
        report.budget = method.budget()
        chosen = _choose_independent(model, method, names, calib, report.budget, progress)
        biases = chosen.pop("", {})
        for name in names:
            level, solution, err, secs = chosen[name]
            shape = tuple(model.get_submodule(name).weight.shape)
            _write(model, method, name, solution, level, biases.get(name))
            report.layers.append(LayerReport(name, shape, level.describe(), err,
                                             round(secs, 3)))
        report.bn_layers = batchnorm(model)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _checked_targets(model: nn.Module, config: PTQConfig,
                     filter_fn: FilterFn | None) -> list[str]:
    names = _targets(model, config, filter_fn)
    if not names:
        raise OBCError("no layer to compress: the model has no nn.Linear / nn.Conv2d "
                       "left after keep_first / keep_last / filter_fn")
    for name in names:
        check_supported(name, model.get_submodule(name))
    return names


def _targets(model: nn.Module, config: PTQConfig, filter_fn: FilterFn | None) -> list[str]:
    """The layers to compress. A ``filter_fn`` is offered every module that has a weight
    matrix, so that picking one OBC cannot compress is an error naming it rather than a
    silent skip."""
    if filter_fn is None:
        return select_layers(model, config)
    return [
        name for name, m in model.named_modules()
        if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() >= 2
        and not hasattr(m, "weight_quantizer") and filter_fn(m, name)
    ]


def paired_relative_error(name: str, W: torch.Tensor, W_hat: torch.Tensor,
                          collector: PairedCollector, centered: bool = False) -> float:
    r""":math:`\|W X_f - \hat W X_q\|^2 / \|W X_f\|^2` of layer ``name`` from the sums of a
    :class:`~.obc_calib.PairedCollector`: per row
    :math:`\tfrac12(\hat w H \hat w^\top - 2\,w K^\top \hat w^\top + w H_f w^\top)`."""
    W, W_hat = W.double(), W_hat.double()
    base = collector.reference_norm(name)
    if centered:  # the error once the bias takes up the mean difference
        H, K = collector.centered_hessian, collector.centered_cross
        ref = base - 2.0 * float((W @ collector.reference_mean).square().sum())
    else:
        H, K, ref = collector.hessian, collector.cross, base
    err = (float(((W_hat @ H) * W_hat).sum()) - 2 * float(((W @ K) * W_hat).sum()) + ref)
    return max(err, 0.0) / base if base > 0 else 0.0


def _weight(module: nn.Module) -> torch.Tensor:
    return module.weight.detach().reshape(module.weight.shape[0], -1).cpu()


def _centered(config: PTQConfig, module: nn.Module) -> bool:
    """Whether the layer's bias takes part (``bias_correction``)."""
    return config.bias_correction and getattr(module, "bias", None) is not None


def _hessian(config: PTQConfig, module: nn.Module, collector: HessianCollector) -> torch.Tensor:
    """The layer's undampened Hessian: centered when its bias absorbs the mean error."""
    return collector.centered_hessian if _centered(config, module) else collector.hessian


def _problem(name: str, module: nn.Module, collector: HessianCollector,
             config: PTQConfig) -> LayerProblem:
    return LayerProblem.build(name, _weight(module), _hessian(config, module, collector),
                              collector.n_inputs, config.dampening)


def _bias(module: nn.Module, W_hat: torch.Tensor, mean_q: torch.Tensor,
          mean_f: torch.Tensor) -> torch.Tensor:
    r""":math:`b + W\mu_f - \hat W\mu_q`: the bias that removes the mean output error."""
    W = _weight(module).double()
    b = module.bias.detach().cpu().double()
    return (b + W @ mean_f - W_hat.double() @ mean_q).float()


def _solve(method: PostTrainingMethod, problem: LayerProblem,
           level: LayerLevel) -> tuple[LayerSolution, float]:
    return solve(method.config, problem, level, method.fit(problem.W, level))


def _bar(items, progress: bool, desc: str):
    return tqdm(items, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)


def _write(model: nn.Module, method: PostTrainingMethod, name: str, solution: LayerSolution,
           level: LayerLevel, bias: torch.Tensor | None = None) -> nn.Module:
    module = model.get_submodule(name)
    layer = method.make_layer(module, solution, level)
    if bias is not None:
        with torch.no_grad():
            layer.bias.copy_(bias.to(layer.bias))
    model.set_submodule(name, layer)
    return layer


def _compress_sequential(model, method, names, calib, report, progress, batchnorm,
                         levels) -> int:
    """Layers in stages (:class:`~.obc_stages.Sequential`), each fitted to the
    full-precision output from the inputs it sees once the layers before it are compressed
    and the BatchNorm statistics corrected, as they will be in the end (the correction of a
    BatchNorm depends only on the layers before it). Returns the number of BatchNorm layers
    the last correction changed."""
    c = method.config
    seq = Sequential(model, names, calib)
    bn_layers = 0
    compressed = {}
    for stage in (bar := _bar(seq.stages, progress, "ptq")):
        bar.set_postfix_str(stage[0])
        collector = seq.collect(stage)
        paired = isinstance(collector, PairedCollector)
        for name in stage:
            module = model.get_submodule(name)
            W = _weight(module)
            level = method.uniform_level(name, module.weight) if levels is None \
                else levels[name]
            centered = _centered(c, module)
            H = _hessian(c, module, collector)
            cross = None
            if paired:
                cross = collector.centered_cross if centered else collector.cross
            problem = LayerProblem.build(name, W, H, collector.n_inputs, c.dampening,
                                         cross=cross)
            solution, secs = _solve(method, problem, level)
            if paired:
                err = paired_relative_error(name, W, solution.weight, collector, centered)
            else:  # nothing compressed yet: X_q = X_f, so K = H and W* = W
                err = relative_error(problem, solution.weight, H)
            bias = None
            if centered:
                mean_f = collector.reference_mean if paired else collector.mean
                bias = _bias(module, solution.weight, collector.mean, mean_f)
            compressed[name] = _write(model, method, name, solution, level, bias)
            model.set_submodule(name, _stand_in(module, compressed[name]))
            report.layers.append(LayerReport(name, tuple(module.weight.shape),
                                             level.describe(), err, round(secs, 3)))
        bn_layers = batchnorm(model)
    for name, layer in compressed.items():
        model.set_submodule(name, layer)
    return bn_layers


@torch.no_grad()
def _stand_in(module: nn.Module, layer: nn.Module) -> nn.Module:
    """A plain copy of ``module`` computing with ``layer``'s effective weights: what the
    later calibration passes run instead of the compressed layer, whose forward would
    re-derive its weights from the quantizer on every call."""
    plain = copy.deepcopy(module)
    plain.weight.copy_(layer.quantized_weight().detach().reshape(plain.weight.shape))
    if plain.bias is not None:
        plain.bias.copy_(layer.bias.detach())
    return plain


def _choose_independent(model, method, names, calib, budget, progress) -> dict:
    """Every layer calibrated on the full-precision model's inputs and solved at its level
    (uniform, or from the global step for a model-wide ``budget``):
    ``{name: (level, solution, relative error, seconds)}``, and under the key ``""`` the
    corrected biases (``bias_correction``) by layer name."""
    c = method.config
    collectors = collect_hessians(model, names, calib)
    modules = {name: model.get_submodule(name) for name in names}
    hessians = {name: _hessian(c, modules[name], collectors[name]) for name in names}
    problems = {name: _problem(name, modules[name], collectors[name], c) for name in names}
    if budget is not None:
        total = budget_total(model, names, problems, collectors, budget)
        chosen = global_step(method, names, modules, problems, hessians, collectors,
                             (budget[0], total), progress)
    else:
        chosen = {}
        for name in (bar := _bar(names, progress, "ptq")):
            bar.set_postfix_str(name)
            level = method.uniform_level(name, modules[name].weight)
            solution, secs = _solve(method, problems[name], level)
            err = relative_error(problems[name], solution.weight, hessians[name])
            chosen[name] = (level, solution, err, secs)
    chosen[""] = {name: _bias(modules[name], chosen[name][1].weight, collectors[name].mean,
                              collectors[name].mean)
                  for name in names if _centered(c, modules[name])}
    return chosen


def quant_layer_class(module: nn.Module) -> type:
    return QuantConv2d if isinstance(module, nn.Conv2d) else QuantLinear
