"""Post-training compression at transformer scale: staged sequential calibration (shared
inputs, early stop, the block chain) against the general path, padded tokens left out of the
Hessians, bias correction, the lazy solver inside ptq_, and group-wise grids end to end."""

import copy

import pytest
import torch
from torch import nn

import apb
import apb.methods.obc_stages as stages
from apb.memory import group_count
from apb.methods import APBPTQConfig, OBCConfig, ptq_
from apb.methods.calibration import CalibrationSet
from apb.methods.obc_calib import collect_hessians
from apb.nn import OBCWeightQuantizer, QuantLinear
from apb.pack import PackError


class Block(nn.Module):
    """A post-norm transformer block with separate q/k/v projections, called as
    ``block(x, mask)`` and returning a tuple, as Hugging Face layers do."""

    def __init__(self, d=16, heads=2, ff=32):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.up, self.down = nn.Linear(d, ff), nn.Linear(ff, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, x, mask):
        B, T, d = x.shape
        split = lambda t: t.view(B, T, self.heads, -1).transpose(1, 2)  # noqa: E731
        att = torch.nn.functional.scaled_dot_product_attention(
            split(self.q(x)), split(self.k(x)), split(self.v(x)), attn_mask=mask)
        x = self.norm1(x + self.o(att.transpose(1, 2).reshape(B, T, d)))
        return (self.norm2(x + self.down(torch.nn.functional.gelu(self.up(x)))),)


class Encoder(nn.Module):
    def __init__(self, vocab=50, d=16, n=3):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(Block(d) for _ in range(n))

    def forward(self, input_ids, attention_mask):
        x = self.embed(input_ids)
        mask = attention_mask[:, None, None, :].bool()
        for layer in self.layers:
            x = layer(x, mask)[0]
        return x


def token_batches(n=6, batch=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 50, (batch, 12), generator=g)
        lengths = torch.randint(3, 13, (batch,), generator=g)
        mask = (torch.arange(12)[None] < lengths[:, None]).long()
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


ALL = lambda m, n: type(m) is nn.Linear  # noqa: E731


def outputs(model, batches):
    with torch.no_grad():
        return torch.cat([model(**b)[b["attention_mask"].bool()] for b in batches])


def test_stages_share_inputs_and_the_chain_matches_the_general_path(monkeypatch):
    model, batches = Encoder().eval(), token_batches()
    seq = stages.Sequential(model, [n for n, m in model.named_modules() if ALL(m, n)],
                            CalibrationSet(batches))
    assert seq.chained
    assert seq.stages[:4] == [["layers.0.q", "layers.0.k", "layers.0.v"], ["layers.0.o"],
                              ["layers.0.up"], ["layers.0.down"]]
    config = APBPTQConfig(fp_fraction=0.05, per_channel=True, solver="lazy")
    chained = copy.deepcopy(model)
    report = ptq_(chained, config, batches, ALL)
    monkeypatch.setattr(stages, "_chained", lambda *a: False)  # whole-model passes instead
    general = copy.deepcopy(model)
    report_general = ptq_(general, config, batches, ALL)
    assert [r.name for r in report.layers] == [r.name for r in report_general.layers]
    for a, b in zip(report.layers, report_general.layers):
        assert a.relative_error == pytest.approx(b.relative_error, rel=1e-6, abs=1e-9)
    torch.testing.assert_close(outputs(chained, batches), outputs(general, batches))
    assert all(isinstance(chained.get_submodule(r.name), QuantLinear) for r in report.layers)


