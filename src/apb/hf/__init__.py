"""Hugging Face models from a local directory, as first-class inputs: nothing is downloaded.

>>> local = apb.hf.load_local("path/to/all-MiniLM-L6-v2")   # config.json + model.safetensors
>>> batches = apb.hf.text_batches(local.tokenizer, texts, batch_size=32)
>>> embeddings = apb.hf.embed(local.model, batches, local.pooling)

A directory written by ``save_pretrained`` or a sentence-transformers directory (its pooling
read from ``1_Pooling/config.json``) both load. Needs the optional dependency
``transformers`` (``pip install 'apb[hf]'``); only safetensors weights are read.
"""

from .embeddings import (
    MIN_CALIBRATION_TEXTS,
    MIN_EVAL_TEXTS,
    embed,
    fidelity,
    pool,
    text_batches,
)
from .local import HFError, LocalModel, load_local, skeleton

__all__ = ["MIN_CALIBRATION_TEXTS", "MIN_EVAL_TEXTS", "HFError", "LocalModel", "embed",
           "fidelity", "load_local", "pool", "skeleton", "text_batches"]
