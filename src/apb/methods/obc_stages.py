r"""Sequential calibration in stages, at a cost of about one pass per block.

Sequential calibration (:func:`apb.methods.ptq_` with ``sequential``) fits each layer to the
full-precision output from the inputs it gets once the layers before it are compressed. It
needs, per layer, its inputs in both models (:class:`~.obc_calib.PairedCollector`). Running
both whole models over the calibration set for every layer costs ``2 x layers`` passes (72
for a 6-block BERT); this module brings it down in three ways.

**Stages.** Layers that receive the very same input tensor (the query, key and value
projections of an attention block) cannot feed each other: their input exists before any of
them runs. One recording forward of the first calibration batch finds them; each group is a
*stage*, calibrated from one collection, its layers solved together. Stages run in the order
of their first call.

**Early stop.** A stage's inputs are known as soon as its first layer is called, so a
forward-pre hook on it ends the pass there (:class:`~.obc_calib.StopForward`).

**Block chain.** When every layer to compress lies in the blocks of one ``nn.ModuleList``
(a transformer's encoder layers) and the recording forward shows the blocks chained, each
called once, in order, with the previous block's output (or its first element) as its first
argument and the very same other arguments and keyword arguments as the first block, the
blocks are run one at a time from cached inputs, as GPTQ does (Frantar et al., ICLR 2023,
§5): the inputs of the first block holding a layer to compress are captured once (a pass
stopped there), and then per block

1. a copy of the still full-precision block runs once on its full-precision inputs
   :math:`X_f`, keeping the input rows of every stage and its output (the next :math:`X_f`);
2. each stage: the block being compressed runs on its inputs :math:`X_q`, stopped at the
   stage, paired with the kept rows; the stage's layers are solved and written;
3. the compressed block runs once more on :math:`X_q` for the next :math:`X_q`.

About one forward of the full-precision block and one and a half of the compressed one per
block: two to three model passes in all. Models with BatchNorm statistics (corrected after
every stage by whole-model passes) and models where a layer to compress is called more than
once per forward take the general path (whole-model passes, stopped early when possible).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .calibration import CalibrationSet
from .obc_calib import (
    HessianCollector,
    PairedCollector,
    StopForward,
    batchnorms,
    collect_hessians,
    collect_paired,
    input_rows,
)
from .obc_layer import OBCError


@dataclass
class _Recording:
    calls: list[tuple[str, int]] = field(default_factory=list)  # (layer, id of its input)
    inputs: list[torch.Tensor] = field(default_factory=list)  # keeps the ids valid
    blocks: list[tuple[int, tuple | None, dict | None, Any]] = field(default_factory=list)


def _first_tensor(output: Any) -> Any:
    if isinstance(output, (tuple, list)) and output:
        return output[0]
    return output


@torch.no_grad()
def _record(model: nn.Module, names: list[str], calib: CalibrationSet,
            blocks: list[nn.Module]) -> _Recording:
    """One forward of the first batch with hooks on the layers and the candidate blocks."""
    rec = _Recording()
    handles = []
    for name in names:
        def hook(module, args, name=name):
            rec.calls.append((name, id(args[0])))
            rec.inputs.append(args[0])
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    for k, block in enumerate(blocks):
        def pre(module, args, kwargs, k=k):
            rec.blocks.append((k, args, dict(kwargs), None))

        def post(module, args, kwargs, output, k=k):
            rec.blocks.append((k, None, None, output))
        handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(block.register_forward_hook(post, with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        calib.run(model, next(iter(calib)))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return rec


def _candidate_blocks(model: nn.Module, names: list[str]) -> tuple[str, list[nn.Module], list[int]]:
    """The ``nn.ModuleList`` (its name and blocks) whose children hold every layer of
    ``names`` (the one with most children), and for each layer the index of its block;
    ``("", [], [])`` if there is none."""
    best: tuple[str, list[nn.Module], list[int]] = ("", [], [])
    for prefix, m in model.named_modules():
        if not isinstance(m, nn.ModuleList) or len(m) <= len(best[1]):
            continue
        lead = prefix + "." if prefix else ""
        owner = []
        for name in names:
            head, _, rest = name[len(lead):].partition(".")
            if not name.startswith(lead) or not head.isdigit() or int(head) >= len(m) \
                    or not rest:
                break
            owner.append(int(head))
        else:
            best = (lead, list(m), owner)
    return best


def _chained(rec: _Recording, first: int, last: int) -> bool:
    """Whether blocks ``first..last`` were each called once, in order, each on the previous
    one's output, with the same other arguments as block ``first``."""
    events = [e for e in rec.blocks if first <= e[0] <= last]
    expect = [(k, pre) for k in range(first, last + 1) for pre in (True, False)]
    if [(k, args is not None) for k, args, _, _ in events] != expect:
        return False
    pres, outs = events[0::2], [e[3] for e in events[1::2]]
    _, args0, kwargs0, _ = pres[0]
    if not args0 or not isinstance(args0[0], torch.Tensor):
        return False
    for i, (_, args, kwargs, _) in enumerate(pres[1:]):
        if len(args) != len(args0) or args[0] is not _first_tensor(outs[i]):
            return False
        if any(a is not b for a, b in zip(args[1:], args0[1:])):
            return False
        if kwargs.keys() != kwargs0.keys() or any(kwargs[k] is not kwargs0[k] for k in kwargs):
            return False
    return True


