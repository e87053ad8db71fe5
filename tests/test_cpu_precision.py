"""CPU fast path: amp / channels_last selection, float32 losses under CPU autocast, evaluation
every N epochs and stage 2 on cached features."""
import copy
import json

import pytest
import torch
from torch import nn

from helpers_engine import tiny_config
from longtail.engine import precision
from longtail.engine.checkpoint import load_checkpoint
from longtail.engine.features import FeatureLoader, use_feature_cache
from longtail.engine.stage2 import retrain
from longtail.engine.step import TrainStep
from longtail.engine.build import build
from longtail.engine.trainer import eval_every, train
from longtail.errors import ConfigError
from longtail.losses import LOSSES, build_loss
from longtail.models import build_model
from longtail.models.model import LongTailModel

CPU = torch.device("cpu")
COUNTS = [40, 20, 10, 5, 2]


# ---------------------------------------------------------------------------------------------
# amp and channels_last selection
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, None)])
def test_amp_auto_on_cpu_follows_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: native)
    assert precision.amp_dtype({"amp": "auto"}, CPU) is expected


def test_amp_forced_settings_on_cpu(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    assert precision.amp_dtype({"amp": "none"}, CPU) is None  # fp32 even where bf16 is native
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: False)
    assert precision.amp_dtype({"amp": "bf16"}, CPU) is torch.bfloat16  # asked for: emulated
    with pytest.raises(ConfigError, match="fp16.*CUDA"):
        precision.amp_dtype({"amp": "fp16"}, CPU)
    with pytest.raises(ConfigError, match="amp 'fp8' unknown"):
        precision.amp_dtype({"amp": "fp8"}, CPU)


@pytest.mark.parametrize("flags, expected", [({"avx512f", "avx512_bf16"}, True), ({"amx_bf16"}, True),
                                             ({"avx512f", "avx2"}, False), (set(), False)])
def test_cpu_bf16_detection_from_cpuinfo_when_torch_has_no_probe(monkeypatch, flags, expected):
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, name, raising=False)
    monkeypatch.setattr(precision, "_cpuinfo_flags", lambda: set(flags))
    precision.cpu_bf16_supported.cache_clear()
    try:
        assert precision.cpu_bf16_supported() is expected
    finally:
        precision.cpu_bf16_supported.cache_clear()


def test_cpu_bf16_detection_uses_torch_probes(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    monkeypatch.setattr(precision, "_cpuinfo_flags", lambda: set())
    precision.cpu_bf16_supported.cache_clear()
    try:
        assert precision.cpu_bf16_supported() is True
    finally:
        precision.cpu_bf16_supported.cache_clear()


def test_channels_last_default(monkeypatch):
    assert precision.channels_last_default(torch.device("cuda")) is True
    assert precision.channels_last_default(torch.device("meta")) is False
    monkeypatch.setattr(precision, "_cpu_onednn_fast", lambda: True)
    assert precision.channels_last_default(CPU) is True
    monkeypatch.setattr(precision, "_cpu_onednn_fast", lambda: False)
    assert precision.channels_last_default(CPU) is False


@pytest.mark.parametrize("amp, cl", [("auto", "auto"), ("none", "false"), ("bf16", "true")])
def test_build_resolves_amp_and_layout_on_cpu(tmp_path, monkeypatch, amp, cl):
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    monkeypatch.setattr(precision, "_cpu_onednn_fast", lambda: True)
    run = build(tiny_config(tmp_path, None, f"amp={amp}", f"channels_last={cl}", "device=cpu"))
    assert run.amp_dtype is (None if amp == "none" else torch.bfloat16)
    assert run.channels_last is (cl != "false")
    conv = next(m for m in run.model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) is run.channels_last


# ---------------------------------------------------------------------------------------------
# losses compute in float32 under CPU autocast
# ---------------------------------------------------------------------------------------------
class _TinyNet(nn.Module):
    feature_dim = 6

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.body(x)


def _tiny_model(cosine: bool) -> LongTailModel:
    from longtail.models import HEADS

    torch.manual_seed(0)
    return LongTailModel(_TinyNet(), HEADS.build("cosine" if cosine else "linear", 6, len(COUNTS)))


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_is_float32_under_cpu_autocast(name):
    loss = build_loss(name, COUNTS)
    model = _tiny_model(loss.cosine)
    x = torch.randn(10, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 4, 0, 0, 1, 2, 4])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        torch.manual_seed(5)
        inside = loss(out.logits, y, out.features)
    if not loss.cosine:
        assert out.logits.dtype == torch.bfloat16  # the forward did run in bf16
    torch.manual_seed(5)
    upcast = loss(out.logits.float(), y, out.features.float())
    assert inside.dtype == torch.float32 and inside.dim() == 0 and torch.isfinite(inside)
    # the value is the float32 loss of the bf16 outputs, not a bf16 computation
    torch.testing.assert_close(inside, upcast, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["ce", "gcl", "kps", "fbl", "ldam"])
