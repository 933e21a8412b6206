"""The report of :func:`apb.pack.xor.encode_file`: bits per weight of each layer, and the
sizes of the packed and the XOR-encoded files."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.table import Table

from ...console import table_text
from ..header import PackedFileInfo
from .codec import EncodedLayer


@dataclass
class XorLayerRow:
    """One layer of an encoding report; bits are of the layer's weight matrix."""

    name: str
    kind: str
    shape: tuple[int, ...]
    weights: int
    care: int
    planes: int
    scheme: str
    n_in: int | None
    n_out: int | None
    patches: int
    mask_coding: str
    bits: dict[str, int]

    def per_weight(self, key: str) -> float:
        return self.bits[key] / self.weights


@dataclass
class XorReport:
    """What :func:`encode_file` wrote: per-layer bits and the two files' sizes."""

    rows: list[XorLayerRow]
    packed: PackedFileInfo
    encoded: PackedFileInfo
    seed: int
    notes: list[str] = field(default_factory=list)

    def totals(self) -> dict[str, int]:
        keys = self.rows[0].bits.keys() if self.rows else ()
        return {k: sum(r.bits[k] for r in self.rows) for k in keys}

    @property
    def weights(self) -> int:
        return sum(r.weights for r in self.rows)

    def to_dict(self) -> dict:
        n = max(self.weights, 1)
        return {
            "seed": self.seed,
            "layers": [{
                "name": r.name, "kind": r.kind, "shape": list(r.shape), "weights": r.weights,
                "care": r.care, "planes": r.planes, "scheme": r.scheme, "n_in": r.n_in,
                "n_out": r.n_out, "patches": r.patches, "mask_coding": r.mask_coding,
                "bits": r.bits,
                "bits_per_weight": {k: v / r.weights for k, v in r.bits.items()},
            } for r in self.rows],
            "bits_per_weight": {k: v / n for k, v in self.totals().items()},
            "packed_model_bytes": self.packed.model_bytes,
            "xor_model_bytes": self.encoded.model_bytes,
            "xor_header_bytes": self.encoded.header_bytes,
        }

    def table(self) -> str:
        t = Table(title="apb xor-encode (bits per weight of each layer's weight matrix)",
                  show_footer=True)
        n = max(self.weights, 1)
        tot = self.totals()
        cols = ["layer", "kind", "weights", "kept", "Q", "network", "encrypted", "patches",
                "mask", "total", "CSR", "bitmap", "dense"]
        footer = {"layer": "all", "weights": f"{self.weights:,}",
                  "kept": f"{sum(r.care for r in self.rows) / n:.3f}"}
        for key, col in (("encrypted", "encrypted"), ("patches", "patches"), ("mask", "mask"),
                         ("total", "total"), ("csr", "CSR"), ("bitmap", "bitmap"),
                         ("dense", "dense")):
            footer[col] = f"{tot.get(key, 0) / n:.3f}"
        for c in cols:
            t.add_column(c, footer=footer.get(c, ""), justify="left" if c == "layer" else "right")
        for r in self.rows:
            net = f"{r.n_in}x{r.n_out}" if r.scheme == "xor" else r.scheme
            t.add_row(r.name, r.kind, f"{r.weights:,}", f"{r.care / r.weights:.3f}",
                      str(r.planes), net, *(f"{r.per_weight(k):.3f}" for k in (
                          "encrypted", "patches", "mask", "total", "csr", "bitmap", "dense")))
        lines = [table_text(t, width=140).rstrip("\n"),
                 "kept: fraction of care bits (kept weights; APB: signs not inferable from S); "
                 "CSR / bitmap: those care bits' codes in the two sparse formats "
                 "(apb.memory); dense: every bit.",
                 f"packed model {self.packed.model_bytes:,} bytes -> XOR-encoded "
                 f"{self.encoded.model_bytes:,} bytes (+ {self.encoded.header_bytes:,} header)",
                 *self.notes]
        return "\n".join(lines) + "\n"


def layer_row(name: str, cfg: dict, e: EncodedLayer) -> XorLayerRow:
    p = e.planes
    xor = p.scheme == "xor"
    if e.mask is not None:
        mask = e.mask.coding
    else:
        mask = "from CSR" if e.inferred_signs else "none"
    return XorLayerRow(name, cfg["kind"], tuple(cfg["weight_shape"]), e.n_weights, p.care_count,
                       p.n_planes, p.scheme, p.network.n_in if xor else None,
                       p.network.n_out if xor else None, sum(p.n_patches), mask, e.bits())


