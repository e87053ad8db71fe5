#!/usr/bin/env python3
"""CIFAR-LT on one GPU: the conventional training loop against longtail's fast path.

One invocation, one machine, the same recipe (default ``cifar10_lt/gcl``, CIFAR-10-LT rho 100):

(a) **conventional** -- the loop of the field's reference code, written out plainly below: a
    ``torch.utils.data.DataLoader`` with worker processes over the CIFAR-10-LT dataset object,
    PIL transforms (``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip`` + ``ToTensor`` +
    ``Normalize``), eager fp32, ``loss.item()`` every step, plain ``torch.optim.SGD``;
(b) **fast** -- ``longtail.engine.trainer.train`` with the recipe and its defaults: GPU-resident
    uint8 data augmented on the device (``data.gpu_resident``), bf16 autocast (``amp``),
    ``channels_last``, fused SGD with a tensor lr (``fused_optimizer``), the whole step captured
    in a CUDA graph (``cuda_graph``); with ``--compile`` also (b') the same plus ``compile=true``.
    (a) and (b) report seconds per training epoch (median over ``--timed-epochs`` after
    ``--warmup-epochs``), images per second, ms per step and the ratio;
(c) **end to end** -- the full two-stage recipe as a user runs it: ``python -m longtail train
    RECIPE`` (stage 1, ``--epochs``, default the recipe's 200) then ``python -m longtail retrain``
    (stage 2: GCL's CBEN sampler + classifier fine-tuning) with their per-epoch evaluation; wall
    time of the two processes and the final top-1;
(d) with ``--full-conventional`` (off by default: ~6 minutes on an H200) the same two-stage
    recipe with the conventional loop, for the accuracy comparison; ``--conventional-epochs N``
    runs it shortened to N stage-1 epochs (schedule scaled; the table says so).

Results: ``--out benchmarks/results/NAME`` writes ``NAME.json`` (every number, the command line,
the machine) and ``NAME.md`` (the tables); both are rewritten after every part, so an
interrupted run keeps what it measured. A part that fails is reported and the others still run
(exit status 1).

Data: ``--data DIR`` (the folder holding ``cifar-10-batches-py``); when it is not given or not
there, ``data/`` and ``.cache/cifar10`` are tried, and otherwise CIFAR-10 is rebuilt into
``.cache/cifar10`` from ``shared/data/cifar10_from_jpeg.py`` (``../shared/data`` or
``./shared/data``). ``--dataset synthetic`` uses the built-in synthetic set (no files).

CPU smoke test (CI)::

    python benchmarks/bench_cifar.py --device cpu --dataset synthetic --subset 100 \
        --epochs 1 --timed-epochs 1 --out /tmp/bench_smoke

GPU (the numbers of the issue)::

    python benchmarks/bench_cifar.py --device cuda --compile --out benchmarks/results/h200
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, Path(__file__).resolve().parent):  # a checkout without installing; conv_ceiling beside this file
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import transforms as T  # noqa: E402

import conv_ceiling  # noqa: E402

from longtail.config import EPOCH_KEYS_STAGE1, load_config, scaled_epoch_overrides  # noqa: E402
from longtail.data import build_datasets, build_sampler  # noqa: E402
from longtail.engine.schedule import lr_at  # noqa: E402
from longtail.engine.build import build, resolve_device  # noqa: E402
from longtail.engine.loaders import eval_batches  # noqa: E402
from longtail.engine.loops import evaluate  # noqa: E402
from longtail.engine.precision import amp_dtype, channels_last_default, cpu_bf16_supported  # noqa: E402
from longtail.engine.trainer import eval_every, train  # noqa: E402
from longtail.seeding import seed_everything  # noqa: E402
from longtail.losses import build_loss  # noqa: E402
from longtail.models import build_model  # noqa: E402

CIFAR10_FILES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"]


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def cifar10_complete(root: Path) -> bool:
    return all((Path(root) / "cifar-10-batches-py" / f).is_file() for f in CIFAR10_FILES)


def find_or_build_cifar10(data: Optional[str], log: Callable = print) -> Path:
    """The folder holding ``cifar-10-batches-py``; rebuilt into ``.cache/cifar10`` if needed."""
    candidates = ([Path(data)] if data else []) + [REPO / "data", REPO / ".cache" / "cifar10"]
    for c in candidates:
        if cifar10_complete(c):
            return c
    cache = REPO / ".cache" / "cifar10"
    scripts = [REPO.parent / "shared" / "data" / "cifar10_from_jpeg.py", REPO / "shared" / "data" / "cifar10_from_jpeg.py"]
    script = next((s for s in scripts if s.is_file()), None)
    if script is None:
        raise FileNotFoundError(
            f"no CIFAR-10 (cifar-10-batches-py) in {', '.join(map(str, candidates))} and no "
            f"cifar10_from_jpeg.py in {', '.join(str(s.parent) for s in scripts)}; pass --data DIR or use "
            f"--dataset synthetic")
    log(f"building CIFAR-10 into {cache} from {script} ...")
    t0 = time.perf_counter()
    tmp = cache.parent / f"cifar10.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        subprocess.run([sys.executable, str(script), str(tmp)], check=True)
        if not cifar10_complete(cache):
            shutil.rmtree(cache, ignore_errors=True)
            os.replace(tmp, cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not cifar10_complete(cache):
        raise RuntimeError(f"rebuilding CIFAR-10 into {cache} failed")
    log(f"built CIFAR-10 in {time.perf_counter() - t0:.1f} s")
    return cache


# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------
def schedule_overrides(cfg: dict, epochs: int) -> list[str]:
    """Overrides that run the recipe for ``epochs`` stage-1 epochs with its schedule scaled
    (``longtail.config.scaled_epoch_overrides``, as ``longtail reproduce`` does); nothing changes
    when ``epochs`` is the recipe's."""
    if epochs == int(cfg["optim"]["epochs"]):
        return []
    return [f"optim.epochs={epochs}"] + scaled_epoch_overrides(cfg, "optim.epochs", epochs, EPOCH_KEYS_STAGE1)


def stage2_epochs(cfg: dict, epochs: int, explicit: Optional[int]) -> int:
    if explicit is not None:
        return int(explicit)
    e0, s2 = int(cfg["optim"]["epochs"]), int(cfg["stage2"]["epochs"])
    return s2 if epochs == e0 else max(1, int(math.ceil(s2 * epochs / e0)))


