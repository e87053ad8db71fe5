"""Tests of longtail.models: backbones, heads, LongTailModel and build_model."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from longtail.errors import CheckpointError, ConfigError
from longtail.models import (
    BACKBONES,
    HEADS,
    CosineHead,
    LinearHead,
    LongTailModel,
    LWSHead,
    ModelOutput,
    build_model,
    tau_normalize,
)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tv_backbone_params(arch: str) -> int:
    """Parameter count of torchvision's model minus its fc layer, computed independently."""
    net = getattr(torchvision.models, arch)(weights=None)
    return n_params(net) - n_params(net.fc)


# --------------------------------------------------------------------------------------------
# ResNet-32
# --------------------------------------------------------------------------------------------


def test_registries_list_the_documented_names():
    assert set(BACKBONES.names()) == {"resnet32", "resnet50", "resnext50_32x4d", "resnet152"}
    assert set(HEADS.names()) == {"linear", "cosine", "lws"}


def test_resnet32_parameter_count_is_exact():
    model = build_model("resnet32", "linear", 10)
    assert n_params(model) == 464_154
    assert n_params(model.backbone) == 464_154 - (64 * 10 + 10)
    assert model.feature_dim == 64 and model.num_classes == 10


def test_resnet32_output_shapes_and_nonnegative_features():
    torch.manual_seed(0)
    model = build_model("resnet32", "linear", 10)
    x = torch.randn(4, 3, 32, 32)
    for mode in (True, False):
        model.train(mode)
        out = model(x)
        assert isinstance(out, ModelOutput) and out._fields == ("logits", "features")
        assert out.logits.shape == (4, 10)
        assert out.features.shape == (4, 64)
        assert (out.features >= 0).all()
        assert (out.features > 0).any()
        # logits are the head applied to the returned features
        torch.testing.assert_close(out.logits, model.head(out.features))


def test_resnet32_option_a_shortcuts_are_parameter_free_subsample_and_pad():
    model = build_model("resnet32", "linear", 10)
    bb = model.backbone
    down = [bb.layer2[0].shortcut, bb.layer3[0].shortcut]
    for sc in down:
        assert n_params(sc) == 0 and len(list(sc.buffers())) == 0
    # all other blocks use the identity shortcut
    for layer in (bb.layer1, bb.layer2, bb.layer3):
        assert len(layer) == 5
        for block in list(layer)[1:]:
            assert n_params(block.shortcut) == 0
            x = torch.randn(1, block.conv1.in_channels, 4, 4)
            assert torch.equal(block.shortcut(x), x)
    assert n_params(bb.layer1[0].shortcut) == 0
    # the 16 -> 32 shortcut: x[:, :, ::2, ::2] with 8 zero channels on each side
    x = torch.randn(2, 16, 8, 8)
    y = down[0](x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert torch.equal(y[:, :8], torch.zeros(2, 8, 4, 4))
    assert torch.equal(y[:, 24:], torch.zeros(2, 8, 4, 4))
    # stride-2 stages halve the resolution: 32 -> 16 -> 8
    feats = bb.layer2(bb.layer1(F.relu(bb.bn1(bb.conv1(torch.randn(1, 3, 32, 32))))))
    assert feats.shape == (1, 32, 16, 16)


def test_resnet32_kaiming_normal_init_uses_fan_in():
    torch.manual_seed(1)
    model = build_model("resnet32", "linear", 10)
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 31 and all(c.bias is None for c in convs)
    normalized = []
    for conv in convs:
        out_c, in_c, kh, kw = conv.weight.shape
        fan_in = in_c * kh * kw
        normalized.append((conv.weight.detach() / math.sqrt(2.0 / fan_in)).flatten())
    z = torch.cat(normalized)
    assert abs(z.std().item() - 1.0) < 0.02
    assert abs(z.mean().item()) < 0.02
    # the stride-2 16 -> 32 conv: fan-in (144) and fan-out (288) conventions differ by sqrt(2)
    w = model.backbone.layer3[0].conv1.weight.detach()  # 32 -> 64, fan_in 288, fan_out 576
    assert w.std().item() == pytest.approx(math.sqrt(2.0 / 288), rel=0.05)
    assert abs(w.std().item() - math.sqrt(2.0 / 576)) > 0.2 * math.sqrt(2.0 / 576)
    # BatchNorm: weight 1, bias 0; the linear head is Kaiming-normal too (reference CIFAR code)
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(b.weight, torch.ones_like(b.weight)) and not b.bias.any() for b in bns)
    assert model.head.weight.std().item() == pytest.approx(math.sqrt(2.0 / 64), rel=0.15)


