"""The training loop every method shares (stage 1 and stage 2).

Read top to bottom: ``build`` turns a config into components, ``train_one_epoch`` and
``evaluate`` are flat loops in the style of torchvision's classification reference, ``fit`` runs
epochs with schedule hooks, checkpoints and logs, and ``train`` is the ``longtail train`` entry.
Methods plug in as a head, a loss, a sampler and the loss's ``set_progress`` hook (DRW, the KPS
gradient-adjustment switch, the FBL curriculum) -- never as a forked loop.
"""
from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import load_saved_config, save_config
from ..data import DataBundle, build_datasets, build_sampler
from ..data.transforms import EpochIndexSampler, EpochSeededDataset
from ..data.folder import annotate_metrics, resolve_auto
from ..data.gpu import RESIDENT_AUGMENTS, GpuLoader, iterate_eval
from ..errors import CheckpointError, ConfigError, DivergenceError
from ..losses import LongTailLoss, build_loss
from ..models import LongTailModel, build_model
from ..seeding import global_epoch_seed, seed_everything
from . import distributed as dist
from .checkpoint import load_checkpoint, load_model_state, save_atomic
from .checkpoint import check_finite_state, kept_message
from .metrics import Accumulator
from .runlog import EpochLog, command_line, default_run_name, git_commit, machine_line, new_run_dir, read_log, software_versions, write_json
from .runlog import lock_run_dir, release_run_dir, sync_log
from .precision import amp_dtype, auto_flag, channels_last_default, precision_label
from .schedule import check_schedule, lr_at
from .step import MixupSchedule, TrainStep


# ---------------------------------------------------------------------------------------------
# Devices and switches
# ---------------------------------------------------------------------------------------------
def resolve_device(spec: str) -> torch.device:
    """``auto`` picks CUDA when available; an unavailable CUDA device is an error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{spec}' requested but CUDA is not available")
    return dev


_auto = auto_flag


def eval_every(every, device: torch.device, epochs: int) -> int:
    """Evaluate every N epochs (the last epoch is always evaluated and is what is reported).

    ``auto``: every epoch on a GPU, where evaluation is cheap; on the CPU about 20 evaluations
    per run (every 10th epoch of a 200-epoch run), where one evaluation of the CIFAR test set
    costs a quarter of a training epoch.
    """
    if every == "auto":
        return 1 if device.type == "cuda" else max(1, round(epochs / 20))
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(f"eval.every must be a positive number of epochs or 'auto', got {every!r}")
    return every


# ---------------------------------------------------------------------------------------------
# Building components from a config
# ---------------------------------------------------------------------------------------------
@dataclass
class Run:
    """Everything a run needs, built from its config."""

    cfg: dict
    device: torch.device
    bundle: DataBundle
    model: LongTailModel
    loss_fn: LongTailLoss
    amp_dtype: Optional[torch.dtype]
    channels_last: bool
    dist: dist.DistInfo = field(default_factory=dist.DistInfo)
    extras: dict = field(default_factory=dict)


def check_loss_head(loss_fn: LongTailLoss, model: LongTailModel, head_name: str) -> None:
    cos = getattr(loss_fn, "cosine", False)
    if cos and head_name not in ("cosine", "lws"):
        raise ConfigError(
            f"loss '{type(loss_fn).__name__}' expects a cosine head (model.head=cosine), got model.head={head_name}"
        )


def build(cfg: dict) -> Run:
    """Datasets, model and loss for a config (stage 1)."""
    resolve_auto(cfg)  # folder recipes: backbone, epochs and shot thresholds from the data (in place)
    check_schedule(cfg["optim"])
    if cfg["eval"]["checkpoint"] != "last":
        raise ConfigError(f"eval.checkpoint '{cfg['eval']['checkpoint']}' unknown: longtail reports the final epoch "
                          f"('last'); it never selects a checkpoint on the evaluation split")
    if cfg["eval"]["split"] not in ("test", "val"):
        raise ConfigError(f"eval.split '{cfg['eval']['split']}' unknown; valid: test, val")
    info = dist.from_env()
    device = dist.setup(info, resolve_device(cfg["device"]))
    bundle = build_datasets(cfg["data"])
    m = cfg["model"]
    model = build_model(m["backbone"], m["head"], bundle.num_classes, head_params=m["head_params"],
                        pretrained=m["pretrained"], freeze=m["freeze"])
    loss_fn = build_loss(cfg["loss"]["name"], bundle.class_counts, **cfg["loss"]["params"])
    check_loss_head(loss_fn, model, m["head"])
    cl = _auto(cfg["channels_last"], channels_last_default(device))
    model = model.to(device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    return Run(cfg, device, bundle, model, loss_fn.to(device), amp_dtype(cfg, device), cl, info)


def train_batch_size(run: Run, batch_size: Optional[int] = None) -> int:
    """This rank's training batch: ``batch_size`` (default ``data.batch_size``) split over the ranks."""
    return dist.per_rank_batch(int(batch_size or run.cfg["data"]["batch_size"]), run.dist)


