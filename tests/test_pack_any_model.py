"""Packing, saving and loading models that are not in apb.models: a user's own CNN and a
tiny transformer-like encoder built from plain modules (issue 16).

Each goes compress_ → a few training steps → pack_ → save_packed → load_packed into a model
the user builds (on the CPU or the meta device), giving the packed model's logits bit for
bit; the file holds exactly the summary's bytes; a skeleton that does not fit the file is
refused with one error naming the tensor or layer and both shapes, and left unchanged.
"""

from __future__ import annotations

import copy
import json
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import load as st_load
from torch import nn

import apb
import apb.models
from _packing import TOLERANCE, one_thread, relative_error  # noqa: F401  (autouse fixture)
from apb.methods import APBConfig
from apb.pack import PackedFormatError, fold_batchnorm_, load_packed, save_packed
from apb.pack.xor import decode_file, encode_file, load_xor


# -- the user's models -------------------------------------------------------------------------
class Block(nn.Module):
    """conv → BN → ReLU → conv → BN, plus the input (a residual block)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class TinyCNN(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = Block(8)
        self.down = nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(12), nn.ReLU())
        self.head = nn.Linear(12, classes)

    def forward(self, x):
        x = self.down(self.block(self.stem(x)))
        return self.head(x.mean(dim=(2, 3)))


class TinyEncoder(nn.Module):
    """Embeddings (tied to the output head), LayerNorms, one attention and one MLP, and
    BERT's int64 ``position_ids``, a non-persistent buffer."""

    def __init__(self, vocab: int = 40, dim: int = 16, length: int = 12, tie: bool = True):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.register_buffer("position_ids", torch.arange(length).expand(1, -1),
                             persistent=False)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v, self.o = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.ff1, self.ff2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        if tie:
            self.lm_head.weight = self.embed.weight

    def forward(self, ids):
        h = self.embed(ids) + self.pos(self.position_ids[:, :ids.shape[1]])
        x = self.norm1(h)
        scores = self.q(x) @ self.k(x).transpose(1, 2) / x.shape[-1] ** 0.5
        h = h + self.o(scores.softmax(-1) @ self.v(x))
        h = h + self.ff2(F.relu(self.ff1(self.norm2(h))))
        return self.lm_head(h)


def trained(model: nn.Module, x: torch.Tensor, y: torch.Tensor, act_bits: int = 2):
    """``model`` compressed and trained for a few steps with a plain torch loop, in eval."""
    apb.compress_(model, APBConfig(fp_fraction=0.05, act_bits=act_bits))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(3):
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def file_model_bytes(path) -> int:
    data = path.read_bytes()
    return len(data) - 8 - struct.unpack("<Q", data[:8])[0]


def file_metadata(path) -> dict:
    data = path.read_bytes()
    return json.loads(data[8:8 + struct.unpack("<Q", data[:8])[0]])["__metadata__"]


