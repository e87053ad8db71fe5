"""``benchmarks/conv_ceiling.py``: the convolutions of a step, their FLOPs, the timed passes and the ceiling."""
from __future__ import annotations

import importlib.util
import math
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]


def _load():
    if "conv_ceiling" not in sys.modules:  # one module object, shared with bench_cifar's import
        spec = importlib.util.spec_from_file_location("conv_ceiling", REPO / "benchmarks" / "conv_ceiling.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["conv_ceiling"] = mod  # dataclasses look their module up there
        spec.loader.exec_module(mod)
    return sys.modules["conv_ceiling"]


cc = _load()


def _shape(**kw):
    d = dict(n=2, c_in=4, h=9, w=7, c_out=6, kh=3, kw=3, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1,
             input_grad=True)
    d.update(kw)
    return cc.ConvShape(**d)


@pytest.mark.parametrize("kw", [{}, {"stride": (2, 2)}, {"padding": (0, 0), "kh": 1, "kw": 1},
                                {"groups": 2}, {"dilation": (2, 1), "padding": (2, 1)}, {"stride": (2, 1), "kh": 5}])
def test_flops_and_output_size_match_torch(kw):
    """One pass costs what torch's own FLOP counter counts for the forward; backward counts twice that."""
    s = _shape(**kw)
    x = torch.randn(s.n, s.c_in, s.h, s.w, requires_grad=True)
    w = torch.randn(s.c_out, s.c_in // s.groups, s.kh, s.kw, requires_grad=True)
    with FlopCounterMode(display=False) as fwd:
        y = torch.nn.functional.conv2d(x, w, stride=s.stride, padding=s.padding, dilation=s.dilation, groups=s.groups)
    assert tuple(y.shape[2:]) == s.out_hw()
    assert fwd.get_total_flops() == s.flops()
    if s.groups == 1:  # torch's counter overcounts the input gradient of a grouped convolution
        with FlopCounterMode(display=False) as bwd:
            y.sum().backward()
        assert bwd.get_total_flops() == 2 * s.flops()  # the input gradient and the weight gradient


def test_conv_shapes_of_resnet32():
    """ResNet-32's 31 convolutions by shape; only the stem convolves the input batch."""
    from longtail.models import build_model

    model = build_model("resnet32", "linear", 10)
    x = torch.randn(2, 3, 32, 32)
    shapes = cc.conv_shapes(model, x)
    got = {(s.c_in, s.c_out, s.h, s.stride[0], s.input_grad): n for s, n in shapes.items()}
    assert got == {(3, 16, 32, 1, False): 1, (16, 16, 32, 1, True): 10, (16, 32, 32, 2, True): 1,
                   (32, 32, 16, 1, True): 9, (32, 64, 16, 2, True): 1, (64, 64, 8, 1, True): 9}
    assert all(s.n == 2 and s.kh == s.kw == 3 for s in shapes)
    assert not any(m._forward_hooks for m in model.modules())  # the hooks are removed
    # the FLOPs of the model's convolutions, forward, as torch counts them (the linear head aside)
    with FlopCounterMode(display=False) as fc:
        model(x)
    conv_flops = sum(v for k, v in fc.get_flop_counts()["Global"].items() if "convolution" in str(k))
    assert conv_flops == sum(n * s.flops() for s, n in shapes.items())


@pytest.mark.parametrize("groups", [1, 2])
def test_timed_passes_compute_the_gradients(groups):
    """The timed input- and weight-gradient calls are autograd's gradients of the convolution."""
    s = _shape(groups=groups, stride=(2, 1))
    x, w, gy = cc.conv_tensors(s, torch.float64, channels_last=False)
    fns = cc.pass_fns(s, torch.float64, channels_last=False, tensors=(x, w, gy))
    assert set(fns) == {"forward", "input_grad", "weight_grad"}
    xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    y = torch.nn.functional.conv2d(xs, ws, stride=s.stride, padding=s.padding, groups=groups)
    assert y.shape == gy.shape
    y.backward(gy)
    torch.testing.assert_close(fns["input_grad"]()[0], xs.grad)
    torch.testing.assert_close(fns["weight_grad"]()[1], ws.grad)
    torch.testing.assert_close(fns["forward"](), y.detach())


def test_conv_tensors_layout():
    x, w, gy = cc.conv_tensors(_shape(), torch.bfloat16, channels_last=True)
    assert x.dtype == w.dtype == gy.dtype == torch.bfloat16
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in (x, w, gy))


def test_stem_has_no_input_gradient_pass_and_gemm_shapes():
    s = _shape(input_grad=False, groups=2, stride=(2, 2))
    assert set(cc.pass_fns(s, torch.float32, channels_last=True)) == {"forward", "weight_grad"}
    g = cc.gemm_fns(_shape(groups=2, stride=(2, 2)), torch.float32)
    ho, wo = _shape(stride=(2, 2)).out_hw()
    m, k, n = 2 * ho * wo, 2 * 9, 3
    assert [t.shape for t in g["forward"]()] == [(m, n)] * 2  # one matmul per group
    assert [t.shape for t in g["weight_grad"]()] == [(k, n)] * 2
    assert [t.shape for t in g["input_grad"]()] == [(m, k)] * 2
    assert 2 * 2 * m * k * n == _shape(groups=2, stride=(2, 2)).flops()  # the GEMMs do the convolution's work


def test_time_rounds_takes_the_minimum_over_interleaved_rounds(monkeypatch):
    order, clock = [], iter([0.0, 5.0, 5.0, 6.0, 6.0, 8.0, 8.0, 9.0])
    fns = {"a": {"p": lambda: order.append("a")}, "b": {"q": lambda: order.append("b")}}
    monkeypatch.setattr(cc.time, "perf_counter", lambda: next(clock))
    best = cc.time_rounds(fns, repeats=2, calls=1)
    assert order == ["a", "b", "a", "b", "a", "b"]  # one untimed call each, then the rounds interleaved
    assert best == {"a": {"p": 2.0}, "b": {"q": 1.0}}


def test_ceiling_arithmetic():
    a, b = _shape(), _shape(c_in=8, input_grad=False)
    shapes = Counter({a: 3, b: 1})
    secs = {a: {"forward": 0.001, "input_grad": 0.002, "weight_grad": 0.003}, b: {"forward": 0.004, "weight_grad": 0.004}}
    gemm = {a: {"forward": 0.002, "input_grad": 0.002, "weight_grad": 0.002}, b: {"forward": 0.001, "weight_grad": 0.001}}
    peak = 0.5  # GFLOP/s
    c = cc.ceiling(shapes, secs, peak, step_ms=100.0, conventional_ms=230.0, target=2.3, gemm_seconds=gemm)
    fa, fb = a.flops(), b.flops()
    assert c["conv_gflop"] == pytest.approx((3 * 3 * fa + 2 * fb) / 1e9)
    assert c["conv_ms"] == pytest.approx(3 * 6.0 + 8.0)
    assert c["conv_ms_at_peak"] == pytest.approx(c["conv_gflop"] / peak * 1000)
    la, lb = c["layers"]
    assert la["count"] == 3 and la["ms"] == pytest.approx({"forward": 1.0, "input_grad": 2.0, "weight_grad": 3.0})
    assert la["gflops"] == pytest.approx(3 * fa / 0.006 / 1e9) and la["of_peak"] == pytest.approx(la["gflops"] / peak)
    assert la["gemm_gflops"] == pytest.approx(3 * fa / 0.006 / 1e9)
    assert set(lb["ms"]) == {"forward", "weight_grad"} and lb["gemm_gflops"] == pytest.approx(2 * fb / 0.002 / 1e9)
    assert c["conv_gflops"] == pytest.approx(c["conv_gflop"] / 0.026)
    # without the profile's share, the step runs its convolutions as fast as alone
    assert c["conv_ms_in_step"] == pytest.approx(26.0) and c["other_ms"] == pytest.approx(100.0 - 26.0)
    assert c["step_ms_alone"] == pytest.approx(100.0)
    assert c["step_ms_at_peak"] == pytest.approx(74.0 + c["conv_ms_at_peak"])
    assert c["speedup"] == c["speedup_alone"] == pytest.approx(2.3)
    assert c["speedup_at_peak"] == pytest.approx(230.0 / c["step_ms_at_peak"])
    assert c["target_step_ms"] == pytest.approx(100.0)
    assert c["target_gflops"] == pytest.approx(c["conv_gflop"] / 26.0 * 1000)  # exactly the measured speed
    # with it, the convolutions take their share of the step (more than alone) and the rest the remainder
    p = cc.ceiling(shapes, secs, peak, step_ms=100.0, conventional_ms=276.0, conv_share=0.4)
    assert p["conv_ms_in_step"] == pytest.approx(40.0) and p["other_ms"] == pytest.approx(60.0)
    assert p["conv_gflops_in_step"] == pytest.approx(p["conv_gflop"] / 0.040)
    assert p["step_ms_alone"] == pytest.approx(86.0) and p["speedup_alone"] == pytest.approx(276.0 / 86.0)
    assert p["step_ms_at_peak"] == pytest.approx(60.0 + p["conv_ms_at_peak"])
    assert p["target_step_ms"] == pytest.approx(120.0)
    assert p["target_gflops"] == pytest.approx(p["conv_gflop"] / 60.0 * 1000)  # 120 - 60 ms left for them
    slow = cc.ceiling(shapes, secs, peak, step_ms=100.0, conventional_ms=150.0)
    assert math.isinf(slow["target_gflops"])  # the rest (74 ms) alone exceeds 150 / 2.3 ms
    assert "step_ms" not in cc.ceiling(shapes, secs, peak)


def test_conv_shapes_ignores_other_modules():
    model = nn.Sequential(nn.Linear(4, 4))
    assert cc.conv_shapes(model, torch.randn(2, 4)) == Counter()
