"""`apb compare` and `apb plot-weights`: method names, the Pareto front, one small real run."""

import json
import re
import statistics

import pytest

from apb.compare import (
    KEEP_MARKER,
    MethodSpecError,
    keep_hand_written,
    markdown_table,
    pareto_front,
    parse_method,
    parse_methods,
)
from test_cli import run


@pytest.mark.parametrize("name, kind, train_method, options, target", [
    ("fp", "train", "fp", {}, None),
    ("bnn", "train", "bnn", {"act_bits": 32}, None),
    ("dorefa2", "train", "dorefa", {"act_bits": 32, "bits": 2}, None),
    ("magnitude", "train", "magnitude", {"sparsity": 0.9}, None),
    ("magnitude@0.75", "train", "magnitude", {"sparsity": 0.75}, None),
    ("magnitude@0.9+bnn", "train", "prune_quant", {"act_bits": 32, "sparsity": 0.9, "bits": 1},
     None),
    ("magnitude@0.5+dorefa2", "train", "prune_quant",
     {"act_bits": 32, "sparsity": 0.5, "bits": 2}, None),
    ("apb@0.01", "train", "apb",
     {"act_bits": 32, "fp_fraction": 0.01, "budget_scope": "model"}, None),
    ("obc-prune@2:4", "ptq", "fp", {}, "2:4"),
    ("obc-quant@3", "ptq", "fp", {}, "3"),
    ("obc-compound", "ptq", "fp", {}, "sparsity=0.5,bits=2"),
    ("obc-compound@0.75/4", "ptq", "fp", {}, "sparsity=0.75,bits=4"),
    ("apb-ptq@1.4", "ptq", "fp", {}, "1.4"),
    ("quantized-pruning@0.3", "quantized-pruning", "bnn", {"act_bits": 32}, None),
])
def test_method_names(name, kind, train_method, options, target):
    spec = parse_method(name)
    assert (spec.kind, spec.train_method, spec.method_options, spec.ptq_target) == (
        kind, train_method, options, target)


def test_default_knobs_are_written_out_and_act_bits_reach_trained_methods():
    labels = [s.label for s in parse_methods("magnitude,apb,apb-ptq,quantized-pruning")]
    assert labels == ["magnitude@0.9", "apb@0.02", "apb-ptq@1.6", "quantized-pruning@0.25"]
    assert parse_method("bnn", act_bits=2).method_options["act_bits"] == 2
    assert parse_method("quantized-pruning", act_bits=1).method_options["act_bits"] == 1
    # the fp model and every post-training method share one training run per seed
    keys = {s.training_key for s in parse_methods("fp,obc-prune,apb-ptq,apb-naive")}
    assert len(keys) == 1


@pytest.mark.parametrize("text, message", [
    ("", "--methods is empty"),
    ("nope", "unknown method 'nope'"),
    ("bnn@0.5", "takes no '@' knob"),
    ("magnitude@1.0", "must lie in [0, 1)"),
    ("magnitude@x", "must be a number"),
    ("magnitude@0.9+ternary", "must be bnn or dorefaK"),
    ("apb+bnn", "only magnitude@S takes"),
    ("apb@", "nothing after '@'"),
    ("obc-compound@0.5", "@SPARSITY/BITS"),
    ("obc-quant@9", "obc-quant"),
    ("quantized-pruning@0", "must be above 0"),
    ("fp,bnn,fp", "listed twice"),
])
def test_bad_method_names(text, message):
    with pytest.raises(MethodSpecError, match=re.escape(message)):
        parse_methods(text)


