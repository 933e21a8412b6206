r"""Sentence embeddings of a transformer encoder, and how faithfully a compressed model keeps
them.

An embedding pools the last hidden states :math:`h_t` over the tokens the attention mask
keeps: the mean :math:`\sum_t m_t h_t / \sum_t m_t`, the first (CLS) token, or the
element-wise max; optionally L2-normalised.

Fidelity of a compressed model :math:`\hat f` to the original :math:`f` on texts
:math:`s_1..s_n`:

- ``cosine``: the mean over texts of :math:`\cos(f(s_i), \hat f(s_i))`;
- ``spearman``: Spearman's rank correlation between the pairwise cosine similarities
  :math:`\cos(f(s_i), f(s_j))` and :math:`\cos(\hat f(s_i), \hat f(s_j))`, :math:`i < j` (does
  the compressed model rank pairs of texts as the original does);
- ``top10_overlap``: the mean share of each text's 10 nearest neighbours (by cosine, itself
  excluded) that both models agree on (retrieval).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MIN_CALIBRATION_TEXTS = 8
"""Fewest texts a post-training calibration of a transformer takes."""

MIN_EVAL_TEXTS = 10
"""Fewest held-out texts a fidelity measurement takes."""


def text_batches(tokenizer: Any, texts: Sequence[str], batch_size: int = 32,
                 max_length: int = 128) -> list[dict[str, torch.Tensor]]:
    """``texts`` tokenized in batches of keyword arguments for the model (padded to the
    longest text of each batch, truncated to ``max_length`` tokens)."""
    if batch_size < 1 or max_length < 2:
        raise ValueError(f"batch_size must be >= 1 and max_length >= 2, got {batch_size}, "
                         f"{max_length}")
    return [dict(tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                           max_length=max_length, return_tensors="pt"))
            for i in range(0, len(texts), batch_size)]


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """One vector per sequence from token states ``hidden`` [N, T, D] and mask [N, T]."""
    keep = mask.unsqueeze(-1).to(hidden.dtype)
    if pooling == "mean":
        return (hidden * keep).sum(1) / keep.sum(1).clamp_min(1.0)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "max":
        return hidden.masked_fill(keep == 0, float("-inf")).amax(1)
    raise ValueError(f"pooling must be mean, cls or max, got {pooling!r}")


@torch.no_grad()
def embed(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], pooling: str = "mean",
          normalize: bool = False) -> torch.Tensor:
    """The embeddings [N, D] of every text of ``batches`` (from :func:`text_batches`)."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for batch in batches:
            result = model(**batch)
            hidden = result.last_hidden_state if hasattr(result, "last_hidden_state") \
                else result[0]
            out.append(pool(hidden.float(), batch["attention_mask"], pooling))
    finally:
        model.train(was_training)
    if not out:
        raise ValueError("no texts to embed")
    embeddings = torch.cat(out)
    return F.normalize(embeddings, dim=-1) if normalize else embeddings


def fidelity(reference: torch.Tensor, compressed: torch.Tensor, k: int = 10) -> dict:
    """``{"cosine", "spearman", "top10_overlap", "n_texts"}`` of ``compressed`` embeddings to
    ``reference`` ones (the same texts in the same order; see the module docstring)."""
    if reference.shape != compressed.shape or reference.dim() != 2:
        raise ValueError(f"embeddings must be two [N, D] matrices of one shape, got "
                         f"{tuple(reference.shape)} and {tuple(compressed.shape)}")
    n = reference.shape[0]
    if n < 3:
        raise ValueError(f"fidelity needs at least 3 texts, got {n}")
    from scipy.stats import spearmanr  # scipy.stats alone costs more than the rest of `import apb`
    a = F.normalize(reference.double(), dim=-1)
    b = F.normalize(compressed.double(), dim=-1)
    sim_a, sim_b = a @ a.T, b @ b.T
    upper = torch.triu_indices(n, n, offset=1)
    rho = spearmanr(sim_a[upper[0], upper[1]].numpy(), sim_b[upper[0], upper[1]].numpy())
    k = min(k, n - 1)
    eye = torch.eye(n, dtype=torch.bool)
    near_a = sim_a.masked_fill(eye, -2.0).topk(k, dim=1).indices
    near_b = sim_b.masked_fill(eye, -2.0).topk(k, dim=1).indices
    overlap = np.mean([len(set(x.tolist()) & set(y.tolist())) / k
                       for x, y in zip(near_a, near_b)])
    return {"cosine": float((a * b).sum(1).mean()), "spearman": float(rho.statistic),
            f"top{k}_overlap": float(overlap), "n_texts": int(n)}
