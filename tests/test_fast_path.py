"""The fast path computes what the conventional path computes.

CPU tests (always run):

* the GPU-resident input pipeline (``crop_flip`` + ``normalize_uint8``, and a whole
  ``GpuLoader`` batch) gives the same ResNet-32 loss and gradients as torchvision's PIL
  transforms (``RandomCrop(32, padding=4)`` + flip + ``ToTensor`` + ``Normalize``) with the same
  random choices;
* ``TrainStep`` (eager) equals a hand-written forward / loss / backward / SGD step, with and
  without mixup (``MixupSchedule``, same lam and permutation).

CUDA tests (marker ``cuda``, skipped without a GPU; every name contains ``cuda`` so that
``pytest -k cuda`` also selects them): whole-step CUDA-graph replay equals eager steps, the last
smaller batch runs eagerly and is not dropped, ``set_lr`` and loss schedule buffers reach the
replayed graph, no host synchronization inside a replay, bf16, fused SGD with a tensor lr,
``torch.compile`` under the graph, and the learning rate after ``--resume``.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms as T

from longtail.data import build_datasets, build_sampler
from longtail.data.gpu import GpuLoader, _norm_constants, crop_flip, draw_indices, normalize_uint8
from longtail.engine.step import MixupSchedule, TrainStep
from longtail.engine.trainer import make_optimizer, set_lr
from longtail.losses import build_loss, mixup_loss
from longtail.models import ModelOutput, build_model

HAS_CUDA = torch.cuda.is_available()
cuda = pytest.mark.cuda
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")

OPTIM = {"momentum": 0.9, "weight_decay": 2e-4, "nesterov": False}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cifar_lt(tiny_cifar_root: Path):
    """A CIFAR-10-LT bundle (tiny random CIFAR-10 in the real format, rho = 10)."""
    return build_datasets({"name": "cifar10_lt", "root": str(tiny_cifar_root), "imbalance_ratio": 10,
                           "augment": "auto"})


def pil_batch(dataset, indices, offsets, flips) -> torch.Tensor:
    """The conventional input: ``dataset[i]`` through its own PIL transform, random choices fixed.

    The dataset's transform is torchvision's ``Compose([RandomCrop(32, padding=4, fill=0),
    RandomHorizontalFlip(), ToTensor(), Normalize(mean, std)])``; the crop offset is fixed by
    overriding ``get_params`` of that RandomCrop instance and the flip by its probability ``p``.
    """
    from longtail.data.transforms import MinSize

    tf = dataset.transform
    # MinSize only checks the size (an error for images smaller than the padded crop needs)
    steps = [t for t in tf.transforms if not isinstance(t, MinSize)]
    crop, flip = steps[0], steps[1]
    assert isinstance(crop, T.RandomCrop) and crop.padding == 4 and crop.fill == 0
    assert isinstance(flip, T.RandomHorizontalFlip)
    assert isinstance(steps[2], T.ToTensor) and isinstance(steps[3], T.Normalize) and len(steps) == 4
    out = []
    try:
        for i, (top, left), f in zip(indices, offsets, flips):
            crop.get_params = lambda img, size, _t=int(top), _l=int(left): (_t, _l, size[0], size[1])
            flip.p = 1.0 if bool(f) else 0.0
            x, _ = dataset[int(i)]
            out.append(x)
    finally:
        del crop.get_params
        flip.p = 0.5
    return torch.stack(out)


def fast_batch(data_u8_nhwc: np.ndarray, indices, offsets, flips, mean, std, channels_last=True) -> torch.Tensor:
    """The fast-path input: gather, ``crop_flip``, ``normalize_uint8`` (what GpuLoader does)."""
    images = torch.from_numpy(np.ascontiguousarray(data_u8_nhwc)).permute(0, 3, 1, 2)
    x = images.index_select(0, torch.as_tensor(indices, dtype=torch.long))
    x = crop_flip(x, torch.as_tensor(offsets), torch.as_tensor(flips, dtype=torch.bool), padding=4)
    scale, bias = _norm_constants(mean, std, 3, torch.device("cpu"), torch.float32)
    return normalize_uint8(x, scale, bias, torch.float32, channels_last=channels_last)


def loss_and_grads(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor):
    model.zero_grad(set_to_none=True)
    out = model(x)
    loss = loss_fn(out.logits, y, out.features if getattr(loss_fn, "needs_features", False) else None)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return loss.detach(), grads


def grad_error(g1: dict, g2: dict) -> dict:
    """Per tensor, ``|g1 - g2| / |g1|`` (Frobenius norms)."""
    assert g1.keys() == g2.keys()
    return {k: float((g1[k].double() - g2[k].double()).norm() / g1[k].double().norm().clamp_min(1e-30)) for k in g1}


# ResNet-32 at initialization (BatchNorm in training mode, small batches) is sensitive: inputs a
# rounding apart (4.8e-7) move its gradients by up to ~1.3e-3 of their norm even in float64, and
# by ~1e-2 in float32 (measured). One image shifted by one pixel or flipped moves them by ~0.7.
GRAD_REL = 3e-2


def assert_grads_close(g1: dict, g2: dict, rel: float = GRAD_REL):
    err = grad_error(g1, g2)
    worst = max(err, key=err.get)
    assert err[worst] <= rel, f"grad {worst}: |diff| = {err[worst]:.3e} x |grad| > {rel}"


def params_of(model: nn.Module) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_params_close(a: nn.Module | dict, b: nn.Module | dict, rtol=0.0, atol=0.0):
    pa = a if isinstance(a, dict) else params_of(a)
    pb = b if isinstance(b, dict) else params_of(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"param {k}: {m}")


# ---------------------------------------------------------------------------------------------
# (i) the input pipelines: same batch, same loss, same gradients
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss_name", ["ce", "ldam"])
def test_fast_input_pipeline_same_loss_and_grads(cifar_lt, loss_name):
    ds = cifar_lt.train
    n = 12
    rng = np.random.default_rng(7)
    idx = rng.choice(len(ds), size=n, replace=False)
    offsets = rng.integers(0, 9, size=(n, 2))
    offsets[:4] = [[0, 0], [8, 8], [0, 8], [8, 0]]  # the corners: padding visible on two sides
    flips = rng.integers(0, 2, size=n).astype(bool)
    flips[:2] = [True, False]
    y = torch.as_tensor(ds.targets[idx], dtype=torch.long)

    x_conv = pil_batch(ds, idx, offsets, flips)
    x_fast = fast_batch(ds.data, idx, offsets, flips, cifar_lt.mean, cifar_lt.std, channels_last=True)
    assert x_fast.shape == x_conv.shape == (n, 3, 32, 32) and x_fast.dtype == x_conv.dtype == torch.float32
    assert x_fast.is_contiguous(memory_format=torch.channels_last)
    # x * (1 / (255 std)) - mean / std versus (x / 255 - mean) / std: a rounding apart
    torch.testing.assert_close(x_fast, x_conv, rtol=0, atol=2e-6)

    torch.manual_seed(0)
    head = "cosine" if loss_name == "ldam" else "linear"
    model = build_model("resnet32", head, 10).train()
    model_fast = copy.deepcopy(model).to(memory_format=torch.channels_last)  # the fast path's layout
    loss_fn = build_loss(loss_name, cifar_lt.class_counts)
    l_conv, g_conv = loss_and_grads(model, loss_fn, x_conv, y)
    l_fast, g_fast = loss_and_grads(model_fast, loss_fn, x_fast, y)
    assert torch.isfinite(l_conv)
    assert abs(float(l_conv) - float(l_fast)) < 1e-5, (float(l_conv), float(l_fast))
    assert_grads_close(g_conv, g_fast)
    # the criterion has power: one image shifted by one pixel fails it by far
    x_wrong = x_conv.clone()
    x_wrong[0] = torch.roll(x_wrong[0], 1, dims=-1)
    l_wrong, g_wrong = loss_and_grads(model, loss_fn, x_wrong, y)
    assert abs(float(l_conv) - float(l_wrong)) > 1e-4
    assert max(grad_error(g_conv, g_wrong).values()) > 10 * GRAD_REL


def test_gpu_loader_batch_equals_pil_pipeline(cifar_lt):
    """A whole GpuLoader batch (on the CPU) equals the DataLoader path given the same choices.

    The loader's indices come from ``draw_indices`` and its crop offsets / flips from its
    per-epoch augmentation generator; replaying that generator recovers the choices, which are
    then fed to the PIL pipeline.
    """
    ds = cifar_lt.train
    bs = 16
    sampler = build_sampler("instance", ds.targets, 10, seed=3, total_epochs=2)
    loader = GpuLoader(ds.data, ds.targets, sampler, bs, "cpu", cifar_lt.mean, cifar_lt.std, augment="cifar")
    loader.set_epoch(1)
    batches = list(loader)
    assert len(batches) == len(loader) == -(-len(ds) // bs)
    assert sum(int(yb.numel()) for _, yb in batches) == len(ds)  # the last, smaller batch is kept
    idx = draw_indices(sampler, 1, "cpu")
    gen = loader._aug_generator(1)
    model = build_model("resnet32", "linear", 10).train()
    loss_fn = build_loss("ce", cifar_lt.class_counts)
    for b in (0, len(batches) - 1):
        sel = idx[b * bs:(b + 1) * bs]
        # replay the generator up to batch b: each batch draws offsets (n, 2) then flips (n,)
        gen = loader._aug_generator(1)
        for prev in range(b + 1):
            m = min(bs, len(idx) - prev * bs)
            offsets = torch.randint(0, 9, (m, 2), generator=gen)
            flips = torch.randint(0, 2, (m,), generator=gen).bool()
        x_fast, y_fast = batches[b]
        assert torch.equal(y_fast, torch.as_tensor(ds.targets[sel.numpy()]))
        x_conv = pil_batch(ds, sel.tolist(), offsets.tolist(), flips.tolist())
        torch.testing.assert_close(x_fast, x_conv, rtol=0, atol=2e-6)
        l_conv, g_conv = loss_and_grads(model, loss_fn, x_conv, y_fast)
        l_fast, g_fast = loss_and_grads(model, loss_fn, x_fast, y_fast)
        assert abs(float(l_conv) - float(l_fast)) < 1e-5
        assert_grads_close(g_conv, g_fast)


# ---------------------------------------------------------------------------------------------
# (ii) TrainStep (eager) equals a hand-written step
# ---------------------------------------------------------------------------------------------
def _batches(n_batches=2, bs=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 3, 32, 32, generator=g), torch.randint(0, 10, (bs,), generator=g))
            for _ in range(n_batches)]


COUNTS = [500, 300, 180, 100, 60, 36, 21, 13, 8, 5]


@pytest.mark.parametrize("loss_name,head", [("ce", "linear"), ("kps", "cosine")])
def test_train_step_eager_equals_plain_step(loss_name, head):
    torch.manual_seed(1)
    model_a = build_model("resnet32", head, 10)
    model_b = copy.deepcopy(model_a)
    loss_fn = build_loss(loss_name, COUNTS)
    cfg = dict(OPTIM, momentum=0.9, nesterov=True)
    opt_a = make_optimizer(model_a.parameters(), cfg, torch.device("cpu"), fused=True, lr=0.1)
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4, nesterov=True)
    step = TrainStep(model_a, loss_fn, opt_a, cuda_graph=True)  # cuda_graph is ignored on the CPU
    for i, (x, y) in enumerate(_batches(2)):
        lr = 0.1 if i == 0 else 0.05
        set_lr(opt_a, lr)
        for g in opt_b.param_groups:
            g["lr"] = lr
        loss_fn.set_progress(i, 2)
        loss_a = step(x, y)
        opt_b.zero_grad(set_to_none=True)
        out = model_b(x)
        loss_b = loss_fn(out.logits, y)
        loss_b.backward()
        opt_b.step()
        assert loss_a.dim() == 0 and not loss_a.requires_grad
        assert float(loss_a) == float(loss_b.detach())
    assert step.graph is None
    assert_params_close(model_a, model_b)
    for (na, ba), (nb, bb) in zip(model_a.named_buffers(), model_b.named_buffers()):
        assert torch.equal(ba, bb), na


def test_train_step_mixup_equals_manual_mixup():
    torch.manual_seed(2)
    model_a = build_model("resnet32", "linear", 10)
    model_b = copy.deepcopy(model_a)
    loss_fn = build_loss("focal", COUNTS, gamma=1.0)
    opt_a = make_optimizer(model_a.parameters(), OPTIM, torch.device("cpu"), fused=False, lr=0.1)
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    mix = MixupSchedule(alpha=1.0, device=torch.device("cpu"))
    step = TrainStep(model_a, loss_fn, opt_a, mixup=mix)
    batches = _batches(3)
    mix.start_epoch(len(batches))
    lams = mix.lams.clone()
    assert lams.shape == (len(batches) + 1,) and bool(((lams >= 0) & (lams <= 1)).all())
    assert int(mix.index) == 0
    for i, (x, y) in enumerate(batches):
        torch.manual_seed(100 + i)
        loss_a = step(x, y)
        assert int(mix.index) == i + 1
        # by hand: the same lam (the i-th of the epoch) and the same permutation
        torch.manual_seed(100 + i)
        perm = torch.argsort(torch.rand(x.shape[0]))
        lam = lams[i]
        xm = lam * x + (1 - lam) * x[perm]
        opt_b.zero_grad(set_to_none=True)
        logits = model_b(xm).logits
        loss_b = lam * loss_fn(logits, y) + (1 - lam) * loss_fn(logits, y[perm])
        loss_b.backward()
        opt_b.step()
        torch.testing.assert_close(loss_a, loss_b.detach(), rtol=1e-6, atol=1e-7)
        # mixup_loss (what TrainStep uses) is the same combination
        torch.testing.assert_close(mixup_loss(loss_fn, logits.detach(), y, y[perm], lam), loss_b.detach())
    assert_params_close(model_a, model_b, rtol=1e-6, atol=1e-7)
    # a new epoch restarts the counter and keeps the coefficient tensor (a graph reads it)
    ptr = mix.lams.data_ptr()
    mix.start_epoch(len(batches))
    assert int(mix.index) == 0 and mix.lams.data_ptr() == ptr


# ---------------------------------------------------------------------------------------------
# (iii) CUDA: graph capture, bf16, fused SGD with a tensor lr, compile
# ---------------------------------------------------------------------------------------------
# Graph replay runs the very kernels of an eager step, so with deterministic fp32 settings the
# two agree to rounding. ResNet-32 at initialization amplifies rounding (see GRAD_REL), so
# trajectories are compared by their *updates* (parameters minus the initial ones), norm-wise:
# a stale learning rate, a dropped batch or stale schedule buffers change them by O(1).
UPDATE_REL = 1e-2


@pytest.fixture
def cuda_exact():
    """fp32 without TF32, deterministic cuDNN; restored afterwards."""
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield torch.device("cuda")
    (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
     torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) = saved
    torch.cuda.set_sync_debug_mode("default")


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class no_sync:
    """``torch.cuda.set_sync_debug_mode("error")`` inside: any host synchronization raises."""

    def __enter__(self):
        torch.cuda.set_sync_debug_mode("error")

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")
        return False


def _cuda_batches(dev, sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        x = torch.randn(n, 3, 32, 32, generator=g).to(dev).contiguous(memory_format=torch.channels_last)
        out.append((x, torch.randint(0, 10, (n,), generator=g).to(dev)))
    return out


def _pair(dev, head="linear", loss_name="ce", loss_kw=None, amp=None, graph_warmup=2, seed=0):
    """Two identical models with their fused tensor-lr SGD: a graphed TrainStep and an eager one,
    plus the initial parameters."""
    torch.manual_seed(seed)
    base = build_model("resnet32", head, 10).to(dev).to(memory_format=torch.channels_last)
    steps = []
    for graphed in (True, False):
        model = copy.deepcopy(base)
        loss_fn = build_loss(loss_name, COUNTS, **(loss_kw or {})).to(dev)
        opt = make_optimizer(model.parameters(), OPTIM, dev, fused=True, lr=0.1)
        steps.append(TrainStep(model, loss_fn, opt, amp_dtype=amp, cuda_graph=graphed, warmup_steps=graph_warmup))
    return steps[0], steps[1], params_of(base)


def assert_same_updates(a: nn.Module, b: nn.Module, init: dict, rel: float = UPDATE_REL):
    pa, pb = params_of(a), params_of(b)
    worst, name = 0.0, None
    for k in init:
        ua, ub = (pa[k] - init[k]).double(), (pb[k] - init[k]).double()
        ref = float(ub.norm())
        err = float((ua - ub).norm()) / ref if ref > 0 else float(ua.norm())
        if err > worst:
            worst, name = err, k
    assert worst <= rel, f"param {name}: updates differ by {worst:.3e} of their norm (> {rel})"


def graph_ok(step: TrainStep) -> str:
    return f"graph={step.graph is not None} failed={step.graph_failed!r} shape={step.graph_shape}"


@cuda
@needs_cuda
def test_cuda_fused_tensor_lr_sgd_equals_plain_sgd(cuda_exact):
    dev = cuda_exact
    torch.manual_seed(0)
    a = build_model("resnet32", "linear", 10).to(dev)
    b = copy.deepcopy(a)
    init = params_of(a)
    opt_a = make_optimizer(a.parameters(), OPTIM, dev, fused=True, lr=0.1)
    lr_t = opt_a.param_groups[0]["lr"]
    assert isinstance(lr_t, torch.Tensor) and lr_t.is_cuda and opt_a.param_groups[0]["fused"]
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4, foreach=False)
    loss_fn = nn.CrossEntropyLoss()
    for i, (x, y) in enumerate(_cuda_batches(dev, [16, 16, 16])):
        set_lr(opt_a, 0.1 / (i + 1))
        assert opt_a.param_groups[0]["lr"] is lr_t  # updated in place
        for g in opt_b.param_groups:
            g["lr"] = 0.1 / (i + 1)
        for m, o in ((a, opt_a), (b, opt_b)):
            o.zero_grad(set_to_none=True)
            loss_fn(m(x).logits, y).backward()
            o.step()
    assert_same_updates(a, b, init)


@cuda
@needs_cuda
def test_cuda_graph_replay_equals_eager_and_keeps_last_batch(cuda_exact):
    """Graph replays give the parameters of eager steps; lr changes reach the graph; the last,
    smaller batch of an epoch runs eagerly (not dropped, no recapture); no host sync in replays."""
    dev = cuda_exact
    graphed, eager, init = _pair(dev)
    epoch_sizes = [32, 32, 32, 32, 20]  # 4 full batches + the last, smaller one
    lrs = [0.1, 0.03]
    replays = 0
    for epoch, lr in enumerate(lrs):
        for st in (graphed, eager):
            set_lr(st.optimizer, lr)
        for x, y in _cuda_batches(dev, epoch_sizes, seed=epoch):
            replay = graphed.graph is not None and x.shape[0] == 32
            with no_sync() if replay else _Null():
                loss_g = graphed(x, y)
            replays += replay
            loss_e = eager(x, y)
            torch.testing.assert_close(loss_g, loss_e, rtol=1e-3, atol=1e-4)
    assert graphed.graph is not None and graphed.graph_failed is None, graph_ok(graphed)
    assert graphed.graph_shape == ((32, 3, 32, 32), (32,)), graph_ok(graphed)
    assert replays == 5  # epoch 0: warm-up 2, capture (+1 replay), 1 replay, eager 20; epoch 1: 4 + eager 20
    assert_same_updates(graphed.model, eager.model, init)
    for (n, bg), (_, be) in zip(graphed.model.named_buffers(), eager.model.named_buffers()):
        if bg.is_floating_point():
            torch.testing.assert_close(bg, be, rtol=1e-2, atol=1e-3, msg=lambda m, n=n: f"buffer {n}: {m}")
        else:  # BatchNorm num_batches_tracked: every batch counted, the smaller ones included
            assert int(bg) == int(be) == len(lrs) * len(epoch_sizes), n


@cuda
@needs_cuda
def test_cuda_graph_short_epochs_capture_the_full_batch(cuda_exact):
    dev = cuda_exact
    graphed, eager, init = _pair(dev, graph_warmup=3)
    for epoch in range(3):
        for x, y in _cuda_batches(dev, [32, 32, 32, 20], seed=epoch):  # 3 full batches + the last one
            torch.testing.assert_close(graphed(x, y), eager(x, y), rtol=1e-3, atol=1e-4)
    assert_same_updates(graphed.model, eager.model, init)  # correct either way
    assert graphed.graph_shape == ((32, 3, 32, 32), (32,)), graph_ok(graphed)


@cuda
@needs_cuda
def test_cuda_graph_set_lr_zero_freezes_parameters(cuda_exact):
    dev = cuda_exact
    graphed, _, _ = _pair(dev)
    batches = _cuda_batches(dev, [32] * 4)
    for x, y in batches:
        graphed(x, y)
    assert graphed.graph is not None, graph_ok(graphed)
    set_lr(graphed.optimizer, 0.0)
    before = params_of(graphed.model)
    with no_sync():
        for x, y in batches:
            graphed(x, y)
    assert_params_close(graphed.model, before)  # lr = 0: momentum SGD leaves the weights exactly
    set_lr(graphed.optimizer, 0.1)
    with no_sync():
        graphed(*batches[0])
    after = params_of(graphed.model)
    assert any(not torch.equal(before[k], after[k]) for k in before)


@cuda
@needs_cuda
def test_cuda_graph_sees_loss_schedule_buffers(cuda_exact):
    """KPS's GA switch (a buffer set by ``set_progress``) changes the replayed step, as eagerly."""
    dev = cuda_exact
    graphed, eager, init = _pair(dev, head="cosine", loss_name="kps", loss_kw={"ga_epoch": 1})
    graphed_off, _, _ = _pair(dev, head="cosine", loss_name="kps", loss_kw={"ga_epoch": None})
    for epoch in range(2):
        for st in (graphed, eager, graphed_off):
            st.loss_fn.set_progress(epoch, 2)
        assert float(graphed.loss_fn.ga_active) == float(epoch >= 1)
        for x, y in _cuda_batches(dev, [32] * 4, seed=epoch):
            with no_sync() if graphed.graph is not None else _Null():
                lg = graphed(x, y)
            le = eager(x, y)
            lo = graphed_off(x, y)
            torch.testing.assert_close(lg, le, rtol=1e-3, atol=1e-4)
            if epoch == 0:  # before the switch both configurations train alike
                torch.testing.assert_close(lg, lo, rtol=1e-3, atol=1e-4)
    assert graphed.graph is not None and graphed_off.graph is not None, graph_ok(graphed)
    assert_same_updates(graphed.model, eager.model, init)
    assert not torch.allclose(lg, lo, rtol=1e-2, atol=1e-3), (lg, lo)  # GA on: the replayed loss changed


