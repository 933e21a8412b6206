"""ptq_: OBC and post-training APB on whole models, checked against independent references
(magnitude pruning, the naive band rule, output errors computed directly)."""

import copy

import pytest
import torch
from torch import nn

import apb
import apb.train
from apb.memory import binary_sparse_storage
from apb.methods import APBPTQConfig, OBCConfig, OBCError, create, ptq_
from apb.methods.obc_calib import BatchNormCorrection, input_rows, recalibrate_batchnorm
from apb.methods.obc_layer import LayerProblem
from apb.methods.ptq_solve import solve
from apb.nn import APBWeightQuantizer, OBCWeightQuantizer, QuantConv2d, QuantLinear


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 4 * 4, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10),
    ).eval()


def calibration(n=320, batch=64, seed=1, shape=(1, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    return [(x[i:i + batch], torch.zeros(len(x[i:i + batch]))) for i in range(0, n, batch)]


def output_error(a: nn.Module, b: nn.Module, batches) -> float:
    with torch.no_grad():
        num = sum(float((a(x) - b(x)).square().sum()) for x, _ in batches)
        den = sum(float(a(x).square().sum()) for x, _ in batches)
    return num / den


def linear_problem(d_in=64, d_out=24, n=512, seed=2):
    """One Linear layer fed strongly correlated inputs (where OBS beats magnitude most)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d_in, d_in, generator=g) / d_in**0.5 + torch.eye(d_in)
    x = torch.randn(n, d_in, generator=g) @ mix
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d_in, d_out))
    return model, [(x[i:i + 128], None) for i in range(0, n, 128)]


ALL = lambda m, n: isinstance(m, (nn.Linear, nn.Conv2d))  # noqa: E731


def test_obs_pruning_beats_magnitude_pruning():
    model, batches = linear_problem()
    obc = copy.deepcopy(model)
    ptq_(obc, OBCConfig(mode="prune", sparsity=0.5, batchnorm="keep"), batches, ALL)
    mag = copy.deepcopy(model)
    w = mag[0].weight.data
    w[w.abs() <= w.abs().flatten().kthvalue(w.numel() // 2).values] = 0
    assert int((obc[0].quantized_weight() == 0).sum()) == w.numel() // 2
    assert output_error(model, obc, batches) < 0.6 * output_error(model, mag, batches)


def test_obq_beats_round_to_nearest_on_the_same_grid():
    model, batches = linear_problem()
    obq = copy.deepcopy(model)
    ptq_(obq, OBCConfig(mode="quant", bits=3), batches, ALL)
    q = obq[0].weight_quantizer
    rtn = copy.deepcopy(model)
    s, z = q.scale[:, None], q.zero[:, None]
    w = rtn[0].weight.data
    w.copy_(s * ((torch.round(w / s) + z).clamp(0, 7) - z))
    assert output_error(model, obq, batches) < 0.7 * output_error(model, rtn, batches)


def test_apb_ptq_beats_the_naive_band_rule_at_equal_bits():
    model, batches = linear_problem()
    errors = {}
    for compensate in (True, False):
        m = copy.deepcopy(model)
        ptq_(m, APBPTQConfig(bits_per_weight=1.6, compensate=compensate), batches, ALL)
        assert apb.summary(m).bits_per_weight <= 1.6
        errors[compensate] = output_error(model, m, batches)
    assert errors[True] < 0.75 * errors[False]


CONFIGS = [
    OBCConfig(mode="prune", sparsity=0.5),
    OBCConfig(mode="prune", nm="2:4"),
    OBCConfig(mode="quant", bits=4, symmetric=False),
    OBCConfig(mode="compound", sparsity=0.5, bits=3),
    APBPTQConfig(bits_per_weight=1.6),
    APBPTQConfig(fp_fraction=0.05, per_channel=True, alpha_rounds=0),
    APBPTQConfig(bits_per_weight=1.6, compensate=False),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_results_are_compressed_layers_that_rebuild_from_their_checkpoint(config):
    model = small_cnn()
    batches = calibration()
    compressed = copy.deepcopy(model)
    report = ptq_(compressed, config, batches)
    assert report.bn_layers == 2
    layers = [m for m in compressed.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    assert len(layers) == 3  # the first conv and the classifier stay full precision
    method = apb.methods.post_training_method(config)
    for layer in layers:
        wq = layer.weight_quantizer
        w_hat = layer.quantized_weight()
        if isinstance(config, OBCConfig):
            assert isinstance(wq, OBCWeightQuantizer)
            torch.testing.assert_close(w_hat, layer.weight, rtol=0, atol=0)  # already snapped
            pruned = 1 - float(wq.keep.float().mean())
            assert pruned == pytest.approx(0.5 if config.mode != "quant" else 0.0)
        else:
            assert isinstance(wq, APBWeightQuantizer) and bool(wq.mask_frozen)
            mask = wq.frozen_mask
            alpha = wq._alpha_view().detach().expand_as(w_hat)
            torch.testing.assert_close(w_hat[mask].abs(), alpha[mask])
            nnz = int((~mask).sum())
            assert wq.storage(layer.weight) == binary_sparse_storage(
                wq.rows, wq.cols, nnz, n_scalars=wq.alpha_count)
            if config.compensate:  # the band rule on the written weights gives the same mask
                torch.testing.assert_close(w_hat, layer.weight, rtol=0, atol=0)
                assert torch.equal(wq.normalized_distance(layer.weight)
                                   < (wq.delta.detach() / wq.alpha.detach()).reshape(
                                       -1, *[1] * (layer.weight.dim() - 1)), mask)
    s = apb.summary(compressed)
    if isinstance(config, APBPTQConfig) and config.bits_per_weight:
        assert s.bits_per_weight <= config.bits_per_weight
    # Rebuild the structure from what the checkpoint stores, then load the state.
    name, options = method.checkpoint_method()
    rebuilt = create(name, **options).prepare(copy.deepcopy(model))
    rebuilt.load_state_dict(compressed.state_dict())
    rebuilt.eval()
    x = batches[0][0]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), compressed(x))
    assert apb.summary(rebuilt).to_dict() == s.to_dict()


def test_sequential_calibration_solves_each_layer_on_the_compressed_layers_inputs():
    """Sequential calibration solves each layer for the least-squares target
    W* = W + W (K^T - H)(H + λ mean(diag H) I)^-1, H = 2/n X_q^T X_q, K^T = 2/n X_f^T X_q,
    where X_q are the inputs it gets once the layers before it are compressed (and the
    BatchNorms between corrected) and X_f the full-precision model's. Here X_q and X_f are
    collected by hooks on the finished and the full-precision models, W* is computed by
    hand, and the per-layer solver alone (tested on its own) run on it must give every
    layer's weights, and the reported error must be ||W X_f - W^ X_q||^2 / ||W X_f||^2.
    Independent calibration solves every layer for W on X_f: for the later layers it
    matches neither. The lazy solver without activation order visits the columns in a
    fixed order, so the hand-computed H (another summation order) gives the same grid
    decisions; the exact greedy loop can break near-ties differently."""
    model = small_cnn()
    batches = calibration()
    config = OBCConfig(mode="quant", bits=3, sequential=True, solver="lazy", act_order=False)
    seq = copy.deepcopy(model)
    report = ptq_(seq, config, batches)
    assert [r.name for r in report.layers] == ["3", "8", "10"]
    method = apb.methods.post_training_method(config)
    for layer in report.layers:
        xf = _layer_inputs(model, layer.name, batches)
        xq = _layer_inputs(seq, layer.name, batches)
        # the first compressed layer sees the full-precision inputs; the later ones do not,
        # or sequential and independent calibration would be the same thing
        assert torch.equal(xq, xf) == (layer.name == "3")
        n, d = xq.shape
        H, Kt = 2 / n * xq.T @ xq, 2 / n * xf.T @ xq
        damped = H + config.dampening * H.diagonal().mean() * torch.eye(d, dtype=H.dtype)
        w = model.get_submodule(layer.name).weight.detach().double().flatten(1)
        w_star = w + torch.linalg.solve(damped, (Kt - H).T @ w.T).T  # damped is symmetric
        problem = LayerProblem.build(layer.name, w_star, H, n, config.dampening)
        level = method.uniform_level(layer.name, model.get_submodule(layer.name).weight)
        expected, _ = solve(config, problem, level, method.fit(problem.W, level))
        w_hat = seq.get_submodule(layer.name).weight.detach().double().flatten(1)
        torch.testing.assert_close(w_hat, expected.weight.double(), rtol=0, atol=1e-5)
        want = (xf @ w.T - xq @ w_hat.T).square().sum() / (xf @ w.T).square().sum()
        assert layer.relative_error == pytest.approx(float(want), rel=1e-5)


def _layer_inputs(model: nn.Module, name: str, batches) -> torch.Tensor:
    module, rows = model.get_submodule(name), []
    handle = module.register_forward_pre_hook(
        lambda m, args: rows.append(input_rows(m, args[0].detach())))
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    handle.remove()
    return torch.cat(rows).double()


def test_fp_target_is_the_least_squares_fit_to_the_full_precision_output():
    """Sequential calibration states each layer for W* = W + W(K^T - H)H^-1: without
    dampening, the least-squares solution of W* X_q = W X_f; unchanged inputs give W."""
    g = torch.Generator().manual_seed(3)
    n, d, rows = 400, 12, 5
    xf = torch.randn(n, d, generator=g, dtype=torch.float64)
    xq = xf + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    W = torch.randn(rows, d, generator=g, dtype=torch.float64)
    H, cross = 2 / n * xq.T @ xq, 2 / n * xf.T @ xq
    problem = LayerProblem.build("l", W, H, n, dampening=0.0, cross=cross)
    lstsq = torch.linalg.lstsq(xq, xf @ W.T).solution.T
    torch.testing.assert_close(problem.W, lstsq, rtol=1e-9, atol=1e-9)
    same = LayerProblem.build("l", W, H, n, dampening=0.01, cross=H)
    torch.testing.assert_close(same.W, W, rtol=0, atol=1e-12)


def test_sequential_layers_are_fitted_to_the_full_precision_outputs():
    """Each reported error is ||W X_f - W^ X_q||^2 / ||W X_f||^2, measured here directly on
    the finished model (BatchNorms corrected), X_f from the full-precision model."""
    model = small_cnn()
    batches = calibration()
    seq = copy.deepcopy(model)
    report = ptq_(seq, APBPTQConfig(bits_per_weight=1.6), batches)
    assert seq[4].running_mean.ne(model[4].running_mean).any()  # corrected after conv '3'
    for layer in report.layers:
        xf = _layer_inputs(model, layer.name, batches)
        xq = _layer_inputs(seq, layer.name, batches)
        w = model.get_submodule(layer.name).weight.detach().double().flatten(1)
        w_hat = seq.get_submodule(layer.name).quantized_weight().detach().double().flatten(1)
        want = (xf @ w.T - xq @ w_hat.T).square().sum() / (xf @ w.T).square().sum()
        assert layer.relative_error == pytest.approx(float(want), rel=1e-6, abs=1e-9)
    indep = copy.deepcopy(model)
    ptq_(indep, APBPTQConfig(bits_per_weight=1.6, sequential=False), batches)
    assert output_error(model, seq, batches) < output_error(model, indep, batches)


def test_batchnorm_shift_keeps_trained_statistics_where_nothing_changed():
    """'shift' moves the trained statistics by what compression changes on the calibration
    data: an unchanged model keeps them exactly, and a changed layer moves the mean of the
    next BatchNorm by exactly the change of its calibration mean."""
    model = small_cnn()
    for bn in (model[1], model[4]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    trained = copy.deepcopy(model)
    batches = calibration()
    correction = BatchNormCorrection("shift", model, batches)
    assert correction(model) == 2
    for a, b in zip(model.state_dict().values(), trained.state_dict().values()):
        assert torch.equal(a, b)
    with torch.no_grad():
        model[3].weight.mul_(1.5).add_(0.05)
    changed = copy.deepcopy(model)
    correction(model)
    reference, moved = copy.deepcopy(trained), copy.deepcopy(changed)
    recalibrate_batchnorm(reference, batches)
    recalibrate_batchnorm(moved, batches)
    torch.testing.assert_close(model[1].running_mean, trained[1].running_mean)
    torch.testing.assert_close(
        model[4].running_mean,
        trained[4].running_mean + moved[4].running_mean - reference[4].running_mean)
    torch.testing.assert_close(
        model[4].running_var,
        trained[4].running_var * moved[4].running_var / reference[4].running_var)
    keep = copy.deepcopy(changed)
    assert BatchNormCorrection("keep", trained, batches)(keep) == 0
    assert torch.equal(keep[4].running_mean, changed[4].running_mean)


@pytest.mark.parametrize("config, check", [
    (OBCConfig(mode="prune", sparsity=0.6, scope="model"),
     lambda s, m: 1 - s.fp_fraction >= 0.6),
    (OBCConfig(mode="quant", bits_per_weight=3.5), lambda s, m: s.bits_per_weight <= 3.5),
    (OBCConfig(mode="quant", model_bytes=9000), lambda s, m: s.model_bytes <= 9000),
    (APBPTQConfig(bits_per_weight=1.3, budget_scope="model"),
     lambda s, m: s.bits_per_weight <= 1.3),
    (APBPTQConfig(fp_fraction=0.02, budget_scope="model"),
     lambda s, m: s.compressed_fp <= round(0.02 * s.compressed_weights)),
])
def test_model_wide_budgets_are_met(config, check):
    model = small_cnn()
    report = ptq_(model, config, calibration())
    assert report.budget is not None
    assert check(apb.summary(model), model)


def test_bops_budget_is_met():
    model = small_cnn()
    report = ptq_(model, OBCConfig(mode="quant", bops_reduction=6.0), calibration())
    positions = {"3": 64, "8": 1, "10": 1}
    fp = sum(positions[r.name] * torch.Size(r.shape).numel() * 32 * 32 for r in report.layers)
    got = sum(positions[name] * m.weight.numel() * int(m.weight_quantizer.bits or 32) * 32
              for name, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear)))
    assert got <= fp / 6.0


def test_batchnorm_statistics_are_re_estimated_on_the_calibration_data():
    model = small_cnn()
    batches = calibration()
    bn = model[1]
    bn.running_mean.fill_(5.0)
    recalibrate_batchnorm(model, batches)
    with torch.no_grad():
        h = torch.cat([model[0](x) for x, _ in batches])
    torch.testing.assert_close(bn.running_mean, h.mean((0, 2, 3)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_var, h.var((0, 2, 3)), atol=1e-4, rtol=1e-4)
    assert bn.momentum == 0.1 and not model.training


def test_transformer_encoder():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64,
                                       dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()
    x = torch.randn(48, 6, 32, generator=torch.Generator().manual_seed(1))
    batches = [x[i:i + 16] for i in range(0, 48, 16)]
    feed_forward = lambda m, n: type(m) is nn.Linear  # noqa: E731
    for config, tolerance in ((OBCConfig(mode="quant", bits=4), 0.01),
                              (APBPTQConfig(bits_per_weight=2.0), 0.2)):
        m = copy.deepcopy(model)
        report = ptq_(m, config, batches, feed_forward)
        # nn.MultiheadAttention became separate projections, compressed like the rest
        assert [r.name for r in report.layers] == [
            f"layers.{i}.{n}" for i in range(2)
            for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                      "self_attn.out_proj", "linear1", "linear2")]
        assert isinstance(m.layers[1].linear2, QuantLinear)
        with torch.no_grad():
            fast = m(x)  # eval + no_grad: PyTorch's fused path reads .weight directly
        with torch.enable_grad():
            slow = m(x)  # the module path, through the weight quantizers
        torch.testing.assert_close(fast, slow.detach(), atol=1e-5, rtol=1e-4)
        assert output_error(model, m, [(x, None)]) < tolerance
    out_proj = lambda m, n: n.endswith("out_proj")  # noqa: E731
    report = ptq_(copy.deepcopy(model), OBCConfig(mode="quant", bits=4), batches, out_proj)
    assert [r.name for r in report.layers] == ["layers.0.self_attn.out_proj",
                                               "layers.1.self_attn.out_proj"]


def test_bad_input_is_named_and_refused():
    model = small_cnn()
    batches = calibration()
    grouped = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(), nn.Linear(288, 4))
    with pytest.raises(OBCError, match="layer '0' is a grouped convolution"):
        ptq_(grouped, OBCConfig(mode="prune", sparsity=0.5), calibration(shape=(4, 8, 8)), ALL)
    with pytest.raises(OBCError, match="layer '8' has 256 weights per output.*only 128"):
        ptq_(copy.deepcopy(model), OBCConfig(mode="prune", sparsity=0.5), calibration(n=128))
    with pytest.raises(OBCError, match="layer '3'.*below what the binary part"):
        ptq_(copy.deepcopy(model), APBPTQConfig(bits_per_weight=1.001), batches)
    with pytest.raises(OBCError, match="cannot be met"):
        ptq_(copy.deepcopy(model), OBCConfig(mode="prune", model_bytes=100), batches)
    with pytest.raises(ValueError, match="batchnorm must be one of shift, reestimate, keep"):
        ptq_(copy.deepcopy(model), OBCConfig(mode="quant", bits=4, batchnorm="fold"), batches)
    with pytest.raises(OBCError, match="empty"):
        ptq_(copy.deepcopy(model), OBCConfig(mode="quant", bits=4), [])
    dead = nn.Sequential(nn.Linear(6, 3))
    x = torch.randn(64, 6)
    x[:, 2] = 0
    with pytest.raises(OBCError, match="Hessian of layer '0' is singular"):
        ptq_(dead, OBCConfig(mode="quant", bits=4, dampening=0.0), [x], ALL)
    for config, message in [
        (OBCConfig(mode="quant", bits=4, act_bits=2), "act_bits must be 32"),
        (OBCConfig(mode="compound", bits=4), "mode 'compound' takes bits and"),
        (OBCConfig(mode="prune", sparsity=0.5, model_bytes=10), "leave sparsity, nm and bits"),
        (OBCConfig(mode="prune", nm="4:2"), "0 < n < m"),
        (APBPTQConfig(), "exactly one of bits_per_weight or fp_fraction"),
    ]:
        with pytest.raises(ValueError, match=message):
            ptq_(copy.deepcopy(model), config, batches)
    with pytest.raises(TypeError, match="post-training"):
        apb.compress_(copy.deepcopy(model), OBCConfig(mode="quant", bits=4))
    with pytest.raises(ValueError, match="apb ptq"):
        apb.train.TrainConfig(method="obc")
