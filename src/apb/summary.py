"""Per-layer memory table of a (compressed) model, from the layers' declared storage.

Larq-style: every compressed layer's weight quantizer states what the packed format stores
(:class:`apb.memory.LayerStorage`), and so does every packed layer (the same numbers: a
model summarises to the same bytes before and after ``apb.pack_``); a compressed or packed
layer's bias and activation clip count at fp32; every other tensor of any model counts as
the packed file stores it (:mod:`apb.pack.state`: parameters and buffers, persistent or
not, at their own element size, a tensor shared under several names once, BatchNorm's
``num_batches_tracked`` not at all). So ``apb.summary(model).model_bytes`` is the packed
file's size less its header (docs/design.md §3), for the zoo's models and yours.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from rich.table import Table
from torch import nn

from .console import table_text
from .memory import dense_storage
from .nn import COMPRESSED_TYPES
from .nn.weight_quantizer import WeightQuantizer
from .pack import PackedLayer
from .pack.state import plain_tensors

FLOAT_BYTES = 4


@dataclass
class LayerRow:
    name: str
    shape: tuple[int, ...]
    method: str
    act_bits: int
    format: str
    alpha: float | None
    delta: float | None
    fp_fraction: float
    bits_per_weight: float
    bytes: int


@dataclass
class ModelSummary:
    rows: list[LayerRow]
    compressed_weights: int
    compressed_bits: int
    compressed_fp: int
    other_bytes: int  # biases, BatchNorm, embeddings, norms, buffers, activation scales
    layer_bytes: int  # weights of all Conv2d/Linear layers as stored (a tied one once)
    notes: list[str] = field(default_factory=list)

    @property
    def bits_per_weight(self) -> float:
        """Bits per weight over the compressed layers (32.0 if nothing is compressed)."""
        if not self.compressed_weights:
            return 32.0
        return self.compressed_bits / self.compressed_weights

    @property
    def fp_fraction(self) -> float:
        """Fraction of the compressed layers' weights stored at full precision."""
        if not self.compressed_weights:
            return 1.0
        return self.compressed_fp / self.compressed_weights

    @property
    def model_bytes(self) -> int:
        return self.layer_bytes + self.other_bytes

    def to_dict(self) -> dict:
        return {
            "layers": [asdict(r) for r in self.rows],
            "bits_per_weight": self.bits_per_weight,
            "fp_fraction": self.fp_fraction,
            "model_bytes": self.model_bytes,
            "other_bytes": self.other_bytes,
        }

    def table(self) -> str:
        t = Table(title="apb summary", show_footer=True)
        cols = ["layer", "shape", "method", "act", "alpha", "delta", "fp frac", "bits/w", "bytes"]
        footer = {
            "layer": "total", "fp frac": f"{self.fp_fraction:.4f}",
            "bits/w": f"{self.bits_per_weight:.3f}", "bytes": f"{self.model_bytes:,}",
        }
        for c in cols:
            t.add_column(c, footer=footer.get(c, ""), justify="left" if c == "layer" else "right")
        for r in self.rows:
            t.add_row(
                r.name, "x".join(map(str, r.shape)), r.method, str(r.act_bits),
                "" if r.alpha is None else f"{r.alpha:.4g}",
                "" if r.delta is None else f"{r.delta:.4g}",
                f"{r.fp_fraction:.4f}", f"{r.bits_per_weight:.3f}", f"{r.bytes:,}",
            )
        t.add_row("(other: biases, BN, scales)", "", "", "", "", "", "", "", f"{self.other_bytes:,}")
        return table_text(t) + "bits/w and fp frac: over compressed layers; bytes: whole model\n"

    def __str__(self) -> str:
        return self.table()


def summary(model: nn.Module) -> ModelSummary:
    """Per-layer table (shape, method, α, δ, fp fraction, bits per weight, bytes) with
    totals, using the accounting of :mod:`apb.memory`, for any model (module docstring).
    A plain Conv2d / Linear whose weight an earlier layer holds (tied) shows 0 bytes.
    ``print(apb.summary(model))``."""
    rows: list[LayerRow] = []
    counted: set[int] = set()  # plain layers' weights, counted in their rows
    comp_n = comp_bits = comp_fp = layer_bytes = 0
    for name, m in model.named_modules():
        fmt = None
        if isinstance(m, PackedLayer):
            st, info = m.storage(), m.describe()
            comp_n += st.n_weights
            comp_bits += st.total_bits
            comp_fp += st.n_fp
            act, method, shape = m.act_bits, m.method, m.weight_shape
        elif isinstance(m, COMPRESSED_TYPES):
            q = m.weight_quantizer
            st = q.storage(m.weight)
            info = q.describe(m.weight)
            comp_n += st.n_weights
            comp_bits += st.total_bits
            comp_fp += st.n_fp
            act = m.act_bits
            method = q.method
            shape = tuple(m.weight.shape)
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight
            tied = id(w) in counted  # stored once, with the first layer that holds it
            st, info, act, method = dense_storage(0 if tied else w.numel(),
                                                  8 * w.element_size()), {}, 32, "fp"
            fmt, shape = "tied" if tied else None, tuple(w.shape)
            counted.add(id(w))
        else:
            continue
        layer_bytes += st.total_bytes
        rows.append(LayerRow(
            name=name, shape=shape, method=method, act_bits=act,
            format=fmt or st.format, alpha=info.get("alpha"), delta=info.get("delta"),
            fp_fraction=st.fp_fraction, bits_per_weight=st.bits_per_weight, bytes=st.total_bytes,
        ))
    other = 0
    for mod in model.modules():
        if isinstance(mod, PackedLayer):
            # its bits, α and CSR are the layer storage; bias and clip scale count here,
            # as they do for the training layer it came from
            other += sum(t.numel() for t in mod.stored_extras()) * FLOAT_BYTES
        elif isinstance(mod, COMPRESSED_TYPES):
            other += _compressed_extras(mod)
    other += sum(e.nbytes for e in plain_tensors(model, _is_layer) if id(e.tensor) not in counted)
    return ModelSummary(rows, comp_n, comp_bits, comp_fp, other, layer_bytes)


def _is_layer(module: nn.Module) -> bool:
    """Packed and compressed layers: their tensors are counted above, not as plain ones."""
    return isinstance(module, (PackedLayer, *COMPRESSED_TYPES))


def _compressed_extras(layer: nn.Module) -> int:
    """Bytes a training layer's packed form stores besides its weight storage: the bias and
    the activation quantizer's floating-point tensors (the clip scale), at fp32; ``α`` is in
    the weight storage, and ``δ``, masks and counters are not stored."""
    n = 0 if layer.bias is None else layer.bias.numel()
    for mod in layer.modules():
        if mod is layer or isinstance(mod, WeightQuantizer):
            continue
        n += sum(p.numel() for p in mod.parameters(recurse=False))
        n += sum(b.numel() for b in mod.buffers(recurse=False) if b.is_floating_point())
    return n * FLOAT_BYTES