@cuda
@needs_cuda
def test_cuda_graph_deferred_reweighting_in_replay(cuda_exact):
    dev = cuda_exact
    graphed, eager, init = _pair(dev, head="cosine", loss_name="ldam", loss_kw={"drw_epoch": 1})
    for epoch in range(2):
        for st in (graphed, eager):
            st.loss_fn.set_progress(epoch, 2)
        for x, y in _cuda_batches(dev, [32] * 4, seed=10 + epoch):
            with no_sync() if graphed.graph is not None else _Null():
                lg = graphed(x, y)
            torch.testing.assert_close(lg, eager(x, y), rtol=1e-3, atol=1e-4)
    assert graphed.graph is not None, graph_ok(graphed)
    assert_same_updates(graphed.model, eager.model, init)


@cuda
@needs_cuda
def test_cuda_graph_mixup_counter_and_no_sync(cuda_exact):
    """With mixup the replayed step advances the device counter (one lam per step) and the
    smaller last batch uses the next coefficient; replays never synchronize."""
    dev = cuda_exact
    torch.manual_seed(0)
    model = build_model("resnet32", "cosine", 10).to(dev).to(memory_format=torch.channels_last)
    loss_fn = build_loss("gcl", COUNTS).to(dev)
    opt = make_optimizer(model.parameters(), OPTIM, dev, fused=True, lr=0.05)
    mix = MixupSchedule(1.0, dev)
    step = TrainStep(model, loss_fn, opt, mixup=mix, cuda_graph=True, warmup_steps=2)
    sizes = [32] * 5 + [12]
    for epoch in range(2):
        mix.start_epoch(len(sizes))
        for b, (x, y) in enumerate(_cuda_batches(dev, sizes, seed=epoch)):
            with no_sync() if step.graph is not None and x.shape[0] == 32 else _Null():
                loss = step(x, y)
            assert int(mix.index) == b + 1
            assert bool(torch.isfinite(loss))
    assert step.graph is not None and step.graph_failed is None, graph_ok(step)


