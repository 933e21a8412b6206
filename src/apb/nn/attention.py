r"""Multi-head attention with its four projections as separate ``nn.Linear`` modules, so that
compression can reach them.

``nn.MultiheadAttention`` keeps the query, key and value projections in one packed
``in_proj_weight`` and applies them and ``out_proj`` through ``F.multi_head_attention_forward``,
never calling the projections as modules: no method can swap them for compressed layers, and
no hook sees their inputs. :class:`SplitMultiheadAttention` computes the same function,

.. math:: \mathrm{softmax}\!\Big(\frac{(x_q W_q^\top + b_q)(x_k W_k^\top + b_k)^\top}{\sqrt{d_h}}
          + M\Big)\,(x_v W_v^\top + b_v)\; W_o^\top + b_o

per head (:math:`d_h` = ``embed_dim / num_heads``, :math:`M` the attention and key-padding
masks), with ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` as ordinary ``nn.Linear``
layers, and takes the same call arguments. :func:`split_attention_` swaps every
``nn.MultiheadAttention`` of a model for one, weights copied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SplitMultiheadAttention(nn.Module):
    """A drop-in for ``nn.MultiheadAttention`` (without ``add_bias_kv`` / ``add_zero_attn``)
    whose projections are separate ``nn.Linear`` modules."""

    # nn.TransformerEncoderLayer reads these to decide on its fused fast path; a module
    # without a packed in-projection must take the ordinary path, which calls forward.
    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None

    def __init__(self, embed_dim: int, num_heads: int, *, kdim: int | None = None,
                 vdim: int | None = None, bias: bool = True, dropout: float = 0.0,
                 batch_first: bool = False):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout, self.batch_first = dropout, batch_first
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(vdim or embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    @classmethod
    def from_attention(cls, mha: nn.MultiheadAttention) -> SplitMultiheadAttention:
        """The same function as ``mha``, its weights copied."""
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("nn.MultiheadAttention with add_bias_kv or add_zero_attn cannot be "
                             "split into separate projections; leave it uncompressed")
        bias = mha.out_proj.bias is not None
        split = cls(mha.embed_dim, mha.num_heads, kdim=mha.kdim, vdim=mha.vdim, bias=bias,
                    dropout=mha.dropout, batch_first=mha.batch_first)
        device, dtype = mha.out_proj.weight.device, mha.out_proj.weight.dtype
        split.to(device=device, dtype=dtype)
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                weights = mha.in_proj_weight.chunk(3)
            else:
                weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
            biases = mha.in_proj_bias.chunk(3) if bias else (None,) * 3
            for proj, w, b in zip((split.q_proj, split.k_proj, split.v_proj), weights, biases):
                proj.weight.copy_(w)
                if b is not None:
                    proj.bias.copy_(b)
            split.out_proj.weight.copy_(mha.out_proj.weight)
            if bias:
                split.out_proj.bias.copy_(mha.out_proj.bias)
        split.train(mha.training)
        return split

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As ``nn.MultiheadAttention.forward``: ``(output, weights or None)``."""
        batched = query.dim() == 3
        if not batched:  # unbatched (L, E): a batch of one
            query, key, value = (t.unsqueeze(1 if not self.batch_first else 0)
                                 for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first:  # (L, N, E) -> (N, L, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, length, _ = query.shape
        source = key.shape[1]
        q = self._heads(self.q_proj(query))
        k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        mask = self._additive_mask(attn_mask, key_padding_mask, n, length, source, q.dtype)
        if is_causal and mask is None:
            mask = torch.full((length, source), float("-inf"), dtype=q.dtype,
                              device=q.device).triu(1)
        scores = (q @ k.transpose(-2, -1)) / self.head_dim ** 0.5
        if mask is not None:
            scores = scores + mask
        weights = scores.softmax(dim=-1)
        p = self.dropout if self.training else 0.0
        out = F.dropout(weights, p) @ v
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, self.embed_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(1 if not self.batch_first else 0)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(dim=1)
        return out, weights if batched else weights.squeeze(0)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        return x.view(n, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _additive_mask(self, attn_mask, key_padding_mask, n, length, source, dtype):
        """Both masks as one additive float mask broadcastable to (N, heads, L, S)."""
        mask = None
        if attn_mask is not None:
            mask = _as_additive(attn_mask, dtype)
            if mask.dim() == 3:  # (N * heads, L, S)
                mask = mask.view(n, self.num_heads, length, source)
        if key_padding_mask is not None:
            padding = _as_additive(key_padding_mask, dtype).view(n, 1, 1, source)
            mask = padding if mask is None else mask + padding
        return mask

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"batch_first={self.batch_first}")


def _as_additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True = masked out) as 0 / -inf; a float mask as it is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf"))
    return mask.to(dtype)


def split_attention_(model: nn.Module) -> list[str]:
    """Replace every ``nn.MultiheadAttention`` of ``model`` (in place) by an equivalent
    :class:`SplitMultiheadAttention`; returns the names replaced. Idempotent."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    for name in names:
        model.set_submodule(name, SplitMultiheadAttention.from_attention(
            model.get_submodule(name)))
    return names