# --------------------------------------------------------------------------------------------
# torchvision backbones
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["resnet50", "resnext50_32x4d"])
def test_torchvision_backbones_shapes_and_parameter_counts(arch):
    torch.manual_seed(0)
    model = build_model(arch, "linear", 5)
    assert model.feature_dim == 2048
    assert n_params(model.backbone) == tv_backbone_params(arch)
    assert n_params(model) == tv_backbone_params(arch) + 2048 * 5 + 5
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.logits.shape == (2, 5) and out.features.shape == (2, 2048)
    assert (out.features >= 0).all()


def test_resnet152_parameter_count():
    model = build_model("resnet152", "cosine", 3)
    assert model.feature_dim == 2048
    assert n_params(model.backbone) == tv_backbone_params("resnet152")


@pytest.fixture(scope="module")
def resnet50_weights(tmp_path_factory):
    """A torchvision ResNet-50 (with non-trivial BN statistics) saved as a plain state_dict."""
    torch.manual_seed(123)
    ref = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
                m.num_batches_tracked.fill_(7)
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(ref.state_dict(), path)
    ref.eval()
    return path, ref


def test_pretrained_loading_restores_every_tensor(resnet50_weights):
    path, ref = resnet50_weights
    model = build_model("resnet50", "linear", 4, pretrained=str(path))
    ref_state = ref.state_dict()
    got = model.backbone.state_dict()
    assert set(got) == {k for k in ref_state if not k.startswith("fc.")}
    for key, value in got.items():
        assert torch.equal(value, ref_state[key]), key
    # same features as torchvision's model without its classifier
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = torch.flatten(ref.avgpool(ref.layer4(ref.layer3(ref.layer2(ref.layer1(
            ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))))))), 1)
        torch.testing.assert_close(model(x).features, expected)


def test_pretrained_missing_or_corrupt_file_raises_checkpoint_error(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match="nope.pth"):
        build_model("resnet50", "linear", 4, pretrained=missing)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a torch checkpoint" * 10)
    with pytest.raises(CheckpointError, match="corrupt.pth"):
        build_model("resnet50", "linear", 4, pretrained=corrupt)
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], not_a_dict)
    with pytest.raises(CheckpointError, match="list.pth"):
        build_model("resnet50", "linear", 4, pretrained=not_a_dict)