@cuda
@needs_cuda
def test_cuda_graph_bf16_close_to_eager_bf16():
    dev = torch.device("cuda")
    if not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    graphed, eager, init = _pair(dev, amp=torch.bfloat16)
    fp32, _, _ = _pair(dev, amp=None)
    for i, (x, y) in enumerate(_cuda_batches(dev, [32] * 5 + [7])):
        lg, le, lf = graphed(x, y), eager(x, y), fp32(x, y)
        assert lg.dtype == torch.float32  # losses are computed in fp32 under autocast
        torch.testing.assert_close(lg, le, rtol=2e-2, atol=2e-2)
        if i == 0:  # same weights: bf16 autocast computes about the fp32 loss
            torch.testing.assert_close(lg, lf, rtol=5e-2, atol=5e-2)
    assert graphed.graph is not None and graphed.graph_failed is None, graph_ok(graphed)
    assert_same_updates(graphed.model, eager.model, init, rel=5e-2)
    for p in graphed.model.parameters():
        assert p.dtype == torch.float32 and bool(torch.isfinite(p).all())


class _TinyNet(nn.Module):
    """A small conv net with the longtail model interface (quick to compile)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        f = F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1).flatten(1)
        return ModelOutput(self.fc(f), f)


@cuda
@needs_cuda
def test_cuda_graph_with_compile_equals_eager(cuda_exact):
    dev = cuda_exact
    torch.manual_seed(0)
    base = _TinyNet().to(dev)
    init = params_of(base)
    loss_fn = build_loss("ce", COUNTS).to(dev)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    opt_a = make_optimizer(a.parameters(), OPTIM, dev, fused=True, lr=0.1)
    opt_b = make_optimizer(b.parameters(), OPTIM, dev, fused=True, lr=0.1)
    compiled = TrainStep(torch.compile(a), loss_fn, opt_a, cuda_graph=True, warmup_steps=3)
    eager = TrainStep(b, loss_fn, opt_b, cuda_graph=False)
    for x, y in _cuda_batches(dev, [32] * 6 + [5] + [32] * 2):
        torch.testing.assert_close(compiled(x, y), eager(x, y), rtol=1e-3, atol=1e-4)
    assert compiled.graph is not None and compiled.graph_failed is None, graph_ok(compiled)
    assert_same_updates(a, b, init)


@cuda
@needs_cuda
def test_cuda_resumed_run_lr_reaches_graph(tmp_path):
    """Resume a graphed run: the lr schedule must keep working after the capture.

    Schedule: lr 0.1 for epochs 0-2, 0 in epoch 3, 0.1 in epoch 4. The resumed process starts
    at epoch 3 (lr 0) and captures there; if the graph kept the learning rate of its capture,
    epoch 4 would not change the weights (every batch is full: no eager step).
    """
    import yaml

    from longtail.config import load_config
    from longtail.engine.checkpoint import load_checkpoint
    from longtail.engine.trainer import train

    over = ["device=cuda", "quiet=true", "tensorboard=false", f"output_dir={tmp_path}", "name=resume",
            "data.name=synthetic", "data.imbalance_ratio=1", "data.params.n_max=64",
            "data.params.test_per_class=10", "data.batch_size=32",  # 640 images: 20 full batches
            "optim.epochs=3", "optim.warmup_epochs=0", "optim.schedule=multistep", "optim.milestones=[3,4]",
            "optim.milestone_factors=[0.0,1.0]", "cuda_graph=true", "fused_optimizer=true", "amp=none"]
    run_dir, _ = train(load_config(None, over))
    ckpt = load_checkpoint(run_dir / "last.pt")
    assert int(ckpt["epoch"]) == 2
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["optim"]["epochs"] = 5
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    train({}, resume=run_dir)
    final = load_checkpoint(run_dir / "last.pt")
    assert int(final["epoch"]) == 4
    weights = [k for k, v in ckpt["model"].items() if v.is_floating_point() and "running" not in k]
    assert any(not torch.equal(ckpt["model"][k], final["model"][k]) for k in weights), \
        "epoch 4 (lr 0.1) did not change the weights: the graph still uses the lr of its capture (0)"