def test_pareto_front_hand_case():
    rows = [
        {"method": "a", "model_bytes": 100, "test_acc_mean": 0.90},
        {"method": "b", "model_bytes": 200, "test_acc_mean": 0.95},
        {"method": "c", "model_bytes": 150, "test_acc_mean": 0.89},  # a beats it
        {"method": "d", "model_bytes": 200, "test_acc_mean": 0.94},  # b beats it
        {"method": "e", "model_bytes": 50, "test_acc_mean": 0.80},
        {"method": "f", "model_bytes": 400, "test_acc_mean": 0.95},  # b: same acc, smaller
    ]
    assert pareto_front(rows) == ["e", "a", "b"]
    report = {"model": "m", "dataset": "d", "seeds": 1, "epochs": 1, "act_bits": 32,
              "results": [{**r, "test_acc_std": 0.0, "bits_per_weight": 1.0,
                           "latency_ms_b1": None, "latency_ms_b64": None, "runs_on": None}
                          for r in rows]}
    table = markdown_table(report).splitlines()
    starred = [line.split("|")[1].strip() for line in table if line.startswith("| ")
               and "★" in line]
    assert starred == ["e ★", "a ★", "b ★"]


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory):
    """One real, small comparison: two seeds, one epoch, a fifth of the training data."""
    tmp = tmp_path_factory.mktemp("compare")
    r = run(["compare", "--methods", "fp,bnn,apb@0.05,obc-prune@0.5,apb-ptq@1.6",
             "--seeds", "2", "--epochs", "1", "--train-samples", "400", "--calib", "512",
             "--jobs", "1", "--latency-repeats", "2", "--out", "runs", "--json", "c.json",
             "--plot", "c.png", "--markdown", "c.md", "--no-progress"], tmp)
    assert r.returncode == 0, r.stderr
    return tmp, json.loads((tmp / "c.json").read_text()), r.stdout


@pytest.mark.xdist_group("compare_run")  # one worker runs the shared comparison
def test_compare_report(compare_run):
    tmp, report, stdout = compare_run
    assert report["model"] == "lenet5" and report["dataset"] == "mnist5k"
    rows = {x["method"]: x for x in report["results"]}
    assert list(rows) == ["fp", "bnn", "apb@0.05", "obc-prune@0.5", "apb-ptq@1.6"]
    for row in rows.values():
        assert set(row) >= {"method", "test_acc_mean", "test_acc_std", "bits_per_weight",
                            "model_bytes", "latency_ms_b1", "latency_ms_b64"}
        assert len(row["test_accs"]) == 2
        assert row["test_acc_mean"] == pytest.approx(statistics.fmean(row["test_accs"]))
        assert row["test_acc_std"] == pytest.approx(statistics.stdev(row["test_accs"]))
        assert row["latency_ms_b1"] > 0 and row["latency_ms_b64"] > 0
    assert rows["fp"]["bits_per_weight"] == 32.0 and rows["fp"]["runs_on"] == "torch_fp32"
    assert rows["obc-prune@0.5"]["runs_on"] == "torch_fp32"  # pruned fp has no packed form
    for name in ("bnn", "apb@0.05", "apb-ptq@1.6"):
        assert rows[name]["runs_on"] == "packed"
    assert rows["bnn"]["model_bytes"] < rows["apb@0.05"]["model_bytes"] < rows["fp"]["model_bytes"]
    assert rows["apb-ptq@1.6"]["bits_per_weight"] <= 1.6
    assert (tmp / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp / "c.md").read_text()
    assert all(f"| {m}" in page for m in rows)
    table = stdout[stdout.index("lenet5 on mnist5k, mean"):stdout.index("report written")]
    assert table.strip() in page  # the page holds the printed table
    assert "apb compare --methods fp,bnn,apb@0.05" in page and "](c.png)" in page
    for name in ("fp", "bnn", "obc-prune@0.5"):  # every non-APB method is set against APB
        assert f"- **{name}**" in page


@pytest.mark.xdist_group("compare_run")  # one worker runs the shared comparison
def test_compare_numbers_match_apb_eval(compare_run):
    """The accuracy and bytes in the report are what `apb eval` measures on the same file."""
    tmp, report, _ = compare_run
    rows = {x["method"]: x for x in report["results"]}
    for name in ("apb-ptq@1.6", "apb@0.05"):
        r = run(["eval", rows[name]["checkpoint"], "--dataset", "mnist5k", "--json", "e.json"],
                tmp)
        assert r.returncode == 0, r.stderr
        measured = json.loads((tmp / "e.json").read_text())
        assert measured["test_acc"] == rows[name]["test_accs"][0]
        assert measured["model_bytes"] == rows[name]["model_bytes_per_seed"][0]


