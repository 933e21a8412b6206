"""Filter pruning of trained binary / DoReFa networks to a size budget, with per-layer ratios
chosen by Bayesian optimisation (Guerra et al. 2020; docs/design.md §5).

>>> pruned, report = apb.prune.prune_quantized(model, split.train, budget_ratio=0.25)

The result is a smaller dense quantized network: whole channels leave every layer that
carries them (:mod:`~apb.prune.channel_graph`), ranked by a saliency suited to quantized
filters (:mod:`~apb.prune.filter_saliency`), then the network is fine-tuned through the
trainer's step function.
"""

from .channel_graph import ChannelGraphError, ChannelGroup, channel_groups, remove_channels
from .filter_saliency import CRITERIA, filter_saliency
from .quantized_pruning import (
    BudgetError,
    PruningReport,
    QuantizedPruner,
    QuantizedPruningConfig,
    check_quantized,
    prune_quantized,
)

__all__ = [
    "CRITERIA", "BudgetError", "ChannelGraphError", "ChannelGroup", "PruningReport",
    "QuantizedPruner", "QuantizedPruningConfig", "channel_groups", "check_quantized",
    "filter_saliency", "prune_quantized", "remove_channels",
]