def test_pretrained_mismatched_state_dict_names_file_and_keys(resnet50_weights, tmp_path):
    path, ref = resnet50_weights
    state = torch.load(path, map_location="cpu", weights_only=True)
    bad = dict(state)
    del bad["layer1.0.conv1.weight"]
    bad["bogus.weight"] = torch.zeros(3)
    bad["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    bad_path = tmp_path / "mismatch.pth"
    torch.save(bad, bad_path)
    with pytest.raises(CheckpointError) as info:
        build_model("resnet50", "linear", 4, pretrained=bad_path)
    msg = str(info.value)
    for needle in ("mismatch.pth", "layer1.0.conv1.weight", "bogus.weight", "conv1.weight"):
        assert needle in msg
    # a ResNet-50 checkpoint does not fit ResNeXt-50 (grouped convolutions)
    with pytest.raises(CheckpointError, match="resnet50.pth"):
        build_model("resnext50_32x4d", "linear", 4, pretrained=path)


def test_freeze_option_keeps_only_layer4_trainable(resnet50_weights):
    path, _ = resnet50_weights
    model = build_model("resnet50", "linear", 4, pretrained=path, freeze=["layer4"])
    model.train()
    for name, p in model.named_parameters():
        expect = name.startswith("backbone.layer4.") or name.startswith("head.")
        assert p.requires_grad == expect, name
    for name, m in model.backbone.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.training == name.startswith("layer4."), name
    with pytest.raises(ConfigError, match="layer9"):
        build_model("resnet50", "linear", 4, freeze=["layer9"])


def test_freeze_backbone_trainable_names_match_whole_module_names():
    # ResNet-152's layer3 has 36 blocks: "layer3.1" must not also free "layer3.10" ... "layer3.19"
    model = build_model("resnet152", "linear", 4)
    model.freeze_backbone(trainable=["layer3.1"])
    model.train()
    free = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert free and free == {n for n, _ in model.backbone.named_parameters() if n.startswith("layer3.1.")}
    for name, m in model.backbone.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.training == name.startswith("layer3.1."), name


# --------------------------------------------------------------------------------------------
# heads
# --------------------------------------------------------------------------------------------


def test_cosine_head_matches_independent_cosine_and_is_scale_invariant():
    torch.manual_seed(0)
    head = CosineHead(16, 5)
    assert head.weight.shape == (5, 16) and not any(n == "bias" for n, _ in head.named_parameters())
    f = torch.randn(8, 16)
    w = head.weight.detach().double()
    expected = torch.empty(8, 5, dtype=torch.float64)
    for i in range(8):
        for j in range(5):
            fi = f[i].double()
            expected[i, j] = (fi * w[j]).sum() / (fi.norm() * w[j].norm())
    logits = head(f)
    torch.testing.assert_close(logits.double(), expected, rtol=1e-5, atol=1e-6)
    assert logits.abs().max() <= 1.0 + 1e-6
    # invariant to scaling the features and to scaling each weight row
    torch.testing.assert_close(head(f * 37.5), logits, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        head.weight.mul_(torch.rand(5, 1) * 10 + 0.1)
    torch.testing.assert_close(head(f), logits, rtol=1e-5, atol=1e-6)


def test_cosine_head_is_finite_for_zero_features_and_under_autocast():
    head = CosineHead(8, 3)
    f = torch.zeros(2, 8, requires_grad=True)
    out = head(f)
    assert torch.isfinite(out).all() and torch.equal(out, torch.zeros(2, 3))
    out.sum().backward()
    assert torch.isfinite(f.grad).all() and torch.isfinite(head.weight.grad).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(torch.zeros(2, 8, dtype=torch.bfloat16))
    assert torch.isfinite(out).all()


def test_cosine_head_init_is_uniform_then_unit_rows():
    torch.manual_seed(3)
    head = CosineHead(64, 10)
    norms = head.weight.detach().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(10), rtol=1e-5, atol=1e-5)
    # direction of a uniform(-1, 1) draw: all entries bounded by 1 and both signs present
    assert (head.weight.abs() <= 1).all() and (head.weight > 0).any() and (head.weight < 0).any()


def test_lws_scales_whole_linear_logit_and_only_scales_train():
    torch.manual_seed(0)
    base = LinearHead(12, 4)
    with torch.no_grad():
        base.bias.uniform_(-1, 1)
    lws = LWSHead.from_head(base)
    assert torch.equal(lws.scales.detach(), torch.ones(4))
    f = torch.randn(6, 12)
    torch.testing.assert_close(lws(f), base(f))
    with torch.no_grad():
        lws.scales.copy_(torch.tensor([0.5, 2.0, 1.5, 3.0]))
    s = lws.scales.detach()
    manual = f @ (base.weight.detach() * s[:, None]).T + base.bias.detach() * s
    torch.testing.assert_close(lws(f), manual)
    assert [n for n, p in lws.named_parameters() if p.requires_grad] == ["scales"]
    lws(f).sum().backward()
    assert lws.scales.grad is not None and base.weight.grad is None and base.bias.grad is None
    lws.reset_parameters()
    assert torch.equal(lws.scales.detach(), torch.ones(4))


def test_lws_over_cosine_head_via_build_model():
    torch.manual_seed(0)
    model = build_model("resnet32", "lws", 6, head_params={"base": "cosine"})
    assert isinstance(model.head, LWSHead) and isinstance(model.head.base, CosineHead)
    with torch.no_grad():
        model.head.scales.uniform_(0.5, 2.0)
    f = torch.rand(3, 64)
    torch.testing.assert_close(model.head(f), model.head.base(f) * model.head.scales)
    assert [n for n, p in model.head.named_parameters() if p.requires_grad] == ["scales"]
    with pytest.raises(ConfigError, match="base"):
        build_model("resnet32", "lws", 6, head_params={"base": "lws"})


def test_tau_normalize_row_norms_and_independent_computation():
    torch.manual_seed(0)
    head = LinearHead(10, 7)
    with torch.no_grad():
        head.weight.mul_(torch.linspace(0.2, 5.0, 7)[:, None])
    w = head.weight.detach().clone()
    norms = w.double().norm(dim=1)
    for tau in (0.0, 0.3, 0.5, 1.0, 1.5):
        new = tau_normalize(head, tau)
        assert isinstance(new, LinearHead) and new.bias is None
        assert new is not head and new.weight.shape == w.shape
        torch.testing.assert_close(new.weight.detach().double().norm(dim=1), norms ** (1 - tau), rtol=1e-5, atol=1e-6)
        independent = torch.stack([w[j] / float(norms[j]) ** tau for j in range(7)])
        torch.testing.assert_close(new.weight.detach(), independent, rtol=1e-5, atol=1e-6)
    assert torch.equal(tau_normalize(head, 0).weight, w)
    unit = tau_normalize(head, 1.0).weight.detach().norm(dim=1)
    torch.testing.assert_close(unit, torch.ones(7))
    assert torch.equal(head.weight.detach(), w) and head.bias is not None  # original untouched
    with pytest.raises(ConfigError):
        tau_normalize(head, -0.5)


def test_tau_normalize_cosine_head_ranks_like_the_cosine_head_at_tau_1():
    torch.manual_seed(0)
    cos_head = CosineHead(10, 7)
    with torch.no_grad():
        cos_head.weight.mul_(torch.linspace(0.5, 3.0, 7)[:, None])  # unequal stored norms
    f = torch.randn(32, 10)
    lin = tau_normalize(cos_head, 1.0)
    assert lin.bias is None
    assert torch.equal(lin(f).argmax(1), cos_head(f).argmax(1))
    # tau = 0 scores f . w_j with the raw stored weights
    torch.testing.assert_close(tau_normalize(cos_head, 0.0)(f), f @ cos_head.weight.detach().T)


# --------------------------------------------------------------------------------------------
# LongTailModel
# --------------------------------------------------------------------------------------------


def _backbone_snapshot(model: LongTailModel) -> dict:
    return {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}


def _head_steps(model: LongTailModel, steps: int = 2) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-2)
    for _ in range(steps):
        x = torch.randn(8, 3, 16, 16)
        y = torch.randint(0, model.num_classes, (8,))
        loss = F.cross_entropy(model(x).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_freeze_backbone_keeps_params_and_bn_stats_bit_identical():
    torch.manual_seed(0)
    model = build_model("resnet32", "linear", 10)
    model.freeze_backbone()
    model.train()
    assert model.training and model.head.training
    assert not any(m.training for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(not p.requires_grad for p in model.backbone.parameters())
    before = _backbone_snapshot(model)
    head_before = model.head.weight.detach().clone()
    _head_steps(model)
    after = model.backbone.state_dict()
    assert set(after) == set(before)
    for key in before:
        assert torch.equal(after[key], before[key]), key
    assert not torch.equal(model.head.weight.detach(), head_before)
    model.eval()
    model.train()
    assert not any(m.training for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d))


def test_freeze_backbone_bn_train_updates_running_stats_only():
    torch.manual_seed(0)
    model = build_model("resnet32", "linear", 10)
    model.freeze_backbone(bn="train")
    model.train()
    before = _backbone_snapshot(model)
    _head_steps(model, steps=1)
    after = model.backbone.state_dict()
    for key in before:
        if "running" in key or "num_batches" in key:
            continue
        assert torch.equal(after[key], before[key]), key
    assert not torch.equal(after["bn1.running_mean"], before["bn1.running_mean"])
    with pytest.raises(ConfigError, match="bn"):
        model.freeze_backbone(bn="sometimes")
    model.unfreeze_backbone()
    assert all(p.requires_grad for p in model.backbone.parameters())


def test_reset_head_reinitializes_weights():
    torch.manual_seed(0)
    model = build_model("resnet32", "cosine", 10)
    old = model.head.weight.detach().clone()
    model.reset_head()
    assert not torch.equal(model.head.weight.detach(), old)
    torch.testing.assert_close(model.head.weight.detach().norm(dim=1), torch.ones(10), rtol=1e-5, atol=1e-5)


def test_build_model_errors_name_the_culprit():
    with pytest.raises(ConfigError, match="resnet32"):
        build_model("resnet33", "linear", 10)
    with pytest.raises(ConfigError, match="cosine"):
        build_model("resnet32", "cosin", 10)
    with pytest.raises(ConfigError, match="bias"):
        build_model("resnet32", "cosine", 10, head_params={"bias": True})
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("resnet32", "linear", 0)


def test_linear_head_options():
    model = build_model("resnet32", "linear", 10, head_params={"bias": False})
    assert model.head.bias is None and n_params(model.head) == 640
    torch.manual_seed(0)
    default = LinearHead(64, 10)  # PyTorch default: uniform(-1/8, 1/8)
    assert default.weight.abs().max() <= 1 / 8


def test_state_mismatch_names_every_kind_of_problem_and_tolerates_optional_keys():
    """The one check behind checkpoints, torchvision weights and timm weights."""
    from longtail.models.state import state_mismatch

    expected = {"a.weight": torch.zeros(3, 2), "a.bias": torch.zeros(3), "bn.num_batches_tracked": torch.zeros(())}
    assert state_mismatch(expected, dict(expected)) == ""
    state = {"a.weight": torch.zeros(2, 2), "b.extra": torch.zeros(1)}
    msg = state_mismatch(expected, state)
    assert msg == ("missing keys [a.bias, bn.num_batches_tracked]; unexpected keys [b.extra]; "
                   "shape mismatches [a.weight: file (2, 2) vs model (3, 2)]")
    no_bn = {k: v for k, v in expected.items() if "num_batches" not in k}
    assert state_mismatch(expected, no_bn, optional=lambda k: k.endswith("num_batches_tracked")) == ""
    many = {f"k{i}": torch.zeros(1) for i in range(12)}
    assert state_mismatch({}, many) == "unexpected keys [k0, k1, k2, k3, k4, ... (12 in all)]"