def meta_skeleton(cls, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return cls(**kwargs)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """``(training model, packed model, file, input)`` of the user's CNN."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    model = trained(TinyCNN(), x, y)
    packed = apb.pack_(copy.deepcopy(model))
    path = tmp_path_factory.mktemp("cnn") / "cnn.safetensors"
    save_packed(packed, path)
    return model, packed, path, x


# -- round trips -------------------------------------------------------------------------------
def test_own_cnn_round_trips_into_a_skeleton(cnn):
    model, packed, path, x = cnn
    assert sorted(n for n, _ in apb.pack.packed_layers(packed)) == [
        "block.conv1", "block.conv2", "down.0"]
    with torch.no_grad():
        want, got = model(x), packed(x)
    assert relative_error(got, want) < TOLERANCE
    predicted = apb.summary(model).model_bytes
    assert file_model_bytes(path) == predicted == apb.summary(packed).model_bytes
    assert "architecture" not in file_metadata(path)
    for skeleton in (TinyCNN(), meta_skeleton(TinyCNN)):
        loaded = load_packed(path, model=skeleton)
        assert loaded is skeleton and not loaded.training
        assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
        with torch.no_grad():
            assert torch.equal(loaded(x), got)
        assert apb.summary(loaded).model_bytes == predicted
    with pytest.raises(PackedFormatError, match=r"records no architecture.*model=MyNet\(\)"):
        load_packed(path)


def test_own_cnn_folds_its_batchnorms(cnn):
    model, _, path, x = cnn
    loaded = load_packed(path, model=meta_skeleton(TinyCNN))
    with torch.no_grad():
        want = model(x)
        fold_batchnorm_(loaded)
        got = loaded(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in loaded.modules())
    assert loaded.block.conv1.folded and loaded.block.conv2.folded and loaded.down[0].folded
    assert relative_error(got, want) < TOLERANCE


def test_tiny_encoder_round_trips_with_its_tie_and_int64_buffer(tmp_path):
    torch.manual_seed(1)
    ids = torch.randint(0, 40, (4, 10))
    model = trained(TinyEncoder(), ids, torch.randint(0, 40, (4, 10)), act_bits=32)
    packed = apb.pack_(copy.deepcopy(model))
    assert sorted(n for n, _ in apb.pack.packed_layers(packed)) == ["ff1", "ff2", "k", "o", "v"]
    with torch.no_grad():
        want, got = model(ids), packed(ids)
    assert relative_error(got, want) < TOLERANCE
    path = tmp_path / "enc.safetensors"
    info = save_packed(packed, path)
    assert info.model_bytes == file_model_bytes(path) == apb.summary(model).model_bytes
    assert json.loads(file_metadata(path)["tied"]) == {"lm_head.weight": "embed.weight"}
    for skeleton in (TinyEncoder(), meta_skeleton(TinyEncoder)):
        loaded = load_packed(path, model=skeleton)
        assert loaded.lm_head.weight is loaded.embed.weight
        assert torch.equal(loaded.position_ids, torch.arange(12).expand(1, -1))
        with torch.no_grad():
            assert torch.equal(loaded(ids), got)
    with pytest.raises(PackedFormatError, match="'lm_head.weight' as the same tensor as "
                                                "'embed.weight'.*tie them"):
        load_packed(path, model=TinyEncoder(tie=False))
    encoded = tmp_path / "enc.xor.safetensors"
    encode_file(path, encoded)  # int64 buffers and ties pass through the XOR format too
    with torch.no_grad():
        assert torch.equal(load_xor(encoded, model=meta_skeleton(TinyEncoder))(ids), got)


def shared_mlp() -> nn.Module:
    """One Linear registered twice (a shared module: every tensor under two names)."""
    shared = nn.Linear(8, 8)
    return nn.Sequential(shared, nn.ReLU(), nn.Linear(8, 8), nn.LayerNorm(8), shared)


def test_a_shared_module_is_stored_once_and_shared_again(tmp_path):
    torch.manual_seed(5)
    model = shared_mlp()
    apb.compress_(model, APBConfig(fp_fraction=0.1), filter_fn=lambda m, name: name == "2")
    packed = apb.pack_(model.eval())
    rows = {r.name: r for r in apb.summary(packed).rows}
    assert set(rows) == {"0", "2"}  # "4" is "0"
    path = tmp_path / "shared.safetensors"
    info = save_packed(packed, path)
    assert info.model_bytes == apb.summary(packed).model_bytes
    assert json.loads(file_metadata(path)["tied"]) == {"4.weight": "0.weight", "4.bias": "0.bias"}
    loaded = load_packed(path, model=meta_skeleton(shared_mlp))
    assert loaded[0] is loaded[4]
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), packed(x))
    with pytest.raises(PackedFormatError, match="stores '4.weight' as the same tensor as '0.weight'"):
        load_packed(path, model=nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8),
                                              nn.LayerNorm(8), nn.Linear(8, 8)))
    model2 = shared_mlp()
    model2[3] = model2[0]  # ties a LayerNorm slot to the Linear: another grouping
    with pytest.raises(PackedFormatError, match="the model ties '0.weight' and '3.weight'"):
        load_packed(path, model=model2)


def test_zoo_files_keep_their_architecture(tmp_path):
    torch.manual_seed(2)
    model = apb.models.create("mlp", in_features=16, hidden=[24])
    x = torch.randn(6, 16)
    apb.compress_(model, APBConfig(fp_fraction=0.05, act_bits=2),
                  filter_fn=lambda m, name: name != "fc1")
    with torch.no_grad():
        model.train()(x)
    packed = apb.pack_(model.eval())
    path = tmp_path / "mlp.safetensors"
    save_packed(packed, path)
    assert json.loads(file_metadata(path)["architecture"])["name"] == "mlp"
    with torch.no_grad():
        want = packed(x)
        assert torch.equal(load_packed(path)(x), want)
        skeleton = meta_skeleton(apb.models.create, name="mlp", in_features=16, hidden=[24])
        assert torch.equal(load_packed(path, model=skeleton)(x), want)


def test_xor_encodes_a_file_without_architecture(cnn, tmp_path):
    _, packed, path, x = cnn
    encoded, back = tmp_path / "cnn.xor.safetensors", tmp_path / "back.safetensors"
    encode_file(path, encoded)
    decode_file(encoded, back)
    assert file_metadata(back) == file_metadata(path)
    a, b = st_load(path.read_bytes()), st_load(back.read_bytes())
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(load_xor(encoded, model=meta_skeleton(TinyCNN))(x), packed(x))
    with pytest.raises(PackedFormatError, match="pass the model to fill"):
        load_xor(encoded)


# -- skeletons that do not fit -----------------------------------------------------------------
def _set(path: str, module_fn):
    def edit(m):
        m.set_submodule(path, module_fn())
    return edit


BAD_SKELETONS = {
    "padding": (_set("block.conv1", lambda: nn.Conv2d(8, 8, 3, padding=2, bias=False)),
                r"'block.conv1' does not fit .*padding \[1, 1\] in the file, \[2, 2\] in the model"),
    "kernel": (_set("block.conv1", lambda: nn.Conv2d(8, 8, 5, padding=1, bias=False)),
               r"weight shape \[8, 8, 3, 3\] in the file, \[8, 8, 5, 5\] in the model"),
    "stride": (_set("down.0", lambda: nn.Conv2d(8, 12, 3, padding=1, bias=False)),
               r"'down.0' .*stride \[2, 2\] in the file, \[1, 1\] in the model"),
    "groups": (_set("block.conv2", lambda: nn.Conv2d(8, 8, 3, padding=1, bias=False, groups=2)),
               r"weight shape \[8, 8, 3, 3\] in the file, \[8, 4, 3, 3\] .*groups 1 in the "
               r"file, 2 in the model"),
    "bias": (_set("block.conv1", lambda: nn.Conv2d(8, 8, 3, padding=1)),
             r"bias False in the file, True in the model"),
    "not a conv": (_set("block.conv1", lambda: nn.Linear(8, 8)),
                   r"'block.conv1' is a apb_conv2d \(weight \[8, 8, 3, 3\]\), but the model has "
                   r"a Linear there"),
    "no place": (_set("down", nn.Sequential),
                 r"packed layer 'down.0' has no place in the model"),
    "plain shape": (_set("head", lambda: nn.Linear(12, 5)),
                    r"'head.weight' is float32\[10, 12\] in the file, but the model's is "
                    r"float32\[5, 12\]"),
    "plain dtype": (_set("head", lambda: nn.Linear(12, 10, dtype=torch.float64)),
                    r"'head.weight' is float32\[10, 12\] in the file, but the model's is "
                    r"float64\[10, 12\]"),
    "missing": (_set("extra", lambda: nn.LayerNorm(4)),
                r"'extra.weight' \(parameter float32\[4\] in the model\) is missing from the file"),
    "unexpected": (_set("stem.1", nn.Identity),
                   r"no place for: stem.1.bias, stem.1.running_mean, stem.1.running_var, "
                   r"stem.1.weight"),
}


@pytest.mark.parametrize("case", sorted(BAD_SKELETONS))
def test_a_skeleton_that_does_not_fit_is_refused_and_left_alone(cnn, case):
    _, _, path, _ = cnn
    edit, message = BAD_SKELETONS[case]
    for on_meta in (False, True):
        skeleton = meta_skeleton(TinyCNN) if on_meta else TinyCNN()
        with torch.device("meta" if on_meta else "cpu"):
            edit(skeleton)
        before = {k: (v.device, v.clone()) for k, v in skeleton.state_dict().items()}
        modules = dict(skeleton.named_modules())
        with pytest.raises(PackedFormatError, match=message):
            load_packed(path, model=skeleton)
        assert dict(skeleton.named_modules()) == modules
        after = skeleton.state_dict()
        assert set(after) == set(before)
        for k, (device, value) in before.items():
            assert after[k].device == device
            assert on_meta or torch.equal(after[k], value)


# -- the verbs on any model --------------------------------------------------------------------
class Optional(nn.Module):
    """The conv output reaches the sum too when ``skip`` is given: never foldable."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x, skip=None):
        y = self.conv(x)
        return self.bn(y) if skip is None else self.bn(y) + y


class Gated(nn.Module):
    """Data-dependent control flow at the top; the body traces on its own."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.body(x)
        return self.bn(y) if x.sum() > 0 else y


def _randomized_bns(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model.eval()


def test_fold_folds_only_what_the_graph_proves():
    torch.manual_seed(3)
    x = torch.randn(2, 3, 5, 5)
    optional = _randomized_bns(Optional())
    gated = _randomized_bns(Gated())
    with torch.no_grad():
        wants = [optional(x), optional(x, skip=1), gated(x), gated(-x.abs())]
        fold_batchnorm_(optional)
        fold_batchnorm_(gated)
        gots = [optional(x), optional(x, skip=1), gated(x), gated(-x.abs())]
    assert isinstance(optional.bn, nn.BatchNorm2d)  # the skip path reads the conv output
    assert isinstance(gated.body[1], nn.Identity) and isinstance(gated.bn, nn.BatchNorm2d)
    for got, want in zip(gots, wants):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_folded_batchnorm1d_takes_only_two_dimensional_input():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6))
    apb.compress_(model, APBConfig(fp_fraction=0.1), filter_fn=lambda m, name: name == "0")
    model = _randomized_bns(model)
    packed = fold_batchnorm_(apb.pack_(copy.deepcopy(model)))
    x = torch.randn(3, 6)
    with torch.no_grad():
        assert relative_error(packed(x), model(x)) < TOLERANCE
        with pytest.raises(ValueError, match=r"exact for \[batch, features\] input only"):
            packed(torch.randn(2, 6, 6))


def test_save_names_a_tensor_it_cannot_store(cnn, tmp_path):
    _, packed, _, _ = cnn
    bad = copy.deepcopy(packed)
    bad.head.to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"head.weight is torch.bfloat16.*model.float\(\)"):
        save_packed(bad, tmp_path / "bad.safetensors")
    bad = copy.deepcopy(packed)
    bad.register_buffer("mask", torch.full((2,), float("-inf")))
    save_packed(bad, tmp_path / "inf.safetensors")  # -inf masks are fine in buffers
    with torch.no_grad():
        bad.head.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="head.weight holds NaN or Inf"):
        save_packed(bad, tmp_path / "bad.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inf.safetensors"]
