"""Files written before the package was reorganised still load and compute the same.

``tests/data/legacy-e22d813`` holds what release e22d813 wrote for a small MLP on digits
(``hidden=[32, 32]``, 3 epochs): training checkpoints of ``apb``, ``bnn`` and ``fp``, the
``apb`` model packed and XOR-encoded, an ``apb-ptq`` checkpoint and a filter-pruned ``bnn``
checkpoint; ``expected.json`` is what that release's ``apb eval --dataset digits`` printed
for each. The commands that made them::

    apb train --model mlp --dataset digits --model-options '{"hidden": [32, 32]}' \
        --epochs 3 --batch-size 64 --method apb --fp-fraction 0.05   (and bnn, fp)
    apb pack apb/last.pt -o apb.safetensors
    apb xor-encode apb.safetensors -o apb.xor.safetensors
    apb ptq fp/last.pt --method apb-ptq --target 1.6 --calib 128 -o apb_ptq.pt
    apb prune-quantized bnn/last.pt --budget-ratio 0.25 --trials 2 --seeds 1 \
        --finetune-epochs 1 --dataset digits --val-samples 200 -o pruned.pt
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from apb import data
from apb.jobs.evaluate import evaluate_file
from apb.pack.xor import load_xor
from apb.train import build_model_from_checkpoint, load_checkpoint, predict

LEGACY = Path(__file__).parent / "data" / "legacy-e22d813"
EXPECTED = json.loads((LEGACY / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_old_file_evaluates_as_it_did(name):
    assert evaluate_file(LEGACY / name, "digits") == EXPECTED[name]


@pytest.mark.parametrize("name, method", [("apb.pt", "apb"), ("bnn.pt", "bnn"), ("fp.pt", "fp"),
                                          ("pruned.pt", "bnn")])
def test_old_checkpoint_keeps_its_method_name(name, method):
    ckpt = load_checkpoint(LEGACY / name)
    assert ckpt["method"]["name"] == method
    _, rebuilt_from = build_model_from_checkpoint(LEGACY / name)
    assert rebuilt_from["method"]["name"] == method


def test_old_xor_file_decodes_to_the_packed_model():
    model = load_xor(LEGACY / "apb.xor.safetensors")
    predictions, accuracy = predict(model, data.load("digits").test)
    assert accuracy == EXPECTED["apb.safetensors"]["test_acc"]
    assert (hashlib.sha256(predictions.tobytes()).hexdigest()
            == EXPECTED["apb.safetensors"]["predictions_sha256"])