# ---------------------------------------------------------------------------------------------
# (a) / (d): the conventional loop, as the field's reference code writes it
# ---------------------------------------------------------------------------------------------
class Conventional:
    """DataLoader + PIL transforms + eager fp32 + ``.item()`` per step + plain SGD."""

    def __init__(self, cfg: dict, device: torch.device, workers: int) -> None:
        self.cfg, self.device, self.workers = cfg, device, workers
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # as the reference code sets it
        seed_everything(int(cfg["seed"]))
        self.bundle = build_datasets(cfg["data"])
        b = self.bundle
        size = int(b.train.data.shape[1])
        # The transforms, written out (the dataset's own would be the same): train / test.
        b.train.transform = T.Compose([T.RandomCrop(size, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                                       T.Normalize(b.mean, b.std)])
        b.test.transform = T.Compose([T.ToTensor(), T.Normalize(b.mean, b.std)])
        m = cfg["model"]
        self.model = build_model(m["backbone"], m["head"], b.num_classes, head_params=m["head_params"]).to(device)
        self.targets = np.asarray(b.train.targets)

    def loader(self, sampler_cfg: dict, batch_size: int, epochs: int) -> tuple[DataLoader, object]:
        sampler = None
        if sampler_cfg["name"] != "instance":
            sampler = build_sampler(sampler_cfg["name"], self.targets, self.bundle.num_classes,
                                    seed=int(self.cfg["seed"]), total_epochs=epochs, **sampler_cfg["params"])
        loader = DataLoader(self.bundle.train, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                            num_workers=self.workers, pin_memory=self.device.type == "cuda", drop_last=False,
                            persistent_workers=self.workers > 0)
        return loader, sampler

    def train_epoch(self, loader, loss_fn, optimizer, mixup_alpha: float) -> float:
        model, device = self.model, self.device
        needs_f = getattr(loss_fn, "needs_features", False)
        model.train()
        total, count = 0.0, 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if mixup_alpha > 0:
                lam = float(np.random.beta(mixup_alpha, mixup_alpha))
                index = torch.randperm(x.size(0), device=device)
                out = model(lam * x + (1 - lam) * x[index])
                f = out.features if needs_f else None
                loss = lam * loss_fn(out.logits, y, f) + (1 - lam) * loss_fn(out.logits, y[index], f)
            else:
                out = model(x)
                loss = loss_fn(out.logits, y, out.features if needs_f else None)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * x.size(0)  # a host sync per step, as in the reference loop
            count += x.size(0)
        return total / max(count, 1)

    def fit(self, params, optim_cfg: dict, loss_fn, sampler_cfg: dict, batch_size: int, mixup_alpha: float,
            mixup_until: Optional[int], epochs: int, log: Callable = print, tag: str = "") -> list[float]:
        """Train ``epochs`` epochs; returns the training seconds of each epoch."""
        optimizer = torch.optim.SGD(params, lr=lr_at(0, optim_cfg), momentum=optim_cfg["momentum"],
                                    weight_decay=optim_cfg["weight_decay"], nesterov=optim_cfg["nesterov"])
        loader, sampler = self.loader(sampler_cfg, batch_size, epochs)
        self.steps_per_epoch, self.images_per_epoch = len(loader), len(loader.dataset) if sampler is None else len(sampler)
        seconds = []
        for epoch in range(epochs):
            for g in optimizer.param_groups:
                g["lr"] = lr_at(epoch, optim_cfg)
            loss_fn.set_progress(epoch, epochs)
            if sampler is not None:
                sampler.set_epoch(epoch)
            alpha = mixup_alpha if (mixup_until is None or epoch < mixup_until) else 0.0
            t0 = time.perf_counter()
            loss = self.train_epoch(loader, loss_fn, optimizer, alpha)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - t0)
            if epochs <= 10 or (epoch + 1) % max(1, epochs // 10) == 0 or epoch == epochs - 1:
                log(f"  [conventional{tag}] epoch {epoch + 1}/{epochs} loss {loss:.4f} {seconds[-1]:.2f} s")
        del loader  # stops the persistent workers
        return seconds

    def stage1(self, epochs: Optional[int] = None, log: Callable = print) -> list[float]:
        cfg = self.cfg
        epochs = int(cfg["optim"]["epochs"] if epochs is None else epochs)
        self.loss_fn = build_loss(cfg["loss"]["name"], self.bundle.class_counts, **cfg["loss"]["params"]).to(self.device)
        return self.fit(self.model.parameters(), cfg["optim"], self.loss_fn, cfg["sampler"], int(cfg["data"]["batch_size"]),
                        float(cfg["mixup"]["alpha"]), cfg["mixup"]["until_epoch"], epochs, log, " stage 1")

    def stage2(self, log: Callable = print) -> list[float]:
        """Classifier re-training on the frozen backbone (``stage2.method`` crt or none)."""
        cfg, s2 = self.cfg, self.cfg["stage2"]
        if s2["method"] == "none":
            return []
        if s2["method"] != "crt" or s2["bn"] != "frozen":
            raise NotImplementedError(f"the conventional loop re-trains with stage2.method=crt, bn=frozen only "
                                      f"(got {s2['method']}, {s2['bn']})")
        self.model.freeze_backbone(bn="frozen")
        self.loss_fn = build_loss(s2["loss"]["name"], self.bundle.class_counts, **s2["loss"]["params"]).to(self.device)
        if s2["reinit"]:
            self.model.reset_head()
        optim_cfg = {"epochs": s2["epochs"], "lr": s2["lr"], "momentum": cfg["optim"]["momentum"],
                     "nesterov": cfg["optim"]["nesterov"], "weight_decay": s2["weight_decay"],
                     "warmup_epochs": s2["warmup_epochs"], "schedule": s2["schedule"], "milestones": [],
                     "milestone_factors": [], "min_lr": 0.0}
        params = [p for p in self.model.head.parameters() if p.requires_grad]
        return self.fit(params, optim_cfg, self.loss_fn, s2["sampler"], int(s2["batch_size"] or cfg["data"]["batch_size"]),
                        float(s2["mixup_alpha"]), None, int(s2["epochs"]), log, " stage 2")

    def evaluate(self) -> dict:
        loader = DataLoader(self.bundle.test, batch_size=int(self.cfg["data"]["eval_batch_size"]), shuffle=False,
                            num_workers=self.workers, pin_memory=self.device.type == "cuda")
        batches = ((x.to(self.device), y.to(self.device)) for x, y in loader)
        many, few = self.cfg["data"]["shot_thresholds"]
        metrics, _ = evaluate(self.model, self.loss_fn, batches, self.bundle.class_counts, many=many, few=few)
        return metrics


# ---------------------------------------------------------------------------------------------
# the parts
# ---------------------------------------------------------------------------------------------
def _timing(seconds: list[float], warmup: int, images: int, steps: int) -> dict:
    timed = seconds[warmup:] or seconds[-1:]
    med = statistics.median(timed)
    return {"epoch_seconds": seconds, "warmup_epochs": warmup, "timed_epochs": len(timed), "seconds_per_epoch": med,
            "images_per_epoch": images, "steps_per_epoch": steps, "images_per_second": images / med,
            "ms_per_step": 1000 * med / max(steps, 1), "first_epoch_seconds": seconds[0]}


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gb(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def part_conventional(args, base: list[str], device: torch.device, log: Callable) -> dict:
    cfg = load_config(args.recipe, base)
    _reset_peak(device)
    conv = Conventional(cfg, device, args.workers)
    seconds = conv.stage1(args.warmup_epochs + args.timed_epochs, log=log)
    out = _timing(seconds, args.warmup_epochs, conv.images_per_epoch, conv.steps_per_epoch)
    out.update({"workers": args.workers, "peak_gpu_memory_gb": _peak_gb(device)})
    del conv
    return out


def part_fast(args, base: list[str], device: torch.device, workdir: Path, log: Callable, compile_: bool) -> dict:
    epochs = args.warmup_epochs + args.timed_epochs
    name = "fast-compile" if compile_ else "fast"
    over = base + [f"optim.epochs={epochs}", "eval.every=1000000", f"output_dir={workdir}", f"name={name}",
                   "quiet=true", "tensorboard=false", f"compile={'true' if compile_ else 'false'}"]
    cfg = load_config(args.recipe, over)
    _reset_peak(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_dir, metrics = train(cfg)
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    seconds = [r["train_seconds"] for r in rows]
    images = int(round(rows[-1]["images_per_second"] * rows[-1]["train_seconds"]))
    steps = -(-images // int(cfg["data"]["batch_size"]))
    out = _timing(seconds, args.warmup_epochs, images, steps)
    graph_msgs = [str(w.message) for w in caught if "CUDA graph" in str(w.message)]
    out.update({"config": resolved_switches(cfg, device), "graph_warnings": graph_msgs, "run_dir": str(run_dir),
                "peak_gpu_memory_gb": _peak_gb(device)})
    for w in graph_msgs:
        log(f"  warning: {w}")
    return out


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def part_eval(args, base: list[str], device: torch.device, log: Callable) -> dict:
    """Seconds for one evaluation of the test split: longtail's (the run's amp / layout / eval
    batch) and the conventional loop's (DataLoader + PIL, fp32); median of ``--eval-repeats``."""
    cfg = load_config(args.recipe, base + ["quiet=true"])
    run = build(cfg)
    many, few = cfg["data"]["shot_thresholds"]
    fast = []
    for _ in range(args.eval_repeats):
        t0 = time.perf_counter()
        evaluate(run.model, run.loss_fn, eval_batches(run, "test"), run.bundle.class_counts, amp=run.amp_dtype,
                 many=many, few=few)
        if device.type == "cuda":
            torch.cuda.synchronize()
        fast.append(time.perf_counter() - t0)
    n = len(run.bundle.test.targets)
    del run
    conv = Conventional(cfg, device, args.workers)
    conv.loss_fn = build_loss(cfg["loss"]["name"], conv.bundle.class_counts, **cfg["loss"]["params"]).to(device)
    slow = []
    for _ in range(args.eval_repeats):
        t0 = time.perf_counter()
        conv.evaluate()
        slow.append(time.perf_counter() - t0)
    log(f"  evaluation of {n} test images: longtail {_median(fast):.2f} s, conventional {_median(slow):.2f} s")
    return {"test_images": n, "fast_seconds": fast, "conventional_seconds": slow,
            "fast_eval_seconds": _median(fast), "conventional_eval_seconds": _median(slow)}


def _launch(argv: list[str], logfile: Path, threads: Optional[int]) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    fh = open(logfile, "w")
    fh.write(f"$ OMP_NUM_THREADS={threads} {shlex.join(argv)}\n")
    fh.flush()
    proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env)
    proc._logfile = fh  # closed by _wait
    return proc


def _wait(proc: subprocess.Popen) -> int:
    rc = proc.wait()
    proc._logfile.close()
    return rc


def _train_rates(run_dir: Path, warmup: int) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    return [r["images_per_second"] for r in rows[warmup:]] or [rows[-1]["images_per_second"]]


def part_concurrency(args, base: list[str], device: torch.device, workdir: Path, log: Callable) -> dict:
    """One run with all CPU threads against ``cores`` single-threaded runs at once (``longtail
    train`` processes, training throughput only): which one gets more images/s in aggregate."""
    cores = os.cpu_count() or 1
    epochs = args.warmup_epochs + args.timed_epochs
    workdir.mkdir(parents=True, exist_ok=True)

    def argv(name: str) -> list[str]:
        return [sys.executable, "-m", "longtail", "train", args.recipe, *base, f"optim.epochs={epochs}",
                "eval.every=1000000", f"output_dir={workdir}", f"name={name}", "quiet=true", "tensorboard=false"]

    shutil.rmtree(workdir / "one", ignore_errors=True)
    t0 = time.perf_counter()
    if _wait(_launch(argv("one"), workdir / "one.log", cores)):
        raise RuntimeError(f"the {cores}-thread run failed:\n{_tail(workdir / 'one.log')}")
    one_wall = time.perf_counter() - t0
    one = _median(_train_rates(workdir / "one", args.warmup_epochs))
    names = [f"each-{i}" for i in range(cores)]
    for n in names:
        shutil.rmtree(workdir / n, ignore_errors=True)
    t0 = time.perf_counter()
    procs = [_launch(argv(n), workdir / f"{n}.log", 1) for n in names]
    rcs = [_wait(p) for p in procs]
    many_wall = time.perf_counter() - t0
    if any(rcs):
        raise RuntimeError(f"a single-threaded run failed:\n{_tail(workdir / (names[rcs.index(next(r for r in rcs if r))] + '.log'))}")
    each = [_median(_train_rates(workdir / n, args.warmup_epochs)) for n in names]
    agg = sum(each)
    winner = "concurrent" if agg > one else "one"
    log(f"  one run x {cores} threads: {one:,.0f} img/s; {cores} runs x 1 thread: {' + '.join(f'{e:,.0f}' for e in each)} "
        f"= {agg:,.0f} img/s -> {winner}")
    return {"cores": cores, "one_run_threads": cores, "one_run_images_per_second": one, "one_run_wall_s": one_wall,
            "concurrent_runs": cores, "concurrent_images_per_second": each, "aggregate_images_per_second": agg,
            "concurrent_wall_s": many_wall, "ratio": agg / one, "better": winner}


def part_stage2(args, base: list[str], device: torch.device, workdir: Path, log: Callable) -> dict:
    """Stage-2 seconds per epoch on a frozen backbone: the recipe's re-training (images through the
    backbone every epoch), and the cached-feature path (cRT with no augmentation and no mixup)."""
    from longtail.engine.stage2 import retrain

    cfg0 = load_config(args.recipe, base)
    common = [f"output_dir={workdir}", "quiet=true", "tensorboard=false"]
    shutil.rmtree(workdir, ignore_errors=True)
    s1_dir, _ = train(load_config(args.recipe, base + common + ["optim.epochs=1", "name=stage1"]))
    out = {"recipe_stage2_epochs": int(cfg0["stage2"]["epochs"]), "timed_epochs": args.stage2_timed_epochs}
    variants = [("recipe", []),
                ("cached", ["data.augment=none", "stage2.mixup_alpha=0", "stage2.cache_features=true",
                            "stage2.method=crt"])]
    for key, extra in variants:
        t0 = time.perf_counter()
        d, m = retrain(s1_dir, [f"stage2.epochs={args.stage2_timed_epochs}", f"name=stage2-{key}", "eval.every=1000000",
                                *common, *extra])
        wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in (d / "log.jsonl").read_text().splitlines() if line.strip()]
        per_epoch = _median([r["train_seconds"] for r in rows])
        out[key] = {"overrides": extra, "wall_s": wall, "train_seconds_per_epoch": per_epoch,
                    "feature_cache": m.get("stage2_feature_cache"), "feature_cache_seconds": m.get("feature_cache_seconds"),
                    "epochs": args.stage2_timed_epochs}
        log(f"  stage 2 ({key}): {per_epoch:.2f} s per epoch"
            + (f", features computed once in {m['feature_cache_seconds']:.1f} s" if m.get("feature_cache_seconds") else ""))
    return out


# (h): where one training step's time goes, by phase and kind of operator
PROFILE_KINDS = (("convolution", ("convolution", "conv2d", "conv_depthwise")),
                 ("batch norm", ("batch_norm",)),
                 ("activation", ("relu", "clamp_min", "threshold")),
                 ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul")))
PROFILE_OTHER_KIND = "elementwise / other"
PROFILE_PHASES = ("forward", "backward", "optimizer", "other")


def profile_kind(name: str) -> str:
    """The kind of a profiled operator by its name (:data:`PROFILE_OTHER_KIND` when none matches)."""
    return next((kind for kind, keys in PROFILE_KINDS if any(k in name for k in keys)), PROFILE_OTHER_KIND)


def profile_phase(event) -> str:
    """``optimizer`` under ``Optimizer.step``, ``backward`` under the autograd engine, ``forward``
    under the model's forward (the ``longtail::forward`` record), else ``other`` (the batch's
    augmentation, mixup and the loss's forward)."""
    e = event
    while e is not None:
        if e.name.startswith("Optimizer."):
            return "optimizer"
        if e.name.startswith("autograd::engine"):
            return "backward"
        if e.name == "longtail::forward":
            return "forward"
        e = e.cpu_parent
    return "other"


def profile_table(events) -> dict:
    """Self CPU microseconds of ``events`` summed by ``[kind][phase]`` (each event counted once)."""
    table = {kind: dict.fromkeys(PROFILE_PHASES, 0.0) for kind in [k for k, _ in PROFILE_KINDS] + [PROFILE_OTHER_KIND]}
    for e in events:
        if e.name.startswith(("aten::", "mkldnn::", "onednn::")):
            table[profile_kind(e.name)][profile_phase(e)] += float(e.self_cpu_time_total)
    return table


def _run_step(args, base: list[str], part: str):
    """The run's own training step as :func:`~longtail.engine.trainer.fit` builds it, and an endless
    iterator of its training batches (with the epoch's mixup coefficients drawn as ``fit`` draws them)."""
    from longtail.engine.loaders import make_train_loader
    from longtail.engine.trainer import make_train_steps

    cfg = load_config(args.recipe, base + ["quiet=true", "tensorboard=false"])
    seed_everything(int(cfg["seed"]))
    run = build(cfg)
    step, _ = make_train_steps(run, list(run.model.parameters()), cfg["optim"], float(cfg["mixup"]["alpha"]))
    loader = make_train_loader(run, cfg["sampler"], int(cfg["optim"]["epochs"]), int(cfg["seed"]))

    def endless():  # a small training set has fewer batches than the steps asked for
        for epoch in range(int(cfg["optim"]["epochs"])):
            loader.set_epoch(epoch)
            if step.mixup is not None:
                step.mixup.start_epoch(len(loader))
            yield from loader
        raise RuntimeError(f"{part}: more steps than the whole schedule has")

    run.model.train()
    return cfg, run, step, endless()


def part_profile(args, base: list[str], device: torch.device, log: Callable) -> dict:
    """(h) ``--profile-steps`` steps of the run's own training step under ``torch.profiler``: the
    self CPU time of the operators, by kind (convolution, batch norm, ...) and phase (forward,
    backward, optimizer). Shares of the profiled time; the profiler's own overhead inflates the
    absolute figures, so the unprofiled step rate is (b)'s."""
    from torch.profiler import ProfilerActivity, profile, record_function

    cfg, run, step, batches = _run_step(args, base, "(h)")
    forward = run.model.forward

    def traced(*a, **kw):
        with record_function("longtail::forward"):
            return forward(*a, **kw)

    run.model.forward = traced
    for _ in range(args.profile_warmup):
        step(*next(batches))
    steps = args.profile_steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step(*next(batches))
        wall = time.perf_counter() - t0
    table = profile_table(prof.events())
    total = sum(sum(v.values()) for v in table.values())
    ms = {kind: {ph: us / 1000.0 / steps for ph, us in v.items()} for kind, v in table.items()}
    share = {kind: sum(v.values()) / total if total else float("nan") for kind, v in table.items()}
    log("  " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in share.items()))
    return {"steps": steps, "warmup_steps": args.profile_warmup, "threads": torch.get_num_threads(),
            "profiled_ms_per_step": wall * 1000.0 / steps, "self_ms_per_step": ms, "share": share,
            "config": resolved_switches(cfg, device)}


def part_ceiling(args, base: list[str], device: torch.device, report: dict, log: Callable) -> dict:
    """(i) The step's convolutions timed alone against a dense matmul of the run's dtype
    (:mod:`conv_ceiling`): the run's own training step, each pass of each of its convolutions and
    the same passes as bare im2col matmuls, timed in the same interleaved rounds; and the step
    that would follow with the convolutions at the matmul's speed, set against (a)'s step."""
    cfg, run, step, batches = _run_step(args, base, "(i)")
    dtype = run.amp_dtype or torch.float32
    x, _ = next(batches)  # a training batch as the step receives it (size, layout)
    shapes = conv_ceiling.conv_shapes(run.model, x)
    peak = conv_ceiling.matmul_gflops(dtype, repeats=args.ceiling_repeats)
    fns = {("conv", s): conv_ceiling.pass_fns(s, dtype, run.channels_last) for s in shapes}
    fns.update({("gemm", s): conv_ceiling.gemm_fns(s, dtype) for s in shapes})
    fns["step"] = {"step": lambda: step(*next(batches))}
    best = conv_ceiling.time_rounds(fns, repeats=args.ceiling_repeats)
    out = conv_ceiling.ceiling(shapes, {s: best[("conv", s)] for s in shapes}, peak,
                               step_ms=1000 * best["step"]["step"],
                               conventional_ms=(report["results"].get("conventional") or {}).get("ms_per_step"),
                               gemm_seconds={s: best[("gemm", s)] for s in shapes},
                               conv_share=(report["results"].get("profile") or {}).get("share", {}).get("convolution"))
    out.update({"dtype": str(dtype).replace("torch.", ""), "channels_last": run.channels_last,
                "threads": torch.get_num_threads(), "repeats": args.ceiling_repeats, "config": resolved_switches(cfg, device)})
    log(f"  step {out['step_ms']:.1f} ms; its convolutions {out['conv_ms']:.1f} ms ({out['conv_gflop']:.1f} GFLOP), "
        f"at the matmul's {peak:.0f} GFLOP/s {out['conv_ms_at_peak']:.1f} ms")
    return out


def n_evaluations(every, device: torch.device, epochs: int) -> int:
    k = eval_every(every, device, epochs)
    return len({e for e in range(epochs) if (e + 1) % k == 0} | {epochs - 1})


def projections(report: dict) -> dict:
    """Projected wall time of the recipe's full schedule from the measured parts (seconds)."""
    r, s = report["results"], report["settings"]
    device = torch.device(s["device"])
    cfg = load_config(s["recipe"], s["overrides"])
    epochs = int(cfg["optim"]["epochs"])
    ev = r.get("eval") or {}
    out = {"epochs": epochs}
    fast, conv = r.get("fast"), r.get("conventional")
    if fast:
        n = n_evaluations(cfg["eval"]["every"], device, epochs)
        t = epochs * fast["seconds_per_epoch"] + n * ev.get("fast_eval_seconds", 0.0)
        out["fast"] = {"evaluations": n, "stage1_s": t, "eval_included": bool(ev)}
    if conv:
        t = epochs * conv["seconds_per_epoch"] + epochs * ev.get("conventional_eval_seconds", 0.0)
        out["conventional"] = {"evaluations": epochs, "stage1_s": t, "eval_included": bool(ev)}
    s2 = r.get("stage2")
    if s2 and fast:
        e2 = s2["recipe_stage2_epochs"]
        n2 = n_evaluations(cfg["eval"]["every"], device, e2)
        out["fast"]["stage2_s"] = e2 * s2["recipe"]["train_seconds_per_epoch"] + n2 * ev.get("fast_eval_seconds", 0.0)
        out["fast"]["stage2_evaluations"] = n2
        out["fast"]["total_s"] = out["fast"]["stage1_s"] + out["fast"]["stage2_s"]
    return out


def resolved_switches(cfg: dict, device: torch.device) -> dict:
    """What the fast-path switches (``auto`` by default) resolve to on ``device``."""
    cuda = device.type == "cuda"

    def auto(v, default):
        return default if v == "auto" else bool(v)

    dt = amp_dtype(cfg, device)
    return {"amp": str(dt).replace("torch.", "") if dt is not None else "none",
            "channels_last": auto(cfg["channels_last"], channels_last_default(device)),
            "cuda_graph": auto(cfg["cuda_graph"], cuda) and cuda,
            "compile": bool(cfg["compile"]),
            "fused_optimizer": (auto(cfg["fused_optimizer"], cuda) or (auto(cfg["cuda_graph"], cuda) and cuda)),
            "data.gpu_resident": auto(cfg["data"]["gpu_resident"], True)}


def fast_label(d: dict) -> str:
    c = d.get("config", {})
    parts = ["device-resident data" if c.get("data.gpu_resident") else "DataLoader",
             c.get("amp") if c.get("amp") != "none" else "fp32"]
    parts += [name for key, name in (("channels_last", "channels_last"), ("fused_optimizer", "fused SGD"),
                                     ("cuda_graph", "CUDA graph"), ("compile", "torch.compile")) if c.get(key)]
    return ", ".join(parts)


def _run_logged(argv: list[str], logfile: Path, env: dict) -> tuple[int, float]:
    t0 = time.perf_counter()
    with open(logfile, "w") as fh:
        fh.write(f"$ {shlex.join(argv)}\n")
        fh.flush()
        rc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
    return rc, time.perf_counter() - t0


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def part_e2e(args, base: list[str], device: torch.device, workdir: Path, log: Callable) -> dict:
    """(c): ``python -m longtail train RECIPE`` then ``python -m longtail retrain RUN``."""
    cfg0 = load_config(args.recipe, base)
    over = base + schedule_overrides(cfg0, args.epochs)
    e2 = stage2_epochs(cfg0, args.epochs, args.stage2_epochs)
    name = f"e2e-{args.recipe.replace('/', '-')}-seed{args.seed}"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    s1 = [sys.executable, "-m", "longtail", "train", args.recipe] + over + [
        f"output_dir={workdir}", f"name={name}", "tensorboard=false", "--quiet"]
    s2 = [sys.executable, "-m", "longtail", "retrain", str(workdir / name), f"name={name}-stage2",
          f"stage2.epochs={e2}", "--quiet"]
    out: dict = {"stage1_epochs": args.epochs, "stage2_epochs": e2, "stage1_command": shlex.join(s1),
                 "stage2_command": shlex.join(s2), "schedule_overrides": schedule_overrides(cfg0, args.epochs)}
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"  $ {shlex.join(s1)}")
    rc, t1 = _run_logged(s1, workdir / f"{name}.log", env)
    out.update({"stage1_rc": rc, "stage1_wall_s": t1, "stage1_log": str(workdir / f"{name}.log")})
    if rc != 0:
        raise RuntimeError(f"stage 1 failed (exit {rc}); log {workdir / f'{name}.log'}:\n{_tail(workdir / f'{name}.log')}")
    m1 = json.loads((workdir / name / "metrics.json").read_text())
    out.update({"stage1_top1": m1["top1"], "stage1_many": m1.get("many"), "stage1_medium": m1.get("medium"),
                "stage1_few": m1.get("few"), "stage1_run_wall_s": m1.get("wall_time_s")})
    log(f"  stage 1: {t1:.1f} s, top-1 {m1['top1']:.2f}")
    log(f"  $ {shlex.join(s2)}")
    rc, t2 = _run_logged(s2, workdir / f"{name}-stage2.log", env)
    out.update({"stage2_rc": rc, "stage2_wall_s": t2, "stage2_log": str(workdir / f"{name}-stage2.log")})
    if rc != 0:
        raise RuntimeError(f"stage 2 failed (exit {rc}); log {workdir / f'{name}-stage2.log'}:\n"
                           f"{_tail(workdir / f'{name}-stage2.log')}")
    m2 = json.loads((workdir / f"{name}-stage2" / "metrics.json").read_text())
    out.update({"top1": m2["top1"], "many": m2.get("many"), "medium": m2.get("medium"), "few": m2.get("few"),
                "stage2_run_wall_s": m2.get("wall_time_s"), "wall_s": t1 + t2,
                "run_wall_s": (m1.get("wall_time_s") or 0) + (m2.get("wall_time_s") or 0)})
    log(f"  stage 2: {t2:.1f} s, top-1 {m2['top1']:.2f}; total {t1 + t2:.1f} s")
    return out


def part_conventional_e2e(args, base: list[str], device: torch.device, epochs: int, log: Callable) -> dict:
    """(d): the same two-stage recipe with the conventional loop."""
    cfg0 = load_config(args.recipe, base)
    e2 = stage2_epochs(cfg0, epochs, args.stage2_epochs)
    cfg = load_config(args.recipe, base + schedule_overrides(cfg0, epochs) + [f"stage2.epochs={e2}"])
    t0 = time.perf_counter()
    conv = Conventional(cfg, device, args.workers)
    s1 = conv.stage1(log=log)
    m1 = conv.evaluate()
    t1 = time.perf_counter() - t0
    log(f"  stage 1: {t1:.1f} s, top-1 {m1['top1']:.2f}")
    s2 = conv.stage2(log=log)
    m2 = conv.evaluate()
    wall = time.perf_counter() - t0
    log(f"  stage 2: {wall - t1:.1f} s, top-1 {m2['top1']:.2f}; total {wall:.1f} s")
    return {"stage1_epochs": epochs, "stage2_epochs": e2, "shortened": epochs != int(cfg0["optim"]["epochs"]),
            "stage1_wall_s": t1, "stage2_wall_s": wall - t1, "wall_s": wall, "stage1_top1": m1["top1"],
            "top1": m2["top1"], "many": m2.get("many"), "medium": m2.get("medium"), "few": m2.get("few"),
            "stage1_train_seconds": sum(s1), "stage2_train_seconds": sum(s2), "workers": args.workers}


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def machine_info(device: torch.device) -> dict:
    import torchvision

    info = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
            "device": str(device)}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        info["cpu"] = platform.processor() or None
    if device.type == "cpu":
        info["cpu_bf16_native"] = cpu_bf16_supported()
        info["cpu_capability"] = getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)()
        info["torch_threads"] = torch.get_num_threads()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({"gpu": torch.cuda.get_device_name(device), "gpu_count": torch.cuda.device_count(),
                     "gpu_memory_gb": round(props.total_memory / 2**30, 1),
                     "cudnn": torch.backends.cudnn.version(), "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                     "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32})
    return info


