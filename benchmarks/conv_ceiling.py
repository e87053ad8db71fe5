"""How close a model's convolutions run to this machine's dense-matmul speed (part (i) of ``bench_cifar.py``).

Every convolution of one training step is timed alone, in the run's dtype and memory layout, in
its three passes: the forward, the gradient of its input and the gradient of its weight
(``aten.convolution_backward`` with one output mask at a time; the first convolution, whose input
is the image batch, has no input gradient). A pass of a convolution with output ``N x C_out x
H_out x W_out`` and kernel ``C_in/groups x k_h x k_w`` costs ``2 N C_out H_out W_out C_in/groups
k_h k_w`` floating-point operations, so each pass has a speed in GFLOP/s. It is set against a
dense square matmul of the same dtype (:func:`matmul_gflops`), the speed a well-shaped GEMM
reaches on the machine, which bounds what a convolution kernel can do.

:func:`ceiling` sums the passes over the step's convolutions and sets them against the step: what
the convolutions take inside it (their share of the step's profile), and how long the step would
take if they ran as fast as alone, or at the matmul's speed, with everything else (batch norm,
activations, the optimizer, bound by memory bandwidth on the CPU) as measured. Against the plain
loop's step, that gives the speed-up the step has, and the convolution speed a target speed-up needs.

Timings are the minimum over ``repeats`` rounds; each round times every pass of every shape once
(interleaved), so that a slow spell of a shared machine does not fall on one shape only.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

__all__ = ["ConvShape", "PASSES", "ceiling", "conv_shapes", "conv_tensors", "gemm_fns", "matmul_gflops", "pass_fns",
           "time_rounds"]

PASSES = ("forward", "input_grad", "weight_grad")


@dataclass(frozen=True)
class ConvShape:
    """One convolution of a step: input ``n x c_in x h x w``, ``c_out`` filters of ``kh x kw``."""

    n: int
    c_in: int
    h: int
    w: int
    c_out: int
    kh: int
    kw: int
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    input_grad: bool  # False for a convolution of the input batch (no gradient flows to it)

    def out_hw(self) -> tuple[int, int]:
        hw = []
        for size, k, s, p, d in zip((self.h, self.w), (self.kh, self.kw), self.stride, self.padding, self.dilation):
            hw.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
        return hw[0], hw[1]

    def flops(self) -> int:
        """Floating-point operations of one pass (forward, input gradient or weight gradient)."""
        ho, wo = self.out_hw()
        return 2 * self.n * self.c_out * ho * wo * (self.c_in // self.groups) * self.kh * self.kw

    def label(self) -> str:
        ho, wo = self.out_hw()
        s = f", stride {self.stride[0]}" if max(self.stride) > 1 else ""
        return f"{self.c_in}->{self.c_out}, {self.kh}x{self.kw}, {self.h}x{self.w}->{ho}x{wo}{s}"


def conv_shapes(model: nn.Module, x: Tensor) -> Counter:
    """The ``nn.Conv2d`` calls of one forward of ``model`` on ``x``, counted by :class:`ConvShape`.

    The model runs once (no gradient is kept); only ``nn.Conv2d`` modules are seen.
    """
    seen: Counter = Counter()

    def hook(mod: nn.Conv2d, inp, _out) -> None:
        t = inp[0]
        seen[ConvShape(t.shape[0], t.shape[1], t.shape[2], t.shape[3], mod.out_channels, *mod.kernel_size,
                       tuple(mod.stride), tuple(mod.padding), tuple(mod.dilation), mod.groups,
                       input_grad=t is not x)] += 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def _seconds_per_call(fn: Callable[[], object], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def matmul_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 5, calls: int = 3) -> float:
    """GFLOP/s of a ``size x size`` matmul in ``dtype`` on the CPU (best of ``repeats``)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = min(_seconds_per_call(lambda: a @ b, calls) for _ in range(repeats))
    return 2 * size ** 3 / best / 1e9


