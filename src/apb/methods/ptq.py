r"""Post-training compression: ``ptq_(model, config, calibration)``.

One entry point for the methods that compress a trained model from a small calibration set
without retraining (OBC pruning / quantization, post-training APB). In order:

1. pick the layers (:func:`apb.methods.select_layers`, ``filter_fn``) and check that each is
   an ``nn.Linear`` or an ungrouped ``nn.Conv2d``;
2. run the model over the calibration batches with a hook on each layer, accumulating its
   Hessian :math:`H = \frac2n XX^\top` (:mod:`apb.methods.obc_calib`);
3. pick each layer's level: the same target for every layer, or, for a model-wide budget,
   the levels with the least summed relative error that fit it (:mod:`~.obc_global`);
4. solve each layer with the greedy OBS loop (:mod:`~.obc_layer`) and replace it, in place,
   by a ``QuantConv2d`` / ``QuantLinear`` whose weight quantizer holds the result;
5. correct the BatchNorm statistics (:class:`~.obc_calib.BatchNormCorrection`).

With ``sequential``, steps 2, 4 and 5 run one layer at a time, in module order: each layer
is fitted to the full-precision model's output from the inputs it sees with the layers
before it already compressed (and their BatchNorms corrected), minimising
:math:`\|W X_f - \hat W X_q\|^2` (:meth:`~.obc_layer.LayerProblem.build`), so errors do not
compound. A model-wide budget's levels then come from the global step on independent
calibration.

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

from ..memory import FP32_BITS, dense_storage
from ..nn.attention import split_attention_
from ..nn.layers import QuantConv2d, QuantLinear
from ..summary import summary
from .base import CompressionConfig, FilterFn, Method, select_layers
from .calibration import CalibrationSet, Forward
from .obc_calib import (
    BATCHNORM_MODES,
    BatchNormCorrection,
    HessianCollector,
    PairedCollector,
    check_supported,
    collect_hessians,
    collect_paired,
)
from .obc_global import choose_levels
from .obc_layer import (
    LayerLevel,
    LayerProblem,
    LayerSolution,
    OBCError,
    solve_layer,
    solve_levels,
)

PRECISIONS = {"float64": torch.float64, "float32": torch.float32}
BUDGET_UNITS = {"kept": " kept weights", "fp": " full-precision weights", "bits": " bits",
                "bytes": " bytes", "bops": " bit-operations"}


@dataclass
class PTQConfig(CompressionConfig):
    """Fields every post-training method shares (activations stay full precision).

    Attributes:
        dampening: λ of the dampened Hessian ``H + λ·mean(diag H)·I``, which keeps it
            invertible (0: none; a singular H is then an error).
        exact_columns: rows with up to this many weights are solved exactly, one greedy
            loop over the whole row (OBC); wider rows in column blocks.
        block_size: columns per block for wider rows (exact OBS compensation between blocks).
        sequential: compress the layers in module order, each fitted to the full-precision
            output from the inputs it gets from the layers already compressed
            (min ||W X_f - W^ X_q||^2), rather than all from the full-precision model's inputs.
        batchnorm: what happens to BatchNorm statistics afterwards: shift (the trained
            statistics moved by the change compression makes on the calibration data),
            reestimate (re-estimated on the calibration data) or keep.
        precision: float64 or float32 arithmetic in the greedy loops.
    """

    dampening: float = 0.01
    exact_columns: int = 512
    block_size: int = 128
    sequential: bool = False
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


def relative_error(problem: LayerProblem, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """:math:`\\|\\Delta W X\\|^2 / \\|W X\\|^2` with ``H`` the undampened :math:`2XX^\\top/n`."""
    base = problem.error(torch.zeros_like(problem.W), H)
    return problem.error(W_hat, H) / base if base > 0 else 0.0


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
    calib = CalibrationSet(calibration, device, forward)
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
            levels = {name: level for name, (level, *_) in chosen.items()}
        report.bn_layers = _compress_sequential(model, method, names, calib, report,
                                                progress, batchnorm, levels)
    else:
        names = _checked_targets(model, config, filter_fn)
        report.budget = method.budget()
        chosen = _choose_independent(model, method, names, calib, report.budget, progress)
        for name in names:
            level, solution, err, secs = chosen[name]
            shape = tuple(model.get_submodule(name).weight.shape)
            _write(model, method, name, solution, level)
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


def paired_relative_error(W: torch.Tensor, W_hat: torch.Tensor,
                          collector: PairedCollector) -> float:
    r""":math:`\|W X_f - \hat W X_q\|^2 / \|W X_f\|^2` from the sums of a
    :class:`~.obc_calib.PairedCollector`: per row
    :math:`\tfrac12(\hat w H \hat w^\top - 2\,w K^\top \hat w^\top + w H_f w^\top)`."""
    W, W_hat = W.double(), W_hat.double()
    base = float(((W @ collector.reference_hessian) * W).sum())
    err = (float(((W_hat @ collector.hessian) * W_hat).sum())
           - 2 * float(((W @ collector.cross) * W_hat).sum()) + base)
    return max(err, 0.0) / base if base > 0 else 0.0


def _weight(module: nn.Module) -> torch.Tensor:
    return module.weight.detach().reshape(module.weight.shape[0], -1).cpu()


def _problem(name: str, module: nn.Module, collector: HessianCollector,
             config: PTQConfig) -> LayerProblem:
    return LayerProblem.build(name, _weight(module), collector.hessian, collector.n_inputs,
                              config.dampening)


def _solve(method: PostTrainingMethod, problem: LayerProblem,
           level: LayerLevel) -> tuple[LayerSolution, float]:
    c = method.config
    started = time.perf_counter()
    solution = solve_layer(
        problem, level, **method.fit(problem.W, level), exact_columns=c.exact_columns,
        block_size=c.block_size, dtype=PRECISIONS[c.precision],
    )
    return solution, time.perf_counter() - started


def _bar(items, progress: bool, desc: str):
    return tqdm(items, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)


def _write(model: nn.Module, method: PostTrainingMethod, name: str, solution: LayerSolution,
           level: LayerLevel) -> None:
    module = model.get_submodule(name)
    model.set_submodule(name, method.make_layer(module, solution, level))


def _compress_sequential(model, method, names, calib, report, progress, batchnorm,
                         levels) -> int:
    """Layers in order, each fitted to the full-precision output from the inputs it sees once
    the layers before it are compressed and the BatchNorm statistics corrected, as they will
    be in the end (the correction of a BatchNorm depends only on the layers before it).
    Returns the number of BatchNorm layers the last correction changed."""
    c = method.config
    reference = copy.deepcopy(model)
    for i, name in enumerate(bar := _bar(names, progress, "ptq")):
        bar.set_postfix_str(name)
        module = model.get_submodule(name)
        W = _weight(module)
        level = method.uniform_level(name, module.weight) if levels is None else levels[name]
        if i == 0:  # nothing compressed yet: X_q = X_f, so K = H and W* = W; one pass
            collector = collect_hessians(model, [name], calib)[name]
            problem = _problem(name, module, collector, c)
            solution, secs = _solve(method, problem, level)
            err = relative_error(problem, solution.weight, collector.hessian)
        else:
            collector = collect_paired(reference, model, name, calib)
            problem = LayerProblem.build(name, W, collector.hessian, collector.n_inputs,
                                         c.dampening, cross=collector.cross)
            solution, secs = _solve(method, problem, level)
            err = paired_relative_error(W, solution.weight, collector)
        _write(model, method, name, solution, level)
        bn_layers = batchnorm(model)
        report.layers.append(LayerReport(name, tuple(module.weight.shape), level.describe(),
                                         err, round(secs, 3)))
    return bn_layers


def _choose_independent(model, method, names, calib, budget, progress) -> dict:
    """Every layer calibrated on the full-precision model's inputs and solved at its level
    (uniform, or from the global step for a model-wide ``budget``):
    ``{name: (level, solution, relative error, seconds)}``."""
    collectors = collect_hessians(model, names, calib)
    modules = {name: model.get_submodule(name) for name in names}
    problems = {name: _problem(name, modules[name], collectors[name], method.config)
                for name in names}
    if budget is not None:
        total = _budget_total(model, names, problems, collectors, budget)
        return _global_step(method, names, modules, problems, collectors,
                            (budget[0], total), progress)
    chosen = {}
    for name in (bar := _bar(names, progress, "ptq")):
        bar.set_postfix_str(name)
        level = method.uniform_level(name, modules[name].weight)
        solution, secs = _solve(method, problems[name], level)
        err = relative_error(problems[name], solution.weight, collectors[name].hessian)
        chosen[name] = (level, solution, err, secs)
    return chosen


def _budget_total(model, names, problems, collectors, budget) -> float:
    """The model-wide budget in the units of the layers' level costs."""
    kind, value = budget
    sizes = [problems[n].W.numel() for n in names]
    total = sum(sizes)
    if kind == "kept":
        return total - round(value * total)
    if kind == "fp":
        return round(value * total)
    if kind == "bits":
        return value * total
    if kind == "bytes":
        fixed = summary(model).model_bytes - sum(dense_storage(n).total_bytes for n in sizes)
        if value <= fixed:
            raise OBCError(f"model_bytes={value:,} cannot be met: the layers left "
                           f"uncompressed, biases and BatchNorm alone take {fixed:,} bytes")
        return value - fixed
    if kind == "bops":
        full = sum(collectors[n].positions * s * FP32_BITS * FP32_BITS
                   for n, s in zip(names, sizes))
        return full / value
    raise ValueError(f"unknown budget kind {kind!r}")


