"""``apb bench transformer``: the whole encoder forward of a local Hugging Face model, packed
apb against the same model in torch fp32, torch dynamic int8 and ONNX Runtime int8.

The four implementations, built from one local directory (:func:`apb.hf.load_local`):

- ``torch_fp32``: the model as it loads, eval mode;
- ``torch_int8_dynamic``: ``torch.ao.quantization.quantize_dynamic`` of its ``nn.Linear``
  layers (int8 weights, activations quantized per call);
- ``ort_int8``: the fp32 model exported to ONNX and dynamically quantized
  (``onnxruntime.quantization.quantize_dynamic``, int8 weights), run by ONNX Runtime;
- ``apb``: post-training compressed (:func:`apb.methods.ptq_`, default post-training APB at
  1.6 bits per weight, calibrated on real text), packed (:func:`apb.pack_`) and run with
  int8 inputs (:func:`apb.pack.set_input_precision`: each token quantized to int8 per
  token, the Linear layers one :func:`apb.kernels.linear_1xf` call each);
- ``apb_exact``: the same packed model on its exact path (float inputs, ``bgemm_1xf``).

Inputs are ``batch`` real sentences (Python's documentation) tokenized to exactly ``seq``
tokens. Each sequence length is timed in interleaved rounds (the machine's speed drifts);
the report gives each implementation's median time and the median over rounds of each
speed-up. The packed model is checked against the compressed, unpacked model it packs:
``max_rel_error``, each path's largest error on the timed inputs' hidden states (the exact
path's is float rounding: the packed kernels compute what was compressed), and
``embedding_cosine``, the mean cosine
of pooled sentence embeddings of ``texts`` held-out sentences from each packed path (and
from the fp32 model, for scale) to the compressed model's: ``1 − cosine`` is what the int8
inputs cost.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from rich.table import Table
from torch import nn

from ..console import table_text
from ..data.texts import python_docs_sentences
from ..hf import embed, load_local, text_batches
from ..kernels import active_isa
from ..methods import APBPTQConfig, ptq_
from ..pack import pack_, set_input_precision
from ..summary import summary
from .ort import dynamic_int8_session
from .timing import interleaved_ms, median_ratio, thread_count

IMPLS = ("torch_fp32", "torch_int8_dynamic", "ort_int8", "apb_exact", "apb")
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def fixed_length_batch(tokenizer, texts: list[str], seq: int) -> dict[str, torch.Tensor]:
    """``texts`` tokenized to exactly ``seq`` tokens (long texts joined, then cut; a
    tokenizer cannot truncate below its two special tokens, so the ids are cut after)."""
    batch = tokenizer([" ".join(texts)], truncation=True, max_length=max(seq, 2),
                      return_tensors="pt")
    if batch["input_ids"].shape[1] < seq:
        raise ValueError(f"the benchmark texts give fewer than {seq} tokens")
    return {k: v[:, :seq].contiguous() for k, v in batch.items() if k in INPUTS}


class _Hidden(nn.Module):
    """The encoder as a function of tensors only (for export), returning the last hidden
    states."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors):
        return self.model(**dict(zip(self.names, tensors))).last_hidden_state


def ort_int8_session(model: nn.Module, example: dict[str, torch.Tensor], threads: int,
                     folder: Path):
    """An ONNX Runtime session of ``model`` exported and dynamically quantized to int8."""
    names = tuple(example)
    fp32 = folder / "model.onnx"
    # eval() first: the exporter puts a module back in the mode it found it in, and a new
    # wrapper is in training mode, which would switch `model`'s dropout on for good
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's tracer warnings
        torch.onnx.export(_Hidden(model, names).eval(), tuple(example.values()), str(fp32),
                          input_names=list(names), output_names=["hidden"],
                          dynamic_axes={n: {0: "batch", 1: "seq"} for n in names},
                          dynamo=False, opset_version=17)
    return dynamic_int8_session(fp32, threads)


def build_impls(directory: str, threads: int, config: APBPTQConfig, calib: int,
                folder: Path, progress: Callable[[str], None]):
    """``(callables by impl name taking a batch, the compressed unpacked model, the packed
    one, the local model)``."""
    local = load_local(directory)
    fp32 = local.model
    progress("torch dynamic int8")
    int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {nn.Linear},
                                                  dtype=torch.qint8)
    progress("apb: post-training compression")
    compressed = copy.deepcopy(fp32)
    texts = python_docs_sentences()
    ptq_(compressed, config, text_batches(local.tokenizer, texts[:calib], 32),
         filter_fn=lambda m, name: type(m) is nn.Linear and name.startswith("encoder."))
    exact = pack_(copy.deepcopy(compressed).eval())
    packed = set_input_precision(copy.deepcopy(exact), "int8")
    progress("ONNX Runtime int8: export and quantize")
    example = fixed_length_batch(local.tokenizer, texts[:64], 16)
    session = ort_int8_session(fp32, example, threads, folder)

    def torch_call(model):
        def run(batch):
            with torch.inference_mode():
                return model(**batch).last_hidden_state
        return run

    def ort_call(batch):
        return session.run(None, {k: v.numpy() for k, v in batch.items()})[0]

    impls = {"torch_fp32": torch_call(fp32), "torch_int8_dynamic": torch_call(int8),
             "ort_int8": ort_call, "apb_exact": torch_call(exact), "apb": torch_call(packed)}
    return impls, compressed, {"apb_exact": exact, "apb": packed}, local