def use_resident(run: Run) -> bool:
    """Whether training and evaluation batches come from the device-resident path.

    ``data.gpu_resident: auto`` keeps in-memory datasets on the device when the resident path
    implements their ``data.augment`` (:data:`~longtail.data.gpu.RESIDENT_AUGMENTS`); any other
    dataset goes through a DataLoader with the torchvision transforms, so both paths train and
    evaluate on the same images.

    Raises:
        ConfigError: ``data.gpu_resident: true`` with an in-memory dataset whose ``data.augment``
            the resident path lacks (``imagenet``: RandomResizedCrop, Resize + CenterCrop).
    """
    setting, bundle = run.cfg["data"]["gpu_resident"], run.bundle
    if not bundle.in_memory or not _auto(setting, True):
        return False
    if bundle.augment not in RESIDENT_AUGMENTS:
        if setting == "auto":
            return False
        raise ConfigError(f"data.gpu_resident=true cannot train with data.augment={bundle.augment}: the device-resident "
                          f"path implements only {', '.join(RESIDENT_AUGMENTS)} (no RandomResizedCrop, no Resize + "
                          f"CenterCrop); set data.gpu_resident=auto or false, or another data.augment")
    return True


def make_train_loader(run: Run, sampler_cfg: dict, total_epochs: int, stage_seed: int, batch_size: Optional[int] = None):
    """The device-resident loader when :func:`use_resident`, a DataLoader otherwise."""
    cfg, bundle = run.cfg, run.bundle
    batch_size = train_batch_size(run, batch_size)
    targets = np.asarray(bundle.train.targets)
    sampler = build_sampler(sampler_cfg["name"], targets, bundle.num_classes, seed=stage_seed,
                            total_epochs=total_epochs, rank=run.dist.rank, world_size=run.dist.world_size,
                            **sampler_cfg["params"])
    if use_resident(run):
        return GpuLoader(bundle.train.data, targets, sampler, batch_size, run.device,
                         bundle.mean, bundle.std, augment=bundle.augment, channels_last=run.channels_last)
    return _DataLoaderAdapter(bundle.train, sampler, batch_size, cfg["data"]["num_workers"],
                              run.device, run.channels_last)


class _DataLoaderAdapter:
    """A torch DataLoader with the GpuLoader interface (``set_epoch``, device batches)."""

    def __init__(self, dataset, sampler, batch_size: int, workers: int, device: torch.device, channels_last: bool):
        self.sampler, self.device, self.channels_last = sampler, device, channels_last
        # every sample's augmentation is seeded from (epoch seed, index): the same images in any worker
        # and in a resumed run; a private generator keeps the loader off the global RNG stream
        self._indices = EpochIndexSampler(sampler)
        self.loader = torch.utils.data.DataLoader(
            EpochSeededDataset(dataset), batch_size=batch_size, sampler=self._indices, num_workers=workers,
            pin_memory=device.type == "cuda", drop_last=False, persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(0))

    def set_epoch(self, epoch: int) -> None:
        # fit re-seeds the global RNGs from (seed, stage, epoch) just before: that seed is the epoch's
        self._indices.set_epoch(epoch, torch.initial_seed())

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)