def conv_tensors(shape: ConvShape, dtype: torch.dtype, channels_last: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Random input, weight and output gradient of ``shape`` in ``dtype`` and the given memory layout."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape.n, shape.c_in, shape.h, shape.w, dtype=dtype).contiguous(memory_format=fmt)
    w = torch.randn(shape.c_out, shape.c_in // shape.groups, shape.kh, shape.kw, dtype=dtype).contiguous(memory_format=fmt)
    ho, wo = shape.out_hw()
    gy = torch.randn(shape.n, shape.c_out, ho, wo, dtype=dtype).contiguous(memory_format=fmt)
    return x, w, gy


def pass_fns(shape: ConvShape, dtype: torch.dtype, channels_last: bool,
             tensors: Optional[tuple[Tensor, Tensor, Tensor]] = None) -> dict:
    """The passes of ``shape`` as calls to time: ``forward`` (``F.conv2d``), ``input_grad`` and
    ``weight_grad`` (``aten.convolution_backward`` with one output mask each; no ``input_grad`` for
    a convolution of the input batch), on ``tensors`` (default: :func:`conv_tensors`)."""
    x, w, gy = tensors if tensors is not None else conv_tensors(shape, dtype, channels_last)
    stride, padding, dilation = list(shape.stride), list(shape.padding), list(shape.dilation)

    def grad(mask):
        return lambda: torch.ops.aten.convolution_backward(gy, x, w, None, stride, padding, dilation, False, [0, 0],
                                                           shape.groups, mask)

    fns = {"forward": lambda: torch.nn.functional.conv2d(x, w, None, stride, padding, dilation, shape.groups),
           "weight_grad": grad([False, True, False])}
    if shape.input_grad:
        fns["input_grad"] = grad([True, False, False])
    return fns


def gemm_fns(shape: ConvShape, dtype: torch.dtype) -> dict:
    """The three matmuls of the convolution written as an im2col GEMM, without building the columns:
    ``[M, K] @ [K, C_out]``, ``[K, M] @ [M, C_out]`` and ``[M, C_out] @ [C_out, K]`` with ``M = N H_out W_out``
    and ``K = C_in/groups k_h k_w`` (groups > 1: one group's matmul, times ``groups``)."""
    ho, wo = shape.out_hw()
    m, k, n = shape.n * ho * wo, shape.c_in // shape.groups * shape.kh * shape.kw, shape.c_out // shape.groups
    cols, w, gy = (torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype), torch.randn(m, n, dtype=dtype))
    reps = range(shape.groups)

    def times(fn):
        return lambda: [fn() for _ in reps]

    fns = {"forward": times(lambda: cols @ w), "weight_grad": times(lambda: cols.t() @ gy)}
    if shape.input_grad:
        fns["input_grad"] = times(lambda: gy @ w.t())
    return fns


def time_rounds(fns: dict, repeats: int = 5, calls: int = 3) -> dict:
    """Seconds per call of every function of ``fns`` (``{key: {name: fn}}``), the minimum over rounds.

    Each round calls every function ``calls`` times in turn (interleaved), after one untimed call
    of each (kernel creation); returns ``{key: {name: seconds}}``.
    """
    for f in fns.values():
        for fn in f.values():
            fn()
    best = {k: {p: float("inf") for p in f} for k, f in fns.items()}
    for _ in range(repeats):
        for k, f in fns.items():
            for p, fn in f.items():
                best[k][p] = min(best[k][p], _seconds_per_call(fn, calls))
    return best


def ceiling(shapes: Counter, seconds: dict, peak_gflops: float, step_ms: Optional[float] = None,
            conventional_ms: Optional[float] = None, target: float = 2.3, gemm_seconds: Optional[dict] = None,
            conv_share: Optional[float] = None) -> dict:
    """The step's convolutions against the matmul speed, and the step time that would follow.

    Args:
        shapes: :func:`conv_shapes` of one step's forward.
        seconds: :func:`time_rounds` of their :func:`pass_fns`, by shape.
        peak_gflops: :func:`matmul_gflops` in the run's dtype.
        step_ms: The training step, timed in the same rounds, if known.
        conventional_ms: The plain loop's step (part (a)), if known.
        target: The speed-up over the plain loop to set the step against.
        gemm_seconds: :func:`time_rounds` of their :func:`gemm_fns`, by shape (optional): each layer
            gets ``gemm_gflops``.
        conv_share: The convolutions' share of the step's operator time (the profile, part (h)). The
            convolutions of the step then take ``conv_share * step_ms`` (``conv_ms_in_step``), which
            is more than timed alone (their inputs come from memory, not cache); without it the step
            is taken to run them as fast as alone.

    Returns:
        ``layers`` (one entry per shape: count, ms per pass, GFLOP/s, fraction of the matmul speed,
        and ``gemm_gflops``: the same passes as bare im2col matmuls), ``conv_ms`` (all passes of all
        convolutions of one step, timed alone), ``conv_ms_at_peak``; with ``step_ms``:
        ``conv_ms_in_step``, ``other_ms`` (the step less its convolutions), ``step_ms_alone`` (the
        convolutions as fast as alone) and ``step_ms_at_peak`` (at the matmul's speed); with
        ``conventional_ms`` as well: the speed-ups ``speedup``, ``speedup_alone`` and
        ``speedup_at_peak``, ``target_step_ms`` (the step ``target`` needs) and ``target_gflops``
        (the convolutions' speed in the step it needs, the rest as measured; infinite when the rest
        alone is slower than the target step).
    """
    layers, conv_s, flops_total = [], 0.0, 0
    for shape, count in sorted(shapes.items(), key=lambda kv: -kv[1]):
        t = seconds[shape]
        passes = [p for p in PASSES if p in t]
        s, f = sum(t.values()), shape.flops() * len(passes)
        layer = {"shape": asdict(shape), "label": shape.label(), "count": count,
                 "ms": {p: 1000 * t[p] for p in passes}, "gflops": f / s / 1e9, "of_peak": f / s / 1e9 / peak_gflops}
        if gemm_seconds is not None:
            layer["gemm_gflops"] = f / sum(gemm_seconds[shape].values()) / 1e9
        layers.append(layer)
        conv_s += count * s
        flops_total += count * f
    gflop = flops_total / 1e9
    out = {"layers": layers, "peak_gflops": peak_gflops, "conv_gflop": gflop, "conv_ms": 1000 * conv_s,
           "conv_gflops": gflop / conv_s, "conv_ms_at_peak": 1000 * gflop / peak_gflops, "target": target,
           "conv_share": conv_share}
    if step_ms is not None:
        out["step_ms"] = step_ms
        out["conv_ms_in_step"] = step_ms * conv_share if conv_share is not None else out["conv_ms"]
        out["conv_gflops_in_step"] = gflop / out["conv_ms_in_step"] * 1000
        out["other_ms"] = step_ms - out["conv_ms_in_step"]
        out["step_ms_alone"] = out["other_ms"] + out["conv_ms"]
        out["step_ms_at_peak"] = out["other_ms"] + out["conv_ms_at_peak"]
        if conventional_ms is not None:
            out["conventional_ms"] = conventional_ms
            for key, ms in (("speedup", step_ms), ("speedup_alone", out["step_ms_alone"]),
                            ("speedup_at_peak", out["step_ms_at_peak"])):
                out[key] = conventional_ms / ms
            out["target_step_ms"] = conventional_ms / target
            room = out["target_step_ms"] - out["other_ms"]
            out["target_gflops"] = gflop / room * 1000 if room > 0 else float("inf")
    return out