def embedding_cosines(local, compressed: nn.Module, packed: dict[str, nn.Module],
                      texts: list[str]) -> dict[str, float]:
    """Mean cosine of each packed model's (and the fp32 model's, as ``torch_fp32``) pooled
    embeddings of ``texts`` to the compressed model's."""
    batches = text_batches(local.tokenizer, texts, 32)
    with torch.inference_mode():
        want = embed(compressed, batches, local.pooling)
        models = {"torch_fp32": local.model, **packed}
        return {name: float(torch.nn.functional.cosine_similarity(
                    embed(m, batches, local.pooling), want, dim=-1).mean())
                for name, m in models.items()}


def run_transformer_benchmark(directory: str, seqs: tuple[int, ...] = (1, 16, 128),
                              batch: int = 1, threads: int = 1, rounds: int = 10,
                              config: APBPTQConfig | None = None, calib: int = 128,
                              texts: int = 64,
                              progress: Callable[[str], None] | None = None) -> dict:
    """Build the five implementations and time them; the JSON report as a dict::

        {"model", "threads", "batch", "isa", "bits_per_weight",
         "max_rel_error": {"apb", "apb_exact"},
         "embedding_cosine": {"apb", "apb_exact", "torch_fp32"}, "cosine_texts",
         "results": [{"impl", "seq", "ms"}], "speedups": [{"seq", "vs", "apb_speedup"}]}

    ``apb_speedup`` is apb's (int8 inputs) against every other implementation, its exact
    path included.
    """
    if batch != 1:
        raise ValueError(f"the benchmark runs batch 1 (one sequence); got batch={batch}")
    if not seqs or any(s < 1 for s in seqs) or threads < 1 or rounds < 1:
        raise ValueError("seqs, threads and rounds must be positive")
    config = config or APBPTQConfig(bits_per_weight=1.6)
    progress = progress or (lambda _: None)
    results, speedups = [], []
    worst = {"apb_exact": 0.0, "apb": 0.0}
    with tempfile.TemporaryDirectory() as tmp, thread_count(threads):
        impls, compressed, packed, local = build_impls(directory, threads, config, calib,
                                                       Path(tmp), progress)
        progress("embedding fidelity")
        sentences = python_docs_sentences()
        held_out = sentences[calib:calib + texts]  # not seen by the calibration
        cosines = embedding_cosines(local, compressed, packed, held_out)
        for seq in seqs:
            progress(f"timing seq {seq}")
            inputs = fixed_length_batch(local.tokenizer, sentences[:200], seq)
            with torch.inference_mode():
                want = compressed(**inputs).last_hidden_state
                for name, model in packed.items():
                    got = model(**inputs).last_hidden_state
                    error = float((got - want).abs().max() / want.abs().max())
                    worst[name] = max(worst[name], error)
            times = interleaved_ms({n: (lambda f=f, x=inputs: f(x)) for n, f in impls.items()},
                                   rounds)
            for name, ms in times.items():
                results.append({"impl": name, "seq": seq, "ms": sorted(ms)[len(ms) // 2]})
            for peer in IMPLS[:-1]:
                speedups.append({"seq": seq, "vs": peer,
                                 "apb_speedup": median_ratio(times[peer], times["apb"])})
    return {"model": str(directory), "threads": threads, "batch": batch, "isa": active_isa(),
            "bits_per_weight": summary(packed["apb"]).bits_per_weight,
            "max_rel_error": worst, "embedding_cosine": cosines,
            "cosine_texts": len(held_out), "results": results, "speedups": speedups}


def report_table(report: dict) -> str:
    """Median milliseconds per implementation and sequence length, with apb's speed-ups."""
    seqs = sorted({r["seq"] for r in report["results"]})
    ms = {(r["impl"], r["seq"]): r["ms"] for r in report["results"]}
    up = {(s["vs"], s["seq"]): s["apb_speedup"] for s in report["speedups"]}
    t = Table(title=f"{Path(report['model']).name}: encoder forward, batch 1, "
                    f"{report['threads']} thread(s), apb at {report['bits_per_weight']:.2f} "
                    f"bits/weight (isa {report['isa']})")
    t.add_column("impl")
    for seq in seqs:
        t.add_column(f"seq {seq} ms", justify="right")
        t.add_column("apb speed-up", justify="right")
    for impl in IMPLS:
        cells = []
        for seq in seqs:
            cells += [f"{ms[impl, seq]:.2f}",
                      "" if impl == "apb" else f"{up[impl, seq]:.2f}x"]
        t.add_row(impl, *cells)
    cos, err = report["embedding_cosine"], report["max_rel_error"]
    return table_text(t, width=160) + (
        f"apb = int8 inputs, apb_exact = float inputs. Against the compressed model: max "
        f"relative error of the hidden states apb {err['apb']:.2e}, apb_exact "
        f"{err['apb_exact']:.2e}; mean embedding cosine over {report['cosine_texts']} "
        f"held-out texts: apb {cos['apb']:.6f} (drop {1 - cos['apb']:.2e}), apb_exact "
        f"{cos['apb_exact']:.6f}, torch_fp32 {cos['torch_fp32']:.6f}\n")