@pytest.mark.xdist_group("compare_run")  # one worker runs the shared comparison
def test_plot_weights(compare_run):
    from apb.jobs.plot_weights import apb_layers, layer_histogram_data
    from apb.summary import summary
    from apb.train import build_model_from_checkpoint

    tmp, report, _ = compare_run
    rows = {x["method"]: x for x in report["results"]}
    ckpt = rows["apb@0.05"]["checkpoint"]
    r = run(["plot-weights", ckpt, "-o", "w.png"], tmp)
    assert r.returncode == 0, r.stderr
    assert (tmp / "w.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, _ = build_model_from_checkpoint(tmp / ckpt)
    names = [n for n, _ in apb_layers(model)]
    assert names and all(n in r.stdout for n in names)
    layer_rows = {row.name: row for row in summary(model).rows}
    for name, layer in apb_layers(model):
        d = layer_histogram_data(layer)
        fp = len(d["full_precision"]) / (len(d["full_precision"]) + len(d["binary"]))
        assert fp == pytest.approx(layer_rows[name].fp_fraction)
        assert d["delta"] > 0 and d["alpha"] > 0

    r = run(["plot-weights", ckpt, "--layer", "nope", "-o", "x.png"], tmp)
    assert r.returncode == 2 and "no APB layer 'nope'" in r.stderr
    r = run(["plot-weights", rows["fp"]["checkpoint"], "-o", "x.png"], tmp)
    assert r.returncode == 2 and "has no APB layer" in r.stderr
    assert not (tmp / "x.png").exists()


@pytest.mark.parametrize("args, message", [
    (["--methods", "fp,nope"], "unknown method 'nope'"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--methods", "quantized-pruning", "--epochs", "3", "--finetune-epochs", "3"],
     "--finetune-epochs must lie in 1..2"),
    (["--act-bits", "3"], "--act-bits must be 1, 2 or 32"),
])
def test_compare_bad_input(tmp_path, args, message):
    r = run(["compare", *args, "--out", "runs"], tmp_path)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_compare_quantized_pruning_meets_its_budget_and_packs(tmp_path):
    r = run(["compare", "--methods", "bnn,quantized-pruning@0.25", "--seeds", "1",
             "--epochs", "2", "--finetune-epochs", "1", "--trials", "3", "--train-samples",
             "600", "--jobs", "1", "--latency-repeats", "2", "--out", "runs", "--json", "q.json",
             "--no-progress"], tmp_path)
    assert r.returncode == 0, r.stderr
    rows = {x["method"]: x for x in json.loads((tmp_path / "q.json").read_text())["results"]}
    bnn, pruned = rows["bnn"], rows["quantized-pruning@0.25"]
    # the unpruned network it starts from is trained one epoch less, with the same widths
    assert pruned["model_bytes"] <= 0.75 * bnn["model_bytes"]
    assert pruned["runs_on"] == "packed"
    r = run(["eval", pruned["checkpoint"], "--dataset", "mnist5k", "--json", "e.json"], tmp_path)
    assert r.returncode == 0, r.stderr
    measured = json.loads((tmp_path / "e.json").read_text())
    assert measured["test_acc"] == pruned["test_accs"][0]
    assert measured["model_bytes"] == pruned["model_bytes"]


def test_compare_passes_model_options(tmp_path):
    """A narrow MLP: --model-options reach the builder, and the report names them."""
    r = run(["compare", "--model", "mlp", "--model-options", '{"hidden": [24, 12]}',
             "--methods", "fp,bnn", "--seeds", "1", "--epochs", "1", "--train-samples", "300",
             "--jobs", "1", "--no-latency", "--out", "runs", "--json", "m.json",
             "--markdown", "m.md", "--no-progress"], tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["model_options"] == {"hidden": [24, 12]}
    rows = {x["method"]: x for x in report["results"]}
    # fc1 (784x24) and the classifier stay full precision: only fc2 (24x12) is binary
    params = 784 * 24 + 24 * 12 + 12 * 10 + 10 + 2 * (24 + 12)
    assert rows["fp"]["model_bytes"] > 4 * params - 200
    assert rows["fp"]["model_bytes"] - rows["bnn"]["model_bytes"] < 4 * 24 * 12
    assert "# Results: mlp (hidden=[24, 12]) on mnist5k" in (tmp_path / "m.md").read_text()


def test_regenerated_page_keeps_what_is_written_below_the_marker():
    page = "# Results\n\n| table |\n"
    assert keep_hand_written(page, None) == page
    assert keep_hand_written(page, "# old page, nothing kept\n") == page
    old = f"# Results\n\n| old table |\n\n{KEEP_MARKER}\n\n## Verdicts\n\nAPB ties.\n"
    assert keep_hand_written(page, old) == f"{page}\n{KEEP_MARKER}\n\n## Verdicts\n\nAPB ties.\n"
    kept = keep_hand_written(page, old)
    assert keep_hand_written(page, kept) == kept  # regenerating again changes nothing
