"""`apb ptq`: a checkpoint in, a checkpoint `apb summary` reads out; bad input is one line
on stderr, exit status 2, and nothing written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import apb
from apb.cli import main
from apb.train import TrainConfig, load_checkpoint, train

ENV = {**os.environ, "PYTHONPATH": str(Path(apb.__file__).parent.parent)}


@pytest.fixture(scope="module")
def fp_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("fp")
    train(TrainConfig(model="mlp", model_options={"hidden": [64, 64]}, dataset="digits",
                      method="fp", epochs=2, out_dir=str(out), progress=False))
    return out / "best.pt"


def test_ptq_writes_a_checkpoint_summary_reads(fp_checkpoint, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "apb.cli", "ptq", str(fp_checkpoint), "--method", "apb-ptq",
         "--target", "1.6", "--calib", "256", "--dataset", "digits", "-o", "ptq.pt",
         "--json", "ptq.json", "--no-progress"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=ENV,
    )
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "ptq.json").read_text())
    assert {"method", "test_acc", "bits_per_weight", "model_bytes", "seconds"} <= set(result)
    assert result["method"] == "apb-ptq" and result["bits_per_weight"] <= 1.6
    assert result["test_acc"] > 0.5  # far above chance (0.1) on a 2-epoch model
    ckpt = load_checkpoint(tmp_path / "ptq.pt")
    assert ckpt["method"]["name"] == "apb" and ckpt["ptq"]["test_acc"] == result["test_acc"]
    assert main(["summary", str(tmp_path / "ptq.pt"), "--json", str(tmp_path / "s.json")]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["model_bytes"] == result["model_bytes"]
    assert [row["method"] for row in summary["layers"]] == ["fp", "apb", "fp"]


def test_obc_checkpoint_round_trip(fp_checkpoint, tmp_path, capsys):
    out = tmp_path / "q.pt"
    assert main(["ptq", str(fp_checkpoint), "--method", "obc-compound", "--target", "2:4,4",
                 "--calib", "256", "-o", str(out), "--no-progress"]) == 0
    assert "obc-compound 2:4,4: test acc" in capsys.readouterr().out
    model, ckpt = apb.train.build_model_from_checkpoint(out)
    wq = model.fc2.weight_quantizer
    assert int(wq.bits) == 4 and float(wq.keep.float().mean()) == 0.5
    assert ckpt["optimizer_state"] is None and ckpt["finalized"]


@pytest.mark.parametrize("args, message", [
    (["--method", "obc-prune", "--target", "nope=1"], "unknown target 'nope'"),
    (["--method", "obc-quant", "--target", "9"], "bits must lie in 2..8"),
    (["--method", "obc-quant", "--target", "sparsity=0.5"], "mode 'quant' takes bits"),
    (["--method", "apb-ptq", "--target", "bits=4"], "apb-ptq takes targets"),
    (["--method", "apb-ptq", "--target", "1.0001"], "below what the binary part"),
    (["--method", "obc-prune", "--target", "0.5", "--calib", "50"],
     "layer 'fc2' has 64 weights per output but calibration gave only 50"),
    (["--method", "obc-prune", "--target", "0.5", "--calib", "99999"], "exceeds the 1437"),
    (["--method", "obc-prune", "--target", "model_bytes=10"], "cannot be met"),
    (["--method", "obc-prune", "--target", "0.5", "--dataset", "nope"], "unknown dataset"),
])
def test_bad_input_one_line_exit_2_nothing_written(fp_checkpoint, tmp_path, capsys, args,
                                                    message):
    before = set(tmp_path.iterdir())
    rc = main(["ptq", str(fp_checkpoint), *args, "-o", str(tmp_path / "o.pt"),
               "--json", str(tmp_path / "o.json"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err
    assert set(tmp_path.iterdir()) == before


def test_bad_checkpoints_and_flags(fp_checkpoint, tmp_path, capsys):
    assert main(["ptq", "missing.pt", "--method", "obc-prune", "--target", "0.5",
                 "-o", str(tmp_path / "o.pt")]) == 2
    assert "no checkpoint at missing.pt" in capsys.readouterr().err
    out = tmp_path / "apb.pt"
    assert main(["ptq", str(fp_checkpoint), "--method", "apb-naive", "--target", "1.6",
                 "-o", str(out), "--no-progress"]) == 0
    assert main(["ptq", str(out), "--method", "obc-prune", "--target", "0.5",
                 "-o", str(tmp_path / "again.pt")]) == 2
    assert "compresses a full-precision" in capsys.readouterr().err
    assert not (tmp_path / "again.pt").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["ptq", str(fp_checkpoint), "--method", "nope", "--target", "0.5", "-o", "x.pt"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_solver_flags_reach_the_config():
    from apb.jobs.ptq import PTQJob, ptq_config

    apb_config = ptq_config(PTQJob(method="apb-ptq", target="1.6", value_bits=16,
                                   solver="lazy", block_size=32, act_order=False,
                                   bias_correction=True, dampening=0.1, per_channel=True))
    assert (apb_config.value_bits, apb_config.solver, apb_config.block_size,
            apb_config.act_order, apb_config.bias_correction, apb_config.dampening,
            apb_config.per_channel, apb_config.bits_per_weight) == (16, "lazy", 32, False, True,
                                                                     0.1, True, 1.6)
    obc = ptq_config(PTQJob(method="obc-quant", target="4", group_size=128, solver="lazy"))
    assert (obc.group_size, obc.solver, obc.bits) == (128, "lazy", 4)
    with pytest.raises(ValueError, match="lazy-batch solver"):  # checked before any work
        ptq_config(PTQJob(method="obc-quant", target="4", group_size=128, solver="exact"))
    with pytest.raises(ValueError, match="obc-quant option"):
        ptq_config(PTQJob(method="apb-ptq", target="1.6", group_size=64))
    with pytest.raises(ValueError, match="apb-ptq / apb-naive option"):
        ptq_config(PTQJob(method="obc-quant", target="4", value_bits=16))
    with pytest.raises(ValueError, match="solver"):
        ptq_config(PTQJob(method="obc-quant", target="4", solver="fast"))
