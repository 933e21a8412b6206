"""Post-training compression of a local Hugging Face encoder, and its measurement: the jobs
behind ``apb ptq --hf DIR``, ``apb eval --hf DIR FILE`` and ``apb summary --hf DIR FILE``.

``apb ptq --hf`` reads the model and its tokenizer from a local directory
(:func:`apb.hf.load_local`), calibrates :func:`apb.methods.ptq_` on the first ``calib``
texts, measures the fidelity of the compressed model's sentence embeddings to the original
ones on the ``eval_texts`` texts after them (disjoint from the calibration texts;
:func:`apb.hf.fidelity`), packs the model and writes it as a packed safetensors file, and
optionally a JSON report::

    {"method", "target", "bits_per_weight", "model_bytes", "seconds",
     "fidelity": {"cosine", "spearman", "top10_overlap", "n_texts"}, "layers": [...], ...}

``apb eval --hf`` loads such a file into the architecture of the directory (built on the meta
device, filled from the file) and measures it against the original model the same way.
"""

from __future__ import annotations

import re
import sys
import time

from torch import nn

from ..data.texts import corpus
from ..hf import (
    MIN_CALIBRATION_TEXTS,
    MIN_EVAL_TEXTS,
    embed,
    fidelity,
    load_local,
    skeleton,
    text_batches,
)
from ..methods import ptq_
from ..pack import load_packed, pack_, read_packed_info, save_packed
from ..summary import summary
from ..train import jsonable
from .common import check_outputs, write_json
from .ptq import PTQJob, ptq_config

BUILTIN_TEXTS = "python-docs"


def layer_filter(pattern: str):
    """``filter_fn`` picking the ``nn.Linear`` layers whose name matches ``pattern``."""
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"--layers is not a regular expression ({err}): {pattern!r}") from None
    return lambda module, name: type(module) is nn.Linear and regex.search(name) is not None


def run_transformer_ptq(job: PTQJob, log=print) -> dict:
    """Run ``job`` (``job.hf`` set); returns the JSON report (also written to ``job.json``)."""
    config = ptq_config(job)  # every option checked before any file is read or written
    if not job.output:
        raise ValueError("give the packed model file to write with -o FILE.safetensors")
    check_outputs(job.output, job.json)
    calib_count = 512 if job.calib is None else job.calib
    if calib_count < MIN_CALIBRATION_TEXTS or job.eval_texts < MIN_EVAL_TEXTS or job.batch_size < 1:
        raise ValueError(f"--calib must be at least {MIN_CALIBRATION_TEXTS}, --eval-texts at least "
                         f"{MIN_EVAL_TEXTS} and --batch-size at least 1")
    filter_fn = layer_filter(job.layers)
    started = time.perf_counter()
    texts = corpus(job.texts)
    if len(texts) < calib_count + MIN_EVAL_TEXTS:
        raise ValueError(f"{job.texts} holds {len(texts)} texts: too few for {calib_count} "
                         f"calibration texts and at least {MIN_EVAL_TEXTS} others to measure on")
    calib_texts = texts[:calib_count]
    eval_texts = texts[calib_count:calib_count + job.eval_texts]
    local = load_local(job.hf)
    model = local.model
    if not any(filter_fn(m, n) for n, m in model.named_modules()):
        raise ValueError(f"no nn.Linear layer of {job.hf} matches --layers {job.layers!r}")
    calibration = text_batches(local.tokenizer, calib_texts, job.batch_size, job.max_length)
    evaluation = text_batches(local.tokenizer, eval_texts, job.batch_size, job.max_length)
    reference = embed(model, evaluation, local.pooling, local.normalize)
    report = ptq_(model, config, calibration, filter_fn=filter_fn,
                  progress=job.progress and sys.stderr.isatty())
    result_fidelity = fidelity(reference, embed(model, evaluation, local.pooling,
                                                local.normalize))
    s = summary(model)
    pack_(model)
    info = save_packed(model, job.output)
    if info.model_bytes != s.model_bytes:  # the format and the accounting must agree
        raise RuntimeError(f"wrote {info.model_bytes} model bytes but the summary predicts "
                           f"{s.model_bytes}: please report this bug")
    seconds = round(time.perf_counter() - started, 3)
    result = jsonable({
        "method": job.method, "target": job.target, "bits_per_weight": s.bits_per_weight,
        "model_bytes": s.model_bytes, "seconds": seconds, "fidelity": result_fidelity,
        "layers": report.to_dict()["layers"], "model": str(job.hf),
        "texts": job.texts, "calibration_texts": [0, calib_count],
        "evaluation_texts": [calib_count, calib_count + len(eval_texts)],
        "fp_fraction": s.fp_fraction, "file_bytes": info.file_bytes,
        "config": config.to_dict(),
    })
    if job.json:
        write_json(job.json, result)
    compressed = sum(1 for row in s.rows if row.method != "fp")
    log(f"{job.method} {job.target}: {compressed} layers, {s.bits_per_weight:.3f} "
        f"bits/weight, embedding cosine {result_fidelity['cosine']:.4f}, spearman "
        f"{result_fidelity['spearman']:.4f} on {result_fidelity['n_texts']} texts, "
        f"{seconds:.1f} s; wrote {job.output} ({info.file_bytes:,} bytes)")
    return result


def load_packed_transformer(directory: str, path: str) -> nn.Module:
    """The packed model file ``path`` loaded into the architecture of ``directory``."""
    return load_packed(path, model=skeleton(directory))


def evaluate_transformer(directory: str, path: str, texts: str = BUILTIN_TEXTS, *,
                         skip: int = 0, limit: int = 512, batch_size: int = 32,
                         max_length: int = 128) -> dict:
    """``{"model_bytes", "bits_per_weight", "fidelity"}`` of the packed file ``path``
    against the original model in ``directory``, on ``limit`` texts of ``texts`` after the
    first ``skip`` (give ``skip`` = the calibration count to measure on unseen texts)."""
    if skip < 0 or limit < MIN_EVAL_TEXTS:
        raise ValueError(f"--skip must be >= 0 and --limit >= {MIN_EVAL_TEXTS}")
    chosen = corpus(texts)[skip:skip + limit]
    if len(chosen) < MIN_EVAL_TEXTS:
        raise ValueError(f"{texts} has {len(chosen)} texts after skipping {skip}; at least "
                         f"{MIN_EVAL_TEXTS} are needed")
    local = load_local(directory)
    packed = load_packed_transformer(directory, path)
    batches = text_batches(local.tokenizer, chosen, batch_size, max_length)
    reference = embed(local.model, batches, local.pooling, local.normalize)
    compressed = embed(packed, batches, local.pooling, local.normalize)
    return {"model_bytes": read_packed_info(path).model_bytes,
            "bits_per_weight": summary(packed).bits_per_weight,
            "fidelity": fidelity(reference, compressed)}