def test_padded_tokens_are_left_out_of_the_hessians():
    model, batches = Encoder().eval(), token_batches()
    name = "layers.1.up"
    rows = []
    handle = model.get_submodule(name).register_forward_pre_hook(
        lambda m, a: rows.append(a[0].detach()))
    with torch.no_grad():
        for b in batches:
            model(**b)
    handle.remove()
    real = torch.cat([r[b["attention_mask"].bool()] for r, b in zip(rows, batches)]).double()
    every = torch.cat([r.reshape(-1, r.shape[-1]) for r in rows]).double()
    for mask_padding, X in ((True, real), (False, every)):
        col = collect_hessians(model, [name], CalibrationSet(batches, mask_padding=mask_padding))
        torch.testing.assert_close(col[name].hessian, 2 * X.T @ X / len(X))
        assert col[name].n_inputs == len(X)
        torch.testing.assert_close(col[name].mean, X.mean(0))


@pytest.mark.parametrize("sequential", [False, True])
def test_bias_correction_lowers_the_output_error(sequential):
    model, batches = Encoder().eval(), token_batches()
    reference = outputs(model, batches)
    errors = {}
    for bias_correction in (False, True):
        m = copy.deepcopy(model)
        ptq_(m, APBPTQConfig(bits_per_weight=1.5, solver="lazy", sequential=sequential,
                             bias_correction=bias_correction), batches, ALL)
        errors[bias_correction] = float((outputs(m, batches) - reference).square().mean())
        changed = not torch.equal(m.layers[0].up.bias, model.layers[0].up.bias)
        assert changed == bias_correction
    assert errors[True] < errors[False]


@pytest.mark.parametrize("config", [
    OBCConfig(mode="quant", bits=3, solver="lazy"),
    OBCConfig(mode="compound", sparsity=0.5, bits=4, solver="lazy", sequential=True),
    OBCConfig(mode="prune", nm="2:4", solver="lazy"),
    APBPTQConfig(bits_per_weight=1.6, solver="lazy", act_order=False),
    APBPTQConfig(bits_per_weight=1.4, budget_scope="model", solver="lazy"),
], ids=lambda c: f"{type(c).__name__}-{getattr(c, 'mode', 'apb')}")
def test_lazy_solver_inside_ptq(config):
    model, batches = Encoder().eval(), token_batches()
    reference = outputs(model, batches)
    m = copy.deepcopy(model)
    report = ptq_(m, config, batches, ALL)
    assert len(report.layers) == 18
    assert all(r.relative_error < 0.6 for r in report.layers)
    err = float((outputs(m, batches) - reference).square().sum() / reference.square().sum())
    assert err < 0.5
    if isinstance(config, APBPTQConfig):
        assert apb.summary(m).bits_per_weight <= config.bits_per_weight


def test_group_wise_grids_are_accounted_rebuilt_and_refused_by_pack():
    model, batches = Encoder().eval(), token_batches()
    config = OBCConfig(mode="quant", bits=4, group_size=8)
    m = copy.deepcopy(model)
    ptq_(m, config, batches, ALL)
    layer = m.layers[0].up
    wq = layer.weight_quantizer
    assert isinstance(wq, OBCWeightQuantizer) and wq.scale.shape == (32, 2)
    torch.testing.assert_close(layer.quantized_weight(), layer.weight, rtol=0, atol=0)
    expected_bits = sum(
        mod.weight.numel() * 4 + 32 * mod.weight.shape[0] * group_count(mod.weight.shape[1], 8)
        for mod in m.modules() if isinstance(mod, QuantLinear))
    s = apb.summary(m)
    assert s.bits_per_weight * s.compressed_weights == pytest.approx(expected_bits)
    with pytest.raises(PackError, match="no packed form"):
        apb.pack_(copy.deepcopy(m))
    method = apb.methods.post_training_method(config)
    name, options = method.checkpoint_method()
    rebuilt = apb.methods.create(name, **options).prepare(copy.deepcopy(model), ALL)
    rebuilt.load_state_dict(m.state_dict())
    torch.testing.assert_close(outputs(rebuilt.eval(), batches), outputs(m, batches))
    with pytest.raises(ValueError, match="lazy-batch solver"):
        OBCConfig(mode="quant", bits=4, group_size=8, solver="exact").validate()