class Sequential:
    """The stages of sequential calibration and their collections (module docstring):
    ``stages`` lists them in order, and :meth:`collect` gives the statistics of a stage's
    input once the stages before it are written into the model: a
    :class:`~.obc_calib.HessianCollector` for the very first stage (nothing compressed can
    have changed its inputs yet), else a :class:`~.obc_calib.PairedCollector`.
    ``chained`` says whether the block chain is used."""

    def __init__(self, model: nn.Module, names: list[str], calib: CalibrationSet):
        self.model, self.calib = model, calib
        prefix, blocks, owner = _candidate_blocks(model, names)
        rec = _record(model, names, calib, blocks)
        counts = dict.fromkeys(names, 0)
        for n, _ in rec.calls:
            counts[n] += 1
        missing = [n for n in names if counts[n] == 0]
        if missing:
            raise OBCError(
                f"layer {missing[0]!r} was never called during calibration (its parent "
                "computes with its weight directly, e.g. nn.MultiheadAttention); OBC cannot "
                "see its inputs: leave it out with filter_fn")
        self.early_stop = all(c == 1 for c in counts.values())
        if self.early_stop:
            groups: dict[int, list[str]] = {}
            for n, key in rec.calls:
                groups.setdefault(key, []).append(n)
            self.stages = list(groups.values())
        else:
            self.stages = [[n] for n in names]
        del rec.inputs[:]
        self.chain = None
        if blocks and self.early_stop and not batchnorms(model) \
                and _chained(rec, min(owner), max(owner)):
            self.chain = _Chain(prefix, blocks, dict(zip(names, owner)))
        self.chained = self.chain is not None
        self.reference = None if self.chained else copy.deepcopy(model)
        self._started = False

    def collect(self, stage: list[str]) -> HessianCollector:
        first = not self._started
        self._started = True
        if self.chain is not None:
            return self.chain.collect(self.model, stage, self.calib, first)
        if first:
            return collect_hessians(self.model, stage[:1], self.calib,
                                    stop=self.early_stop)[stage[0]]
        return collect_paired(self.reference, self.model, stage, self.calib,
                              stop=self.early_stop)


