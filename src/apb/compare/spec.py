"""Method names of ``apb compare``: ``base[@knob][+quantizer]``.

The suffix after ``@`` is the method's own knob, the one that trades accuracy for memory:

===========================  ===========================================================
``fp``                       full precision
``bnn``                      binary weights, per-channel scale
``dorefa2`` (``dorefaK``)    DoReFa ``K``-bit weights
``magnitude@S``              gradual magnitude pruning to sparsity ``S`` (default 0.9)
``magnitude@S+bnn``          pruning to ``S``, the kept weights binary (``+dorefaK``: K-bit)
``quantized-pruning@R``      a binary network with whole filters removed, size reduced by
                             the fraction ``R`` (default 0.25), per-layer ratios by BO
``obc-prune@S``              OBC post-training pruning of the ``fp`` model to sparsity ``S``
``obc-quant@B``              OBC post-training ``B``-bit quantization of the ``fp`` model
``obc-compound@S/B``         OBC pruning to ``S``, then ``B``-bit quantization (0.5/2)
``apb-ptq@b``                post-training APB of the ``fp`` model at ``b`` bits/weight
``apb-naive@b``              the band rule on the ``fp`` weights, no compensation
``apb@F``                    APB trained with the fraction ``F`` of full-precision weights
===========================  ===========================================================

Post-training methods compress the ``fp`` model of the same seed, so they cost no
training of their own; every trained method gets the same number of epochs (quantized
pruning spends a fixed share of them on fine-tuning after the filters are removed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..jobs.ptq import PTQJob, ptq_config

KINDS = ("train", "ptq", "quantized-pruning")
DEFAULT_KNOBS = {
    "magnitude": "0.9", "quantized-pruning": "0.25", "obc-prune": "0.5", "obc-quant": "4",
    "obc-compound": "0.5/2", "apb-ptq": "1.6", "apb-naive": "1.6", "apb": "0.02",
}
_DOREFA = re.compile(r"dorefa([1-8])$")


class MethodSpecError(ValueError):
    """A method name of ``apb compare --methods`` that cannot be read."""


@dataclass(frozen=True)
class MethodSpec:
    """One method of a comparison, resolved to what runs it.

    Attributes:
        label: the name as given (normalised: default knobs written out).
        kind: ``"train"`` (a training run), ``"ptq"`` (post-training, on the ``fp`` model of
            the same seed) or ``"quantized-pruning"`` (a binary training run, then filter
            pruning and fine-tuning).
        train_method, method_options: the training method and its options (``train`` and
            ``quantized-pruning``; ``fp`` for ``ptq``).
        ptq_method, ptq_target: ``apb ptq`` method and target (``ptq`` only).
        budget_ratio: size reduction of quantized pruning.
    """

    label: str
    kind: str
    train_method: str
    method_options: dict[str, Any] = field(default_factory=dict)
    ptq_method: str | None = None
    ptq_target: str | None = None
    budget_ratio: float | None = None

    @property
    def training_key(self) -> tuple:
        """Runs with equal keys train the same model: the ``fp`` model behind ``fp`` and
        every post-training method is trained once per seed."""
        return (self.kind == "quantized-pruning", self.train_method,
                tuple(sorted(self.method_options.items())))


def parse_methods(text: str, act_bits: int = 32) -> list[MethodSpec]:
    """``--methods`` (comma-separated names, see the module docstring) as specs."""
    names = [n.strip() for n in _split_top(text) if n.strip()]
    if not names:
        raise MethodSpecError("--methods is empty; e.g. fp,bnn,dorefa2,magnitude@0.9,apb@0.02")
    specs = [parse_method(n, act_bits) for n in names]
    labels = [s.label for s in specs]
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise MethodSpecError(f"method {twice[0]} is listed twice")
    return specs


def _split_top(text: str) -> list[str]:
    # "obc-compound@0.5/2" has no comma, so a plain split is enough; kept as a function so
    # the grammar has one place to grow.
    return str(text).split(",")


def parse_method(name: str, act_bits: int = 32) -> MethodSpec:
    """One method name as a :class:`MethodSpec`; ``act_bits`` applies to every compressed
    layer of the trained methods (post-training methods keep full-precision activations)."""
    head, plus, quant = name.partition("+")
    base, at, knob = head.partition("@")
    base = base.strip().lower()
    if at and not knob:
        raise MethodSpecError(f"{name!r}: nothing after '@'")
    knob = knob or DEFAULT_KNOBS.get(base, "")
    if at and base not in DEFAULT_KNOBS:
        raise MethodSpecError(f"{name!r}: {base} takes no '@' knob")
    if plus and base != "magnitude":
        raise MethodSpecError(f"{name!r}: only magnitude@S takes a '+quantizer' suffix")
    act = {"act_bits": act_bits}
    if base == "fp":
        return MethodSpec("fp", "train", "fp")
    if base == "bnn":
        return MethodSpec("bnn", "train", "bnn", act)
    if m := _DOREFA.match(base):
        bits = int(m.group(1))
        return MethodSpec(base, "train", "dorefa", {**act, "bits": bits})
    if base == "magnitude":
        sparsity = _fraction(name, knob, "sparsity", upper_open=True)
        if not plus:
            return MethodSpec(f"magnitude@{knob}", "train", "magnitude", {"sparsity": sparsity})
        quant = quant.strip().lower()
        bits = 1 if quant == "bnn" else int(m.group(1)) if (m := _DOREFA.match(quant)) else None
        if bits is None:
            raise MethodSpecError(f"{name!r}: the quantizer after '+' must be bnn or dorefaK")
        return MethodSpec(f"magnitude@{knob}+{quant}", "train", "prune_quant",
                          {**act, "sparsity": sparsity, "bits": bits})
    if base == "quantized-pruning":
        ratio = _fraction(name, knob, "size reduction", upper_open=True)
        if ratio == 0.0:
            raise MethodSpecError(f"{name!r}: the size reduction must be above 0")
        return MethodSpec(f"quantized-pruning@{knob}", "quantized-pruning", "bnn", act,
                          budget_ratio=ratio)
    if base == "apb":
        fraction = _fraction(name, knob, "full-precision fraction")
        return MethodSpec(f"apb@{knob}", "train", "apb",
                          {**act, "fp_fraction": fraction, "budget_scope": "model"})
    if base in ("obc-prune", "obc-quant", "obc-compound", "apb-ptq", "apb-naive"):
        target = _ptq_target(name, base, knob)
        return MethodSpec(f"{base}@{knob}", "ptq", "fp", ptq_method=base, ptq_target=target)
    known = "fp, bnn, dorefaK, magnitude@S[+bnn|+dorefaK], quantized-pruning@R, " \
            "obc-prune@S, obc-quant@B, obc-compound@S/B, apb-ptq@b, apb-naive@b, apb@F"
    raise MethodSpecError(f"unknown method {name!r}; methods: {known}")


def _fraction(name: str, knob: str, what: str, upper_open: bool = False) -> float:
    try:
        value = float(knob)
    except ValueError:
        raise MethodSpecError(f"{name!r}: the {what} after '@' must be a number, got {knob!r}"
                              ) from None
    if not 0.0 <= value <= 1.0 or (upper_open and value == 1.0):
        bound = "[0, 1)" if upper_open else "[0, 1]"
        raise MethodSpecError(f"{name!r}: the {what} must lie in {bound}, got {value}")
    return value


def _ptq_target(name: str, base: str, knob: str) -> str:
    """The ``apb ptq --target`` of a post-training method (checked by ``apb.jobs.ptq``)."""
    if base == "obc-compound":
        sparsity, slash, bits = knob.partition("/")
        if not slash:
            raise MethodSpecError(f"{name!r}: obc-compound takes @SPARSITY/BITS, e.g. @0.5/2")
        target = f"sparsity={sparsity},bits={bits}"
    else:
        target = knob
    try:
        ptq_config(PTQJob(method=base, target=target)).validate()
    except ValueError as err:
        raise MethodSpecError(f"{name!r}: {err}") from None
    return target
