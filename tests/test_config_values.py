"""Every numeric field of every config refuses NaN and ±inf with an error naming it
(issue 19: ``--bits-per-weight nan`` used to train to exit 0, since ``nan <= 1.0`` is
false), and the command line turns that into one line, exit 2."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest

from apb.compare import CompareConfig
from apb.jobs.demo import DemoConfig
from apb.methods import APBConfig, BNNConfig, DoReFaConfig
from apb.methods.base import CompressionConfig
from apb.methods.magnitude import MagnitudeConfig, PruneQuantConfig
from apb.prune import QuantizedPruningConfig
from apb.train import TrainConfig

CONFIGS = (TrainConfig, CompressionConfig, APBConfig, BNNConfig, DoReFaConfig, MagnitudeConfig,
           PruneQuantConfig, DemoConfig, CompareConfig, QuantizedPruningConfig)


def numeric_fields(cls) -> list[str]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        args = set(typing.get_args(hints[f.name])) or {hints[f.name]}
        if args & {int, float}:
            out.append(f.name)
    return out


def build(cls, **values):
    """The config with ``values``, validated as its users validate it."""
    config = cls(**values)  # TrainConfig and QuantizedPruningConfig validate here
    config.validate()
    return config


CASES = [(cls, name, value) for cls in CONFIGS for name in numeric_fields(cls)
         for value in (math.nan, math.inf, -math.inf)]


def test_every_config_has_numeric_fields_to_check():
    assert all(numeric_fields(cls) for cls in CONFIGS)
    assert len(CASES) > 150


@pytest.mark.parametrize("cls, name, value", CASES,
                         ids=[f"{c.__name__}.{n}={v}" for c, n, v in CASES])
def test_non_finite_numbers_are_refused_naming_the_field(cls, name, value):
    with pytest.raises((ValueError, TypeError), match=name.replace("_", "[_-]")):
        build(cls, **{name: value})


@pytest.mark.parametrize("cls", CONFIGS)
def test_the_defaults_still_validate(cls):
    build(cls)


def test_nan_budgets_are_one_line_exit_2(capsys, tmp_path):
    from apb import cli

    for argv, match in ((["train", "--method", "apb", "--bits-per-weight", "nan"],
                         "bits_per_weight must be a finite number"),
                        (["train", "--lr", "inf"], "TrainConfig.lr must be finite"),
                        (["demo", "--apb-bits-per-weight", "nan"],
                         "--apb-bits-per-weight must be a finite number"),
                        (["compare", "--lr", "nan"], "--lr must be a finite number")):
        code = cli.main([*argv, "--out-dir" if argv[0] == "train" else "--out",
                         str(tmp_path / "run")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and match in err[0], err
    assert not (tmp_path / "run").exists()