def test_train_step_under_cpu_bf16_autocast(name):
    loss = build_loss(name, COUNTS)
    model = _tiny_model(loss.cosine)
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = TrainStep(model, loss, opt, amp_dtype=torch.bfloat16)
    value = step(torch.randn(10, 3, 8, 8), torch.arange(10) % len(COUNTS))
    assert value.dtype == torch.float32 and torch.isfinite(value)
    after = model.state_dict()
    assert all(after[k].dtype == before[k].dtype for k in before)  # master weights stay float32
    assert any(not torch.equal(after[k], before[k]) for k in before if k.endswith("weight"))


# ---------------------------------------------------------------------------------------------
# channels_last gives the same numbers as NCHW
# ---------------------------------------------------------------------------------------------
def test_channels_last_forward_matches_nchw_in_float32():
    torch.manual_seed(0)
    ref = build_model("resnet32", "linear", 10).eval()
    cl = copy.deepcopy(ref).to(memory_format=torch.channels_last)
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(cl(x.contiguous(memory_format=torch.channels_last)).logits, ref(x).logits,
                                   rtol=1e-4, atol=1e-4)


def test_channels_last_training_step_matches_nchw():
    """In float64 (where rounding cannot hide a layout bug) a whole SGD step agrees to 1e-10."""
    torch.manual_seed(0)
    ref = build_model("resnet32", "linear", 10).double()
    cl = copy.deepcopy(ref).to(memory_format=torch.channels_last)
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = torch.arange(16) % 10
    loss = build_loss("ce", [50, 40, 30, 20, 10, 8, 6, 4, 2, 1])
    before = copy.deepcopy(ref.state_dict())
    values = []
    for model, xin in ((ref, x), (cl, x.contiguous(memory_format=torch.channels_last))):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        values.append(TrainStep(model, loss, opt)(xin, y))
    torch.testing.assert_close(values[0], values[1], rtol=1e-10, atol=1e-10)
    for (k, a), b in zip(ref.state_dict().items(), cl.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=k)
    assert not torch.equal(ref.state_dict()["backbone.conv1.weight"], before["backbone.conv1.weight"])


# ---------------------------------------------------------------------------------------------
# evaluation every N epochs; the final epoch always
# ---------------------------------------------------------------------------------------------
def test_eval_every_resolution():
    assert eval_every("auto", torch.device("cuda"), 200) == 1
    assert eval_every("auto", CPU, 200) == 10
    assert eval_every("auto", CPU, 5) == 1
    assert eval_every(3, CPU, 200) == 3
    for bad in (0, -2, 1.5, "often", True):
        with pytest.raises(ConfigError, match="eval.every"):
            eval_every(bad, CPU, 10)