def _f(v, fmt="{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def markdown(report: dict) -> str:
    r, m, s = report["results"], report["machine"], report["settings"]
    where = m.get("gpu") or m.get("cpu") or "CPU"
    lines = [f"# CIFAR-LT benchmark ({m['device']}): `{s['recipe']}` on {s['dataset']}", "",
             f"- command: `{report['command']}`",
             f"- machine: {where} ({m['device']}); torch {m['torch']}, torchvision {m['torchvision']}, "
             f"CUDA {m.get('cuda')}, cuDNN {m.get('cudnn', '-')}; {m['cpu_count']} CPUs ({m.get('cpu')}"
             + (f", {m.get('cpu_capability')}, native bf16: {'yes' if m.get('cpu_bf16_native') else 'no'}, "
                f"{m.get('torch_threads')} torch threads" if "cpu_bf16_native" in m else "") + ")",
             f"- date: {report['date']}; data: {s['data']}", ""]
    conv, fast, comp = r.get("conventional"), r.get("fast"), r.get("fast_compile")
    lines += [f"## Training throughput (seconds per epoch: median of {s['timed_epochs']} epochs after "
              f"{s['warmup_epochs']} warm-up)", "",
              "| path | s/epoch | images/s | ms/step | first epoch s | speed-up |", "|---|---|---|---|---|---|"]
    base = conv["seconds_per_epoch"] if conv else None

    def row(label, d):
        if not d:
            return
        ratio = f"{base / d['seconds_per_epoch']:.2f}x" if base else "-"
        lines.append(f"| {label} | {d['seconds_per_epoch']:.3f} | {d['images_per_second']:,.0f} | {d['ms_per_step']:.2f} "
                     f"| {d['first_epoch_seconds']:.2f} | {ratio} |")

    row(f"(a) conventional: DataLoader ({s['workers']} workers) + PIL, fp32, `.item()` per step, SGD", conv)
    if fast:
        row(f"(b) longtail: {fast_label(fast)}", fast)
    if comp:
        row(f"(b') longtail: {fast_label(comp)}", comp)
    for key in ("fast", "fast_compile"):
        d = r.get(key)
        if d and d.get("graph_warnings"):
            lines.append(f"\n{key}: " + "; ".join(d["graph_warnings"]))
    lines += cpu_sections(report)
    e2e, ce2e = r.get("e2e"), r.get("conventional_e2e")
    if e2e or ce2e:
        lines += ["", "## End to end: two-stage recipe (stage 1 + `retrain` stage 2 + evaluation every epoch)", "",
                  "| path | stage-1 epochs | stage-2 epochs | stage 1 s | stage 2 s | total s | stage-1 top-1 | final top-1 | many | medium | few |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
    if e2e:
        lines.append(f"| (c) longtail (`longtail train` + `longtail retrain`, wall of the processes) | {e2e['stage1_epochs']} | "
                     f"{e2e['stage2_epochs']} | {e2e['stage1_wall_s']:.1f} | {_f(e2e.get('stage2_wall_s'), '{:.1f}')} | "
                     f"{_f(e2e.get('wall_s'), '{:.1f}')} | {e2e['stage1_top1']:.2f} | {_f(e2e.get('top1'), '{:.2f}')} | "
                     f"{_f(e2e.get('many'), '{:.2f}')} | {_f(e2e.get('medium'), '{:.2f}')} | {_f(e2e.get('few'), '{:.2f}')} |")
    if ce2e:
        note = " (shortened schedule)" if ce2e["shortened"] else ""
        if e2e and ce2e["stage1_epochs"] != e2e["stage1_epochs"]:
            note += " (other length than (c): top-1 not comparable)"
        lines.append(f"| (d) conventional loop{note} | {ce2e['stage1_epochs']} | {ce2e['stage2_epochs']} | "
                     f"{ce2e['stage1_wall_s']:.1f} | {ce2e['stage2_wall_s']:.1f} | {ce2e['wall_s']:.1f} | "
                     f"{ce2e['stage1_top1']:.2f} | {ce2e['top1']:.2f} | {_f(ce2e.get('many'), '{:.2f}')} | "
                     f"{_f(ce2e.get('medium'), '{:.2f}')} | {_f(ce2e.get('few'), '{:.2f}')} |")
    elif e2e:
        lines.append("| (d) conventional loop | not run (`--full-conventional` or `--conventional-epochs N`) | | | | | | | | | |")
    if e2e and e2e.get("schedule_overrides"):
        lines.append(f"\nshortened schedule: `{' '.join(e2e['schedule_overrides'])}`, stage2.epochs={e2e['stage2_epochs']}")
    if report["errors"]:
        lines += ["", "## Failed parts", ""] + [f"- {e['part']}: {e['error'].splitlines()[0] if e['error'] else ''}"
                                                 for e in report["errors"]]
    return "\n".join(lines) + "\n"


def cpu_sections(report: dict) -> list[str]:
    """Markdown for (e) evaluation, the projected full recipe, (f) concurrency, (g) stage 2, (h) the profile and (i) the ceiling."""
    r, proj = report["results"], report.get("projection", {})
    lines: list[str] = []
    ev = r.get("eval")
    if ev:
        lines += ["", f"## (e) One evaluation of the {ev['test_images']:,} test images (median of "
                      f"{len(ev['fast_seconds'])})", "",
                  "| path | seconds |", "|---|---|",
                  f"| conventional (DataLoader + PIL, fp32) | {ev['conventional_eval_seconds']:.2f} |",
                  f"| longtail (run's amp, layout and eval batch) | {ev['fast_eval_seconds']:.2f} |"]
    if proj.get("fast") or proj.get("conventional"):
        e = proj["epochs"]
        lines += ["", f"## Projected wall time of the full {e}-epoch stage 1 (training + evaluations)", "",
                  "| path | evaluations | projected stage 1 | minutes | speed-up |", "|---|---|---|---|---|"]
        base = proj.get("conventional", {}).get("stage1_s")
        for key, label in (("conventional", "(a) conventional, evaluating every epoch"),
                           ("fast", "(b) longtail, `eval.every` of the config")):
            d = proj.get(key)
            if d:
                ratio = f"{base / d['stage1_s']:.2f}x" if base else "-"
                lines.append(f"| {label} | {d['evaluations']} | {d['stage1_s']:,.0f} s | {d['stage1_s'] / 60:.1f} | {ratio} |")
        f = proj.get("fast", {})
        if "stage2_s" in f:
            lines.append(f"\nWith stage 2 ({r['stage2']['recipe_stage2_epochs']} epochs, {f['stage2_evaluations']} "
                         f"evaluations): {f['stage2_s']:,.0f} s; both stages {f['total_s']:,.0f} s "
                         f"({f['total_s'] / 60:.1f} min).")
        if not r.get("eval"):
            lines.append("\n(evaluation not timed: projections are training only)")
    c = r.get("concurrency")
    if c:
        each = " + ".join(f"{v:,.0f}" for v in c["concurrent_images_per_second"])
        conv = (r.get("conventional") or {}).get("images_per_second")

        def vs_a(rate: float) -> str:  # the machine's training images/s against the plain loop's (a)
            return f" {rate / conv:.2f}x |" if conv else ""

        lines += ["", "## (f) Concurrency: one run on every thread vs single-threaded runs at once", "",
                  "| setting | images/s (training) |" + (" vs (a) |" if conv else ""),
                  "|---|---|" + ("---|" if conv else ""),
                  f"| 1 run x {c['one_run_threads']} threads | {c['one_run_images_per_second']:,.0f} |"
                  + vs_a(c["one_run_images_per_second"]),
                  f"| {c['concurrent_runs']} runs x 1 thread, at once | {each} = {c['aggregate_images_per_second']:,.0f} |"
                  + vs_a(c["aggregate_images_per_second"]),
                  "", f"Aggregate ratio {c['ratio']:.2f}: better is **{c['better']}**."
                  + (" The vs (a) column is the machine's throughput: what `reproduce` and `sweep` get by running "
                     "their runs this way, not the speed of one run." if conv else "")]
    s2 = r.get("stage2")
    if s2:
        lines += ["", "## (g) Stage 2 on the frozen backbone (seconds per epoch, median)", "",
                  "| variant | s/epoch | features computed once | overrides |", "|---|---|---|---|"]
        for key in ("recipe", "cached"):
            d = s2.get(key)
            if d:
                fc = f"{d['feature_cache_seconds']:.1f} s" if d.get("feature_cache_seconds") else "-"
                lines.append(f"| {key} | {d['train_seconds_per_epoch']:.2f} | {fc} | `{' '.join(d['overrides']) or '-'}` |")
    pr = r.get("profile")
    if pr:
        lines += ["", f"## (h) Where a training step's time goes ({pr['steps']} steps under `torch.profiler`, "
                      f"{pr['threads']} threads; self CPU ms per step)", "",
                  "| kind | forward (model) | backward | optimizer | outside the model (data, mixup, loss) | share |", "|---|---|---|---|---|---|"]
        for kind, v in pr["self_ms_per_step"].items():
            lines.append(f"| {kind} | " + " | ".join(f"{v[ph]:.1f}" for ph in PROFILE_PHASES)
                         + f" | {100 * pr['share'][kind]:.1f}% |")
        lines.append(f"\nProfiled step: {pr['profiled_ms_per_step']:.1f} ms (the profiler's overhead included).")
    lines += ceiling_section(r.get("ceiling"))
    return lines


def ceiling_section(c: Optional[dict]) -> list[str]:
    """Markdown for (i): each convolution shape of the step, and the step with them at the matmul's speed."""
    if not c:
        return []
    lines = ["", f"## (i) The step's convolutions against a dense matmul ({c['dtype']}"
                 f"{', channels_last' if c['channels_last'] else ''}, {c['threads']} threads; "
                 f"each pass timed alone, minimum of {c['repeats']} rounds)", "",
             f"A {c['dtype']} matmul of 2048 x 2048 runs at **{c['peak_gflops']:.0f} GFLOP/s** here.", "",
             "| convolution (C_in->C_out, kernel, H x W) | in the step | forward ms | input grad ms | weight grad ms "
             "| GFLOP/s | of the matmul's | as bare im2col matmuls, GFLOP/s |", "|---|---|---|---|---|---|---|---|"]
    for layer in c["layers"]:
        ms = layer["ms"]
        lines.append(f"| {layer['label']} | {layer['count']} | " + " | ".join(_f(ms.get(p), "{:.2f}") for p in conv_ceiling.PASSES)
                     + f" | {layer['gflops']:.0f} | {100 * layer['of_peak']:.0f}% | {_f(layer.get('gemm_gflops'), '{:.0f}')} |")
    lines += ["", "| | ms per step | convolutions' GFLOP/s |", "|---|---|---|",
              f"| the convolutions ({c['conv_gflop']:.1f} GFLOP), timed alone | {c['conv_ms']:.1f} | {c['conv_gflops']:.0f} |",
              f"| the same at the matmul's speed | {c['conv_ms_at_peak']:.1f} | {c['peak_gflops']:.0f} |"]
    if "step_ms" in c:
        share = c.get("conv_share")
        in_step = (f"their {100 * share:.1f}% of the profile (h)" if share is not None
                   else "as fast as alone ((h) not run)")
        lines += [f"| the run's training step, timed in the same rounds | {c['step_ms']:.1f} | |",
                  f"| its convolutions, {in_step} | {c['conv_ms_in_step']:.1f} | {c['conv_gflops_in_step']:.0f} |",
                  f"| the rest of the step (batch norm, activations, optimizer, data) | {c['other_ms']:.1f} | |",
                  f"| the step with the convolutions as fast as alone | {c['step_ms_alone']:.1f} | {c['conv_gflops']:.0f} |",
                  f"| the step with the convolutions at the matmul's speed | {c['step_ms_at_peak']:.1f} | {c['peak_gflops']:.0f} |"]
    if "conventional_ms" in c:
        need = (f"{c['target_gflops']:.0f} ({100 * c['target_gflops'] / c['peak_gflops']:.0f}% of the matmul's)"
                if math.isfinite(c["target_gflops"]) else "none suffices: the rest alone is slower")
        lines += [f"| (a)'s step | {c['conventional_ms']:.1f} | |",
                  f"| the step {c['target']:g}x (a) needs, the rest as measured | {c['target_step_ms']:.1f} | {need} |",
                  "", f"Speed-up of this step over (a): {c['speedup']:.2f}x as measured; {c['speedup_alone']:.2f}x with "
                      f"the convolutions in the step as fast as alone; {c['speedup_at_peak']:.2f}x at the matmul's speed."]
    lines.append("\nThe last column of the first table times the same passes as the matmuls of an im2col formulation, "
                 "leaving out the cost of building the columns.")
    return lines


def short_table(report: dict) -> str:
    r = report["results"]
    out = []
    conv = r.get("conventional")
    for key, label in (("conventional", "(a) conventional"), ("fast", "(b) fast"), ("fast_compile", "(b') fast+compile")):
        d = r.get(key)
        if d:
            ratio = f"  x{conv['seconds_per_epoch'] / d['seconds_per_epoch']:.2f}" if conv else ""
            out.append(f"{label:20s} {d['seconds_per_epoch']:8.3f} s/epoch {d['images_per_second']:10,.0f} img/s"
                       f" {d['ms_per_step']:7.2f} ms/step{ratio}")
    for key, label in (("e2e", "(c) end to end"), ("conventional_e2e", "(d) conventional e2e")):
        d = r.get(key)
        if d and d.get("wall_s") is not None:
            out.append(f"{label:20s} {d['wall_s']:8.1f} s total ({d['stage1_epochs']}+{d['stage2_epochs']} epochs)"
                       f" top-1 {d['top1']:.2f} (stage 1 {d['stage1_top1']:.2f})")
    for e in report["errors"]:
        out.append(f"FAILED {e['part']}: {e['error'].splitlines()[0] if e['error'] else ''}")
    return "\n".join(out)


def write_report(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, out.with_suffix(".json"))
    out.with_suffix(".md").write_text(markdown(report))


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides applied to every part")
    p.add_argument("--recipe", default="cifar10_lt/gcl", help="recipe (default cifar10_lt/gcl: two stages)")
    p.add_argument("--dataset", choices=["cifar10_lt", "synthetic"], default="cifar10_lt")
    p.add_argument("--data", help="folder holding cifar-10-batches-py (default: data/ or .cache/cifar10, built "
                                  "from shared/data if missing)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--epochs", type=int, default=None,
                   help="stage-1 epochs of the end-to-end runs (c)/(d) (default: the recipe's, 200); fewer scale the "
                        "schedule, and stage 2 proportionally")
    p.add_argument("--stage2-epochs", type=int, default=None, help="stage-2 epochs of (c)/(d) (default: see --epochs)")
    p.add_argument("--warmup-epochs", type=int, default=1, help="untimed epochs before the timed ones in (a)/(b)")
    p.add_argument("--timed-epochs", type=int, default=3, help="timed epochs of (a)/(b) (median reported)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader workers of (a)/(d)")
    p.add_argument("--subset", type=int, default=None, metavar="N",
                   help="head-class size n_max (data.params.n_max): a smaller long-tailed training set "
                        "(with rho = 100, N >= 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="also time the fast path with compile=true (b')")
    p.add_argument("--full-conventional", action="store_true",
                   help="(d): the whole two-stage recipe with the conventional loop (long)")
    p.add_argument("--conventional-epochs", type=int, default=None, metavar="N",
                   help="(d) with N stage-1 epochs (schedule scaled; reported as shortened)")
    p.add_argument("--skip-conventional", action="store_true", help="skip (a)")
    p.add_argument("--skip-fast", action="store_true", help="skip (b)")
    p.add_argument("--skip-e2e", action="store_true", help="skip (c) (on the CPU (c) runs only with an explicit --epochs)")
    p.add_argument("--skip-eval", action="store_true", help="skip (e), the evaluation timing")
    p.add_argument("--eval-repeats", type=int, default=3, help="evaluations timed in (e) (median reported)")
    p.add_argument("--concurrency", choices=["auto", "on", "off"], default="auto",
                   help="(f): one run on every CPU thread vs one single-threaded run per core (auto: on the CPU)")
    p.add_argument("--stage2", choices=["auto", "on", "off"], default="auto",
                   help="(g): stage-2 seconds per epoch, recipe and cached features (auto: on the CPU)")
    p.add_argument("--stage2-timed-epochs", type=int, default=2, help="stage-2 epochs timed in (g)")
    p.add_argument("--profile", choices=["auto", "on", "off"], default="auto",
                   help="(h): the training step's operators under torch.profiler, by kind and phase (auto: on the CPU)")
    p.add_argument("--profile-steps", type=int, default=10, help="steps profiled in (h)")
    p.add_argument("--profile-warmup", type=int, default=3, help="unprofiled steps before (h)")
    p.add_argument("--ceiling", choices=["auto", "on", "off"], default="auto",
                   help="(i): the step's convolutions timed alone against a dense matmul of the run's dtype, and the "
                        "step with the convolutions at the matmul's speed (auto: on the CPU)")
    p.add_argument("--ceiling-repeats", type=int, default=5, help="rounds of (i) (the minimum is reported)")
    p.add_argument("--out", default=None, help="results path without suffix (NAME.json and NAME.md are written); "
                                               "default benchmarks/results/bench_cifar-<device>-<time>")
    p.add_argument("--workdir", default=None, help="run folders and logs (default .cache/bench_cifar/<time>)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    device = resolve_device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"bench_cifar-{device.type}-{stamp}"
    if out.suffix in (".json", ".md"):
        out = out.with_suffix("")
    workdir = (Path(args.workdir) if args.workdir else REPO / ".cache" / "bench_cifar" / stamp).resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    base = [f"device={device}", f"seed={args.seed}"]
    data_desc = args.dataset
    if args.dataset == "synthetic":
        base.append("data.name=synthetic")
    else:
        root = find_or_build_cifar10(args.data, log).resolve()
        base += ["data.name=cifar10_lt", f"data.root={root}"]
        data_desc = f"CIFAR-10-LT from {root}"
    if args.subset is not None:
        base.append(f"data.params.n_max={args.subset}")
        data_desc += f", n_max={args.subset}"
    base += list(args.overrides)
    cfg0 = load_config(args.recipe, base)  # fails here, before any part, on a bad override
    rho = cfg0["data"]["imbalance_ratio"]
    data_desc += f", rho={rho:g}"
    cpu = device.type == "cpu"
    if args.epochs is None:
        args.epochs = int(cfg0["optim"]["epochs"])
        args.skip_e2e = args.skip_e2e or cpu  # a full-length run is hours on a CPU: ask for it with --epochs
    conv_epochs = args.epochs if args.full_conventional else args.conventional_epochs

    report = {"command": shlex.join([Path(sys.executable).name, os.path.relpath(__file__, os.getcwd())] + sys.argv[1:]
                                     if argv is None else ["bench_cifar.py"] + list(argv)),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine_info(device),
              "settings": {"recipe": args.recipe, "dataset": args.dataset, "data": data_desc, "device": str(device),
                           "epochs": args.epochs, "warmup_epochs": args.warmup_epochs, "timed_epochs": args.timed_epochs,
                           "workers": args.workers, "subset": args.subset, "seed": args.seed,
                           "overrides": base, "workdir": str(workdir), "conventional_e2e_epochs": conv_epochs},
              "results": {}, "errors": []}
    log(f"bench_cifar: {args.recipe} on {data_desc}, device {device} "
        f"({report['machine'].get('gpu') or report['machine'].get('cpu')}); results -> {out}.json/.md")

    parts: list[tuple[str, str, Callable[[], dict]]] = []
    if not args.skip_conventional:
        parts.append(("conventional", "(a) conventional loop", lambda: part_conventional(args, base, device, log)))
    if not args.skip_fast:
        parts.append(("fast", "(b) longtail fast path", lambda: part_fast(args, base, device, workdir / "fast", log, False)))
    if not args.skip_e2e:
        parts.append(("e2e", f"(c) end to end, {args.epochs} + stage-2 epochs",
                      lambda: part_e2e(args, base, device, workdir / "e2e", log)))
    if not args.skip_eval:
        parts.append(("eval", "(e) evaluation of the test split", lambda: part_eval(args, base, device, log)))
    if args.concurrency == "on" or (args.concurrency == "auto" and cpu):
        parts.append(("concurrency", "(f) one run on all threads vs single-threaded runs at once",
                      lambda: part_concurrency(args, base, device, workdir / "concurrency", log)))
    if args.stage2 == "on" or (args.stage2 == "auto" and cpu):
        parts.append(("stage2", "(g) stage 2 on the frozen backbone",
                      lambda: part_stage2(args, base, device, workdir / "stage2", log)))
    if args.profile_steps > 0 and (args.profile == "on" or (args.profile == "auto" and cpu)):
        parts.append(("profile", "(h) where a training step's time goes",
                      lambda: part_profile(args, base, device, log)))
    if args.ceiling == "on" or (args.ceiling == "auto" and cpu):  # after (a) and (b): it sets their steps against it
        parts.append(("ceiling", "(i) the convolutions against the machine's matmul speed",
                      lambda: part_ceiling(args, base, device, report, log)))
    if args.compile:  # after (c): its compilation time must not cost (c) its place in a time budget
        parts.append(("fast_compile", "(b') longtail fast path + torch.compile",
                      lambda: part_fast(args, base, device, workdir / "fast", log, True)))
    if conv_epochs:
        parts.append(("conventional_e2e", f"(d) conventional two-stage recipe, {conv_epochs} stage-1 epochs",
                      lambda: part_conventional_e2e(args, base, device, conv_epochs, log)))
    for key, title, fn in parts:
        log(f"== {title}")
        t0 = time.perf_counter()
        try:
            report["results"][key] = fn()
            report["results"][key]["part_wall_s"] = time.perf_counter() - t0
        except Exception as err:  # report, keep going
            tb = traceback.format_exc()
            log(f"FAILED {title}: {type(err).__name__}: {err}\n{tb}")
            report["errors"].append({"part": key, "error": f"{type(err).__name__}: {err}", "traceback": tb})
        report["projection"] = projections(report)
        write_report(report, out)
    log("\n" + short_table(report))
    log(f"\nwrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