def _global_step(method, names, modules, problems, collectors, budget, progress) -> dict:
    """Error tables at every level of every layer, then the DP (:mod:`~.obc_global`); the
    chosen level of each layer is solved again in full when the table used a shortcut
    (:func:`~.obc_layer.solve_levels`)."""
    c = method.config
    kind, value = budget
    tables = {}
    for name in (bar := _bar(names, progress, "ptq levels")):
        bar.set_postfix_str(name)
        problem, H = problems[name], collectors[name].hessian
        rows, cols = problem.W.shape
        levels = method.level_grid(name, modules[name].weight)
        started = time.perf_counter()
        fits = [method.fit(problem.W, level) for level in levels]
        solutions = solve_levels(problem, levels, fits, exact_columns=c.exact_columns,
                                 block_size=c.block_size, dtype=PRECISIONS[c.precision])
        secs = (time.perf_counter() - started) / len(levels)
        tables[name] = [
            (level, solution, relative_error(problem, solution.weight, H), secs,
             method.level_cost(kind, level, rows, cols, collectors[name].positions))
            for level, solution in zip(levels, solutions)
        ]
    picks = choose_levels(
        [[e[4] for e in tables[n]] for n in names], [[e[2] for e in tables[n]] for n in names],
        value, names=names, unit=BUDGET_UNITS[kind],
    )
    chosen = {}
    for name, j in zip(names, picks):
        level, solution, err, secs, _ = tables[name][j]
        if level.kind == "binarize" and getattr(c, "alpha_rounds", 0) > 1:
            solution, secs = _solve(method, problems[name], level)
            err = relative_error(problems[name], solution.weight, collectors[name].hessian)
        chosen[name] = (level, solution, err, secs)
    return chosen


def quant_layer_class(module: nn.Module) -> type:
    return QuantConv2d if isinstance(module, nn.Conv2d) else QuantLinear