def test_fit_evaluates_every_n_epochs_and_the_last(tmp_path):
    run_dir, metrics = train(tiny_config(tmp_path, None, "optim.epochs=5", "eval.every=2"))
    rows = [json.loads(l) for l in (run_dir / "log.jsonl").read_text().splitlines()]
    evaluated = [r["epoch"] for r in rows if "test.top1" in r]
    assert evaluated == [1, 3, 4]
    assert metrics["top1"] == rows[-1]["test.top1"]  # what is reported is the final epoch's


# ---------------------------------------------------------------------------------------------
# stage 2 on cached features equals stage 2 on images
# ---------------------------------------------------------------------------------------------
def test_feature_cache_setting():
    assert use_feature_cache("auto", "none", 0.0) is True
    assert use_feature_cache("auto", "cifar", 0.0) is False
    assert use_feature_cache("auto", "none", 1.0) is False
    assert use_feature_cache(False, "none", 0.0) is False
    with pytest.raises(ConfigError, match="data.augment=cifar"):
        use_feature_cache(True, "cifar", 0.0)
    with pytest.raises(ConfigError, match="mixup_alpha=1"):
        use_feature_cache(True, "none", 1.0)


def test_feature_loader_draws_the_image_loaders_batches(tmp_path):
    from longtail.engine.loaders import make_train_loader

    run = build(tiny_config(tmp_path, None, "data.augment=none", "amp=none"))
    loader = make_train_loader(run, {"name": "cben", "params": {}}, 3, 7)
    data = torch.arange(len(run.bundle.train.targets), dtype=torch.float32).unsqueeze(1)  # feature = index
    feats = FeatureLoader(data, torch.as_tensor(run.bundle.train.targets), loader.sampler, 16)
    for epoch in (0, 2):
        loader.set_epoch(epoch), feats.set_epoch(epoch)
        a = [y for _, y in loader]
        b = [(f, y) for f, y in feats]
        assert len(a) == len(b) == len(feats) == len(loader)
        for ya, (fb, yb) in zip(a, b):
            assert torch.equal(ya, yb)
            assert torch.equal(torch.as_tensor(run.bundle.train.targets)[fb.squeeze(1).long()], yb)


@pytest.mark.parametrize("method, extra", [("crt", ["stage2.reinit=false", "stage2.sampler.name=cben"]),
                                           ("crt", ["stage2.reinit=true"]), ("lws", [])])
def test_stage2_on_cached_features_equals_recomputing(tmp_path, method, extra):
    s1, _ = train(tiny_config(tmp_path, None, "optim.epochs=2", "name=s1", "data.augment=none", "amp=none"))
    results = {}
    for cache in ("true", "false"):
        d, m = retrain(s1, [f"stage2.method={method}", "stage2.epochs=3", f"name=s2-{cache}",
                            f"stage2.cache_features={cache}", *extra])
        assert m["stage2_feature_cache"] is (cache == "true")
        results[cache] = (load_checkpoint(d / "last.pt")["model"], m)
    (w_cached, m_cached), (w_images, m_images) = results["true"], results["false"]
    heads = [k for k in w_cached if k.startswith("head.")]
    assert heads
    for k in heads:
        torch.testing.assert_close(w_cached[k], w_images[k], rtol=1e-4, atol=1e-5, msg=k)
    assert m_cached["top1"] == pytest.approx(m_images["top1"])
    assert m_cached["nll"] == pytest.approx(m_images["nll"], rel=1e-4)
    assert [c["accuracy"] for c in m_cached["per_class"]] == [c["accuracy"] for c in m_images["per_class"]]


def test_stage2_cache_is_refused_when_images_vary(tmp_path):
    s1, _ = train(tiny_config(tmp_path, None, "name=s1"))  # synthetic: cifar augmentation
    with pytest.raises(ConfigError, match="cache_features=true"):
        retrain(s1, ["stage2.cache_features=true"])
    _, m = retrain(s1, ["stage2.epochs=1", "name=auto"])
    assert m["stage2_feature_cache"] is False