def eval_batches(run: Run, split: str) -> Iterable:
    """Batches ``(x, y)`` of a split, on the device, in dataset order, with the evaluation transform
    (also for ``split="train"``, whose dataset carries the random training transform)."""
    bundle = run.bundle
    ds = {"test": bundle.test, "val": bundle.val, "train": bundle.train}[split]
    if ds is None:
        raise ConfigError(f"dataset '{run.cfg['data']['name']}' has no '{split}' split")
    bs = run.cfg["data"]["eval_batch_size"]
    if use_resident(run):
        key = f"eval_{split}"
        if key not in run.extras:  # move the split to the device once
            run.extras[key] = (torch.as_tensor(np.asarray(ds.data)).to(run.device),
                               torch.as_tensor(np.asarray(ds.targets), dtype=torch.long).to(run.device))
        data, targets = run.extras[key]
        yield from iterate_eval(data, targets, bs, bundle.mean, bundle.std, channels_last=run.channels_last)
        return
    if split == "train":  # a view of the training images with the test split's (evaluation) transform
        ds = copy.copy(ds)
        ds.transform = bundle.test.transform
    loader = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=False, num_workers=run.cfg["data"]["num_workers"],
                                         pin_memory=run.device.type == "cuda")
    for x, y in loader:
        x = x.to(run.device, non_blocking=True)
        yield (x.contiguous(memory_format=torch.channels_last) if run.channels_last else x), y.to(run.device)


def make_optimizer(params, optim_cfg: dict, device: torch.device, fused: bool, lr: float) -> torch.optim.Optimizer:
    """SGD with momentum; fused with a tensor learning rate on CUDA (graph-capturable); on the CPU
    fused only when asked (``fused_optimizer: true``, where this torch has the CPU kernel): it
    measured no faster than the plain loop for ResNet-32."""
    kw = dict(momentum=optim_cfg["momentum"], weight_decay=optim_cfg["weight_decay"], nesterov=optim_cfg["nesterov"])
    if fused and device.type == "cuda":
        return torch.optim.SGD(params, lr=torch.tensor(lr, device=device), fused=True, **kw)
    if fused and device.type == "cpu":
        params = list(params)
        try:
            return torch.optim.SGD(params, lr=lr, fused=True, **kw)
        except (RuntimeError, TypeError, ValueError):  # torch without fused CPU SGD: the plain one
            pass
    return torch.optim.SGD(params, lr=lr, **kw)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)  # in place: a captured graph reads this tensor
        else:
            group["lr"] = lr


# ---------------------------------------------------------------------------------------------
# The loops
# ---------------------------------------------------------------------------------------------
def train_one_epoch(step: TrainStep, loader, device: torch.device, desc: str = "", quiet: bool = False) -> dict:
    """One pass over ``loader``; returns the mean loss (one host sync, at the end)."""
    step.model.train()
    total = torch.zeros((), device=device)
    count = 0
    for x, y in tqdm(loader, desc=desc, leave=False, disable=quiet):
        total += step(x, y).float() * y.shape[0]
        count += y.shape[0]
    return {"loss": (total / max(count, 1)).item(), "images": count}


@torch.inference_mode()
def evaluate(model: nn.Module, loss_fn: LongTailLoss, batches: Iterable, class_counts, *, amp: Optional[torch.dtype] = None,
             many: int = 100, few: int = 20, keep_logits: bool = False,
             feature_norms: bool = False) -> tuple[dict, Optional[dict]]:
    """Evaluate on ``batches``; returns the metrics and (with ``keep_logits``) the outputs.

    The prediction logits are ``loss_fn.predict(logits, features)`` (e.g. ``s * cos`` for cosine
    losses, prior-corrected logits for post-hoc logit adjustment).
    """
    was_training = model.training
    model.eval()
    acc = Accumulator(keep_logits=keep_logits)
    feats, raw = [], []
    num_classes = len(class_counts)
    norm_sum = norm_cnt = None
    for x, y in batches:
        with torch.autocast(device_type=x.device.type, dtype=amp) if amp is not None else nullcontext():
            out = model(x)
        f = out.features.float()
        logits = loss_fn.predict(out.logits.float(), f)
        acc.update(logits, y)
        if feature_norms:
            if norm_sum is None:
                norm_sum = torch.zeros(num_classes, device=f.device, dtype=torch.float64)
                norm_cnt = torch.zeros(num_classes, device=f.device, dtype=torch.float64)
            norm_sum.index_add_(0, y, f.norm(dim=1).double())
            norm_cnt.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
        if keep_logits:
            feats.append(f)
            raw.append(out.logits.float())
    model.train(was_training)
    metrics = acc.compute(class_counts, many=many, few=few)
    if feature_norms and norm_sum is not None:
        metrics["feature_norm"] = (norm_sum / norm_cnt.clamp(min=1)).tolist()
    outputs = None
    if keep_logits:
        outputs = {"features": torch.cat(feats), "raw_logits": torch.cat(raw), "logits": acc.logits(),
                   "targets": acc.targets()}
    return metrics, outputs


