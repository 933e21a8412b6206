"""Local Hugging Face models through post-training compression, packing and evaluation: a tiny
BERT built here (random weights, a WordPiece vocabulary of the corpus's own words), saved as
``save_pretrained`` writes it, runs the whole path; the real MiniLM runs in benchmarks and
docs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from apb.bench.transformer import (  # noqa: E402
    IMPLS,
    ort_int8_session,
    report_table,
    run_transformer_benchmark,
)
from apb.data.texts import python_docs_sentences, read_texts  # noqa: E402
from apb.hf import HFError, embed, fidelity, load_local, text_batches  # noqa: E402

APB = [sys.executable, "-m", "apb.cli"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def save_tiny_bert(directory, hidden: int = 32, seed: int = 0) -> None:
    """A 2-layer BERT (hidden ``hidden``) and a tokenizer over the corpus's 400 commonest
    words (plus letters, for the rest), written as ``save_pretrained`` does."""
    words = Counter(w for s in python_docs_sentences() for w in re.findall(r"[a-z]+", s.lower()))
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = SPECIAL + letters + [f"##{c}" for c in letters] + list(".,:;()\"'_-=[]{}0123456789") \
        + [w for w, _ in words.most_common(400) if len(w) > 1]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(directory / "vocab.txt"))
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden,
                                     num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=2 * hidden, max_position_embeddings=64)
    torch.manual_seed(seed)
    transformers.BertModel(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf") / "tiny-bert"
    save_tiny_bert(directory)
    return directory


@pytest.fixture(scope="module")
def texts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("texts") / "texts.txt"
    path.write_text("\n".join(python_docs_sentences()[:64]) + "\n")
    return path


def run(*args):
    return subprocess.run([*APB, *map(str, args)], capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                               "PYTHONPATH": ":".join(sys.path)})


def test_fidelity_against_a_direct_computation():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(12, 5))
    b = a + 0.3 * rng.normal(size=(12, 5))
    got = fidelity(torch.tensor(a), torch.tensor(b), k=3)
    cos = [x @ y / np.linalg.norm(x) / np.linalg.norm(y) for x, y in zip(a, b)]
    assert got["cosine"] == pytest.approx(np.mean(cos), abs=1e-12)

    def similarities(m):
        m = m / np.linalg.norm(m, axis=1, keepdims=True)
        return m @ m.T

    iu = np.triu_indices(12, 1)
    sa, sb = similarities(a)[iu], similarities(b)[iu]
    ranks = [np.argsort(np.argsort(s)) for s in (sa, sb)]  # no ties in random data
    assert got["spearman"] == pytest.approx(np.corrcoef(*ranks)[0, 1], abs=1e-12)
    near = [np.argsort(-(s - 3 * np.eye(12)), axis=1)[:, :3] for s in (similarities(a),
                                                                    similarities(b))]
    want = np.mean([len(set(x) & set(y)) / 3 for x, y in zip(*near)])
    assert got["top3_overlap"] == pytest.approx(want)
    assert fidelity(torch.tensor(a), torch.tensor(a))["cosine"] == pytest.approx(1.0)


def test_python_docs_corpus_is_real_prose_and_fixed():
    sentences = python_docs_sentences()
    assert len(sentences) > 900 and len(set(sentences)) == len(sentences)
    assert all(20 <= len(s) <= 300 and s[0].isupper() and s[-1] in ".!?" for s in sentences)
    assert sentences == python_docs_sentences()


def test_local_model_layouts_and_pooling(bert_dir, tmp_path):
    local = load_local(bert_dir)
    assert local.pooling == "mean" and not local.normalize
    batches = text_batches(local.tokenizer, python_docs_sentences()[:6], batch_size=4)
    mean = embed(local.model, batches)
    assert mean.shape == (6, 32)
    # a sentence-transformers directory: the model in a subfolder, CLS pooling, normalized
    st = tmp_path / "st"
    (st / "1_Pooling").mkdir(parents=True)
    (st / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "tf", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"}]))
    (st / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    save_tiny_bert(st / "tf")
    other = load_local(st)
    assert (other.pooling, other.normalize) == ("cls", True)
    cls = embed(other.model, batches, other.pooling, other.normalize)
    torch.testing.assert_close(cls.norm(dim=1), torch.ones(6))


def test_bad_model_directories(tmp_path):
    with pytest.raises(HFError, match="not a directory"):
        load_local(tmp_path / "missing")
    with pytest.raises(HFError, match="no config.json"):
        load_local(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(HFError, match="pytorch_model.bin: pickles"):
        load_local(tmp_path)


def test_bad_texts(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match="0 non-empty line"):
        read_texts(empty, minimum=1)
    binary = tmp_path / "bad.txt"
    binary.write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_texts(binary)


def test_ptq_pack_and_eval_of_a_local_model(bert_dir, texts_file, tmp_path):
    out, report = tmp_path / "tiny.safetensors", tmp_path / "ptq.json"
    done = run("ptq", "--hf", bert_dir, "--texts", texts_file, "--calib", 16, "--eval-texts",
               16, "--method", "apb-ptq", "--target", "1.6", "--layers", r"^encoder\.",
               "-o", out, "--json", report, "--no-progress")
    assert done.returncode == 0, done.stderr
    result = json.loads(report.read_text())
    assert result["method"] == "apb-ptq" and len(result["layers"]) == 12  # 6 Linear x 2 blocks
    assert result["bits_per_weight"] <= 1.6
    assert result["calibration_texts"] == [0, 16] and result["evaluation_texts"] == [16, 32]
    assert set(result["fidelity"]) >= {"cosine", "spearman", "n_texts"}
    assert 0.0 < result["fidelity"]["cosine"] < 1.0
    measured = tmp_path / "eval.json"
    done = run("eval", "--hf", bert_dir, out, "--texts", texts_file, "--skip", 16, "--limit",
               16, "--json", measured)
    assert done.returncode == 0, done.stderr
    evaluated = json.loads(measured.read_text())
    # the packed file computes what the compressed model computed when it was measured
    assert evaluated["fidelity"]["cosine"] == pytest.approx(result["fidelity"]["cosine"],
                                                            abs=1e-5)
    assert evaluated["model_bytes"] == result["model_bytes"]
    done = run("summary", out, "--hf", bert_dir)
    assert done.returncode == 0 and "encoder.layer.1.output.dense" in done.stdout


@pytest.mark.parametrize("problem, args, message", [
    ("no model", lambda d, t, p: ["--hf", p, "--texts", t], "no config.json"),
    ("empty texts", lambda d, t, p: ["--hf", d, "--texts", p / "empty.txt"], "non-empty line"),
    ("too few texts", lambda d, t, p: ["--hf", d, "--texts", t, "--calib", 60], "too few"),
    ("no layer", lambda d, t, p: ["--hf", d, "--texts", t, "--layers", "^decoder"],
     "no nn.Linear layer"),
])
def test_ptq_bad_input_is_one_line(bert_dir, texts_file, tmp_path, problem, args, message):
    (tmp_path / "empty.txt").write_text("\n")
    done = run("ptq", "--calib", 16, "--method", "apb-naive", "--target", "1.6", "-o",
               tmp_path / "out.safetensors", *args(bert_dir, texts_file, tmp_path))
    assert done.returncode == 2, (problem, done.stderr)
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_transformer_benchmark_report(bert_dir):
    report = run_transformer_benchmark(str(bert_dir), seqs=(1, 8), rounds=1, calib=16)
    assert {(r["impl"], r["seq"]) for r in report["results"]} == {
        (impl, seq) for impl in IMPLS for seq in (1, 8)}
    assert all(r["ms"] > 0 for r in report["results"])
    assert {(s["vs"], s["seq"]) for s in report["speedups"]} == {
        (impl, seq) for impl in IMPLS[:-1] for seq in (1, 8)}
    error, cosine = report["max_rel_error"], report["embedding_cosine"]
    assert error["apb_exact"] < 1e-4  # packed computes what was compressed
    assert 1e-4 < error["apb"] < 0.1  # int8 inputs: quantized, not far
    assert cosine["apb_exact"] > 1 - 1e-6 and cosine["apb"] > 0.99
    assert report["bits_per_weight"] <= 1.6
    assert "ort_int8" in report_table(report) and "apb_exact" in report_table(report)


def test_exporting_for_onnx_runtime_leaves_the_model_in_eval_mode(bert_dir, tmp_path):
    """The fp32 peer is timed after its ONNX export: the exporter must not switch its
    dropout on (it restores the mode it found the exported wrapper in)."""
    local = load_local(bert_dir)
    batch = dict(local.tokenizer(["a short sentence"], return_tensors="pt"))
    session = ort_int8_session(local.model, batch, 1, tmp_path)
    assert not any(m.training for m in local.model.modules())
    # idle workers sleep: spinning ones would take the cores from the peer timed next
    options = session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
