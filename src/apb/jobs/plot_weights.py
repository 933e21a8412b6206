"""``apb plot-weights``: where an APB layer's latent weights fall against its band.

APB keeps a weight binary (``±α``) when ``||w| − α| < δ`` and at full precision otherwise,
so the histogram of ``w`` shows a band around ``±α`` of half-width ``δ`` and two kinds of
full-precision weights: the tails beyond ``α + δ`` and the middle below ``α − δ``. The bars
are split by the layer's real mask (what the packed model stores), and ``±α``,
``±(α ± δ)`` are drawn as lines (layer means when ``α, δ`` are per channel).
"""

from __future__ import annotations

import math

import torch

from ..io import write_figure
from ..nn import APBWeightQuantizer
from ..train import build_model_from_checkpoint


def apb_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """``(name, layer)`` of every layer of ``model`` whose weight quantizer is APB's."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(getattr(m, "weight_quantizer", None), APBWeightQuantizer)]


@torch.no_grad()
def layer_histogram_data(layer: torch.nn.Module) -> dict:
    """The latent weights of one APB layer split by its band mask, with ``α`` and ``δ``."""
    wq = layer.weight_quantizer
    weight = layer.weight.detach().float().cpu()
    mask = wq.band_mask(layer.weight).cpu()  # in budget mode this also sets δ
    return {
        "binary": weight[mask].numpy(), "full_precision": weight[~mask].numpy(),
        "alpha": float(wq.alpha.detach().clamp_min(1e-8).mean()),
        "delta": float(wq.delta.detach().mean()),
        "per_channel": bool(wq.per_channel),
    }


def plot_weights(checkpoint: str, output: str, layer: str | None = None) -> list[str]:
    """Draw the histogram of one APB layer (``layer``) or of every APB layer of a checkpoint
    into ``output`` (PNG, written atomically); returns the layers drawn."""
    model, ckpt = build_model_from_checkpoint(checkpoint)
    layers = apb_layers(model)
    if not layers:
        raise ValueError(f"{checkpoint} has no APB layer (it was trained with method "
                         f"{ckpt['method']['name']!r}); plot-weights draws APB layers")
    if layer is not None:
        names = [n for n, _ in layers]
        if layer not in names:
            raise ValueError(f"{checkpoint} has no APB layer {layer!r}; its APB layers: "
                             f"{', '.join(names)}")
        layers = [(n, m) for n, m in layers if n == layer]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(2, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(layers):]:
        ax.set_visible(False)
    for ax, (name, m) in zip(axes.flat, layers):
        d = layer_histogram_data(m)
        n_bin, n_fp = len(d["binary"]), len(d["full_precision"])
        lo = min(d["binary"].min(initial=0.0), d["full_precision"].min(initial=0.0))
        hi = max(d["binary"].max(initial=0.0), d["full_precision"].max(initial=0.0))
        bins = torch.linspace(lo, hi, 121).numpy()
        ax.hist([d["binary"], d["full_precision"]], bins=bins, stacked=True,
                color=["C0", "C3"],
                label=[f"binary ±α ({n_bin:,})", f"full precision ({n_fp:,}, "
                       f"{100 * n_fp / max(1, n_bin + n_fp):.2f} %)"])
        ax.set_yscale("log")
        a, dl = d["alpha"], d["delta"]
        for sign in (-1, 1):
            ax.axvline(sign * a, color="k", linewidth=1)
            for edge in (a - dl, a + dl):
                if edge > 0:
                    ax.axvline(sign * edge, color="k", linestyle="--", linewidth=0.8)
        mean = " (layer means)" if d["per_channel"] else ""
        ax.set_title(f"{name}: α = {a:.4g}, δ = {dl:.4g}{mean}", fontsize=10)
        ax.set_xlabel("latent weight")
        ax.set_ylabel("count (log)")
        ax.legend(fontsize=8)
    write_figure(fig, output, dpi=110)
    return [n for n, _ in layers]