def _headline(metrics: dict) -> str:
    def f(k):
        v = metrics.get(k)
        return "  -  " if v is None else f"{v:5.2f}"

    return f"top1 {f('top1')} | many {f('many')} medium {f('medium')} few {f('few')}"


def shot_table(metrics: dict) -> str:
    """A small head/medium/tail table for the terminal."""
    t = metrics.get("shot_thresholds", {})
    sizes = metrics.get("group_sizes", {})
    rows = [("all", metrics.get("top1"), sum(v for v in sizes.values() if v) if sizes else None),
            (f"many (>{t.get('many')})", metrics.get("many"), sizes.get("many")),
            ("medium", metrics.get("medium"), sizes.get("medium")),
            (f"few (<{t.get('few')})", metrics.get("few"), sizes.get("few"))]
    out = ["| group | classes | top-1 % |", "|---|---|---|"]
    for name, v, n in rows:
        out.append(f"| {name} | {'-' if n is None else n} | {'-' if v is None else f'{v:.2f}'} |")
    return "\n".join(out)


def fit(run: Run, run_dir: Path, *, params, optim_cfg: dict, sampler_cfg: dict, mixup_alpha: float = 0.0,
        mixup_until: Optional[int] = None, stage: int = 1, start_ckpt: Optional[dict] = None,
        batch_size: Optional[int] = None, loader=None, train_model: Optional[nn.Module] = None) -> dict:
    """Run the epochs of one stage: schedules, steps, evaluation, logs and checkpoints.

    ``loader`` may be built beforehand (to check the sampler before a run folder exists).
    ``train_model`` is what the training step runs on the loader's batches (default ``run.model``;
    stage 2 on cached features passes the head alone); evaluation always runs ``run.model``.
    Returns the final-epoch metrics on ``eval.split``.
    """
    cfg, device = run.cfg, run.device
    epochs = int(optim_cfg["epochs"])
    seed = int(cfg["seed"])
    main = run.dist.is_main
    fused = _auto(cfg["fused_optimizer"], device.type == "cuda")
    graph = _auto(cfg["cuda_graph"], device.type == "cuda" and not run.dist.enabled)
    optimizer = make_optimizer(params, optim_cfg, device, fused or graph, lr_at(0, optim_cfg))
    if loader is None:
        loader = make_train_loader(run, sampler_cfg, epochs, seed, batch_size)
    mix = MixupSchedule(mixup_alpha, device) if mixup_alpha > 0 else None
    model = run.model if train_model is None else train_model
    if run.dist.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None)
    if cfg["compile"]:
        model = torch.compile(model)
    step = TrainStep(model, run.loss_fn, optimizer, amp_dtype=run.amp_dtype, mixup=mix, cuda_graph=graph)
    no_mix = TrainStep(model, run.loss_fn, optimizer, amp_dtype=run.amp_dtype, mixup=None, cuda_graph=graph) if mix else None
    start = 0
    if start_ckpt is not None:
        lrs = [g["lr"] for g in optimizer.param_groups]
        optimizer.load_state_dict(start_ckpt["optimizer"])
        for g, lr0 in zip(optimizer.param_groups, lrs):
            g["lr"] = lr0  # keep the device lr tensor a captured graph reads (the checkpoint's is on the CPU)
        start = int(start_ckpt["epoch"]) + 1
    log = EpochLog(run_dir, tensorboard=cfg["tensorboard"], truncate_after=start if start_ckpt else None) if main else None
    many, few = cfg["data"]["shot_thresholds"]
    every = eval_every(cfg["eval"]["every"], device, epochs)
    split = cfg["eval"]["split"]
    metrics: dict = {}
    quiet = cfg["quiet"] or not main
    try:
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            seed_everything(global_epoch_seed(seed, epoch, stage))  # a resumed run draws the same numbers
            lr = lr_at(epoch, optim_cfg)
            set_lr(optimizer, lr)
            run.loss_fn.set_progress(epoch, epochs)
            loader.set_epoch(epoch)
            use = step
            if mix is not None and (mixup_until is None or epoch < mixup_until):
                mix.start_epoch(len(loader))
            elif no_mix is not None:
                use = no_mix
            stats = train_one_epoch(use, loader, device, desc=f"stage{stage} epoch {epoch + 1}/{epochs}", quiet=quiet)
            if run.dist.enabled:
                stats["loss"] = float(dist.mean_across(torch.tensor(stats["loss"], device=device), run.dist))
            last_saved = epoch - 1 if (epoch > start or start_ckpt is not None) else None  # last.pt's epoch
            if not math.isfinite(stats["loss"]):
                raise DivergenceError(
                    f"training loss is {stats['loss']} in epoch {epoch} (stage {stage}, loss "
                    f"'{type(run.loss_fn).__name__}', lr {lr:g}); {kept_message(run_dir, last_saved)}"
                )
            check_finite_state(run.model, optimizer, epoch=epoch, stage=stage, lr=lr, run_dir=run_dir,
                               last_saved=last_saved, info=run.dist)  # never log or save a non-finite state
            train_s = time.perf_counter() - t0
            row = {"epoch": epoch, "stage": stage, "lr": lr, "train_loss": stats["loss"], "train_seconds": train_s,
                   "images_per_second": stats["images"] / max(train_s, 1e-9)}
            if (epoch + 1) % every == 0 or epoch == epochs - 1:
                metrics, _ = evaluate(run.model, run.loss_fn, eval_batches(run, split), run.bundle.class_counts,
                                      amp=run.amp_dtype, many=many, few=few, feature_norms=cfg["eval"]["feature_norms"])
                row.update({f"{split}.{k}": metrics[k] for k in ("top1", "many", "medium", "few", "nll", "ece")})
                if "feature_norm" in metrics:
                    row[f"{split}.feature_norm"] = metrics.pop("feature_norm")
            row["seconds"] = time.perf_counter() - t0
            if not main:
                continue
            log.write(row)
            if not quiet or epoch == epochs - 1 or (epoch + 1) % max(1, epochs // 10) == 0:
                msg = f"[stage {stage}] epoch {epoch + 1}/{epochs} lr {lr:.4g} loss {stats['loss']:.4f}"
                if f"{split}.top1" in row:
                    msg += " | " + _headline(metrics)
                tqdm.write(msg)
            save_atomic({"model": run.model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                         "stage": stage, "seed": seed}, run_dir / "last.pt")  # CheckpointError: the previous one is intact
    finally:
        if log is not None:
            log.close()
    if not metrics:  # resumed after the last epoch had finished
        metrics, _ = evaluate(run.model, run.loss_fn, eval_batches(run, split), run.bundle.class_counts,
                              amp=run.amp_dtype, many=many, few=few)
    return metrics


def make_run_dir(run: Run, name: str) -> Path:
    """Create the run folder (rank 0) and save the resolved config; every rank gets the path.

    An existing folder is an error on every rank (never overwritten)."""
    result = None
    if run.dist.is_main:
        try:
            run_dir = new_run_dir(run.cfg["output_dir"], name)  # locked for this process
            try:
                save_config(run.cfg, run_dir / "config.yaml")
            except OSError as err:
                raise CheckpointError(f"cannot write {run_dir / 'config.yaml'}: {err.strerror or err}") from None
            result = ("ok", str(run_dir))
        except (ConfigError, CheckpointError) as err:
            result = (type(err).__name__, str(err))
    result = dist.broadcast_object(result, run.dist)
    if result[0] != "ok":
        raise (CheckpointError if result[0] == "CheckpointError" else ConfigError)(result[1])
    return Path(result[1])


def finish(run: Run, run_dir: Path, metrics: dict, wall: float, stage: int, epochs: int, extra: Optional[dict] = None) -> dict:
    """Write ``metrics.json`` with provenance (rank 0) and return it."""
    out = dict(metrics)
    out.update({"epoch": epochs - 1, "checkpoint": run.cfg["eval"]["checkpoint"], "split": run.cfg["eval"]["split"],
                "stage": stage, "seed": run.cfg["seed"], "recipe": run.cfg.get("recipe"), "wall_time_s": wall,
                "versions": software_versions(), "git_commit": git_commit(), "device": str(run.device),
                "machine": machine_line(), "precision": precision_label(run.amp_dtype, run.channels_last),
                "argv": command_line()})
    if extra:
        out.update(extra)
    annotate_metrics(out, run.bundle)  # class names in per_class, the data's report (hold-out, skipped files)
    if run.dist.enabled:
        out["world_size"] = run.dist.world_size
    if run.dist.is_main:
        write_json(out, run_dir / "metrics.json")
    return out


def _check_resume_checkpoint(ckpt: dict, path: Path, cfg: dict) -> None:
    """A checkpoint that cannot belong to this run's config is an error, not a silent restart."""
    epochs = int(cfg["optim"]["epochs"])
    if int(ckpt["epoch"]) >= epochs:
        raise CheckpointError(f"{path} is from epoch {ckpt['epoch']} but the run's config.yaml has optim.epochs={epochs} "
                              f"(epochs count from 0); the checkpoint and config.yaml do not belong together")
    if "seed" in ckpt and ckpt["seed"] != cfg["seed"]:
        raise CheckpointError(f"{path} was trained with seed {ckpt['seed']} but the run's config.yaml has "
                              f"seed {cfg['seed']}; the checkpoint and config.yaml do not belong together")


def train(cfg: dict, resume: Optional[Path] = None, quiet: Optional[bool] = None) -> tuple[Path, dict]:
    """Train stage 1 as configured (the ``longtail train`` command).

    Args:
        cfg: A resolved config (:func:`longtail.config.load_config`).
        resume: A run folder to continue; its saved config is used and ``cfg`` ignored.
        quiet: Override the config's ``quiet`` (the only setting a resumed run may change).

    Returns:
        The run folder and the final metrics.
    """
    t0 = time.perf_counter()
    ckpt = None
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise CheckpointError(f"{run_dir} is not a longtail run folder (no config.yaml)")
        main = dist.from_env().is_main
        if main:
            lock_run_dir(run_dir)  # one process per run folder (names the holder's PID); removes stale .tmp files
        cfg = load_saved_config(run_dir / "config.yaml")  # checked against the schema
        ckpt_path = run_dir / "last.pt"
        if ckpt_path.exists():
            ckpt = load_checkpoint(ckpt_path)
            if int(ckpt.get("stage", 1)) != 1:
                raise CheckpointError(f"{ckpt_path} is a stage-{ckpt.get('stage')} checkpoint; resume it with longtail retrain")
            _check_resume_checkpoint(ckpt, ckpt_path, cfg)
        # the log holds exactly the checkpoint's epochs (none without one); a half-written line is dropped
        prior = sync_log(run_dir, ckpt["epoch"] if ckpt else None) if main else read_log(run_dir)
        t0 -= sum(r.get("seconds", 0.0) for r in prior if ckpt and r.get("epoch", 1 << 30) <= ckpt["epoch"])
    if quiet is not None:
        cfg["quiet"] = bool(quiet)
    if cfg["deterministic"]:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
    seed_everything(int(cfg["seed"]))
    run = build(cfg)
    loader = make_train_loader(run, cfg["sampler"], cfg["optim"]["epochs"], int(cfg["seed"]))  # checked before a folder exists
    if resume is None:
        run_dir = make_run_dir(run, cfg["name"] or default_run_name(cfg))
    if ckpt is not None:
        load_model_state(run.model, ckpt["model"], run_dir / "last.pt")
    metrics = fit(run, run_dir, params=[p for p in run.model.parameters() if p.requires_grad], optim_cfg=cfg["optim"],
                  sampler_cfg=cfg["sampler"], mixup_alpha=float(cfg["mixup"]["alpha"]), mixup_until=cfg["mixup"]["until_epoch"],
                  stage=1, start_ckpt=ckpt, loader=loader)
    out = finish(run, run_dir, metrics, time.perf_counter() - t0, 1, cfg["optim"]["epochs"])
    dist.barrier(run.dist)
    release_run_dir(run_dir)  # the run is complete (on errors the lock goes with the process)
    return run_dir, out