class _Chain:
    """Cached block inputs of both models (see the module docstring)."""

    def __init__(self, prefix: str, blocks: list[nn.Module], owner: dict[str, int]):
        self.prefix, self.blocks, self.owner = prefix, blocks, owner
        self.first = min(owner.values())
        self.xf: list[torch.Tensor] = []  # per batch: the current block's inputs
        self.xq: list[torch.Tensor] = []
        self.next_xf: list[torch.Tensor] = []
        self.extra: list[tuple[tuple, dict, torch.Tensor | None]] = []
        self.current = -1
        self.ref_rows: dict[str, list[torch.Tensor]] = {}

    def _local(self, name: str) -> str:
        """``name`` inside its block."""
        return name[len(self.prefix):].partition(".")[2]

    def _capture(self, model: nn.Module, calib: CalibrationSet) -> None:
        """The first block's inputs for every batch, from forwards stopped there."""
        xs, extra, mask = [], [], None

        def grab(module, args, kwargs):
            xs.append(args[0])
            extra.append((args[1:], dict(kwargs), mask))
            raise StopForward
        handle = self.blocks[self.first].register_forward_pre_hook(grab, with_kwargs=True)
        was_training = model.training
        model.eval()
        try:
            for batch in calib:
                mask = calib.token_mask(batch)
                try:
                    calib.run(model, batch)
                except StopForward:
                    pass
        finally:
            handle.remove()
            model.train(was_training)
        if len(xs) != len(calib):
            raise OBCError("sequential calibration: a calibration batch never reached the "
                           "first block to compress")
        self.xf, self.xq, self.extra = list(xs), list(xs), extra

    def _run(self, block: nn.Module, x: torch.Tensor, b: int, hooks=()) -> Any:
        """Block ``block`` on batch ``b``'s input ``x`` (None when a hook stopped it)."""
        args, kwargs, _ = self.extra[b]
        handles = [m.register_forward_pre_hook(h) for m, h in hooks]
        was_training = block.training
        block.eval()
        try:
            return _first_tensor(block(x, *args, **kwargs))
        except StopForward:
            return None
        finally:
            block.train(was_training)
            for h in handles:
                h.remove()

    def _start_block(self, k: int) -> None:
        """The full-precision block ``k`` (a copy taken before any of it is compressed) on
        the cached full-precision inputs: the input rows of every layer of the block, and
        the next block's inputs."""
        reference = copy.deepcopy(self.blocks[k]).eval()
        names = [n for n, o in self.owner.items() if o == k]
        self.ref_rows = {n: [] for n in names}
        self.next_xf = []
        for b, x in enumerate(self.xf):
            mask = self.extra[b][2]
            hooks = [(reference.get_submodule(self._local(n)),
                      lambda m, a, n=n, mask=mask: self.ref_rows[n].append(
                          input_rows(m, a[0].detach(), mask).float().cpu()))
                     for n in names]
            self.next_xf.append(self._run(reference, x, b, hooks))

    def _finish_block(self, k: int) -> None:
        """The compressed block ``k`` on its cached inputs: the next block's inputs."""
        self.xq = [self._run(self.blocks[k], x, b) for b, x in enumerate(self.xq)]
        self.xf, self.next_xf = self.next_xf, []

    @torch.no_grad()
    def collect(self, model: nn.Module, stage: list[str], calib: CalibrationSet,
                first: bool) -> HessianCollector:
        if self.current < 0:
            self._capture(model, calib)
            self.current = self.first
            self._start_block(self.first)
        k = self.owner[stage[0]]
        while self.current < k:
            self._finish_block(self.current)
            self.current += 1
            self._start_block(self.current)
        module = model.get_submodule(stage[0])
        if first:
            collector = HessianCollector(stage[0], module)
        else:
            collector = PairedCollector(stage[0], module, {
                n: model.get_submodule(n).weight.detach().flatten(1).cpu() for n in stage})
        collector.stop = True
        rows = self.ref_rows[stage[0]]
        for n in stage:
            self.ref_rows.pop(n, None)
        for b, x in enumerate(self.xq):
            collector.mask = self.extra[b][2]
            if not first:
                collector.feed(rows[b])
            self._run(self.blocks[k], x, b, [(module, collector)])
        return collector
