"""``fit`` and ``train``: the epochs of a stage, with the run folder, logs and checkpoints.

The pieces are each in one place: :mod:`~longtail.engine.build` turns a config into a
:class:`~longtail.engine.build.Run`, :mod:`~longtail.engine.loaders` gives the batches,
:mod:`~longtail.engine.loops` holds the flat ``train_one_epoch`` / ``evaluate`` loops. Here
``fit`` runs the epochs of one stage -- learning-rate schedule, the loss's ``set_progress`` hook
(DRW, the KPS gradient-adjustment switch, the FBL curriculum), evaluation, the log and the
checkpoint -- and ``train`` is the ``longtail train`` entry (stage 1, new or resumed). Methods
plug in as a head, a loss, a sampler and that hook -- never as a forked loop.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import load_saved_config, save_config, saved_command
from ..data.folder import annotate_metrics
from ..errors import CheckpointError, ConfigError, DivergenceError
from ..report import headline
from ..seeding import global_epoch_seed, seed_everything
from . import distributed as dist
from .build import Run, build
from .checkpoint import check_finite_state, kept_message, load_checkpoint, load_model_state, save_atomic
from .loaders import eval_batches, make_train_loader
from .loops import evaluate, train_one_epoch
from .precision import auto_flag, precision_label
from .runlog import (EpochLog, command_line, default_run_name, git_commit, lock_run_dir, machine_line, new_run_dir,
                     read_log, release_run_dir, software_versions, sync_log, write_json)
from .schedule import lr_at
from .step import MixupSchedule, TrainStep

__all__ = ["fit", "train", "finish", "make_run_dir", "make_optimizer", "make_train_steps", "set_lr", "eval_every"]


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
    """Set every group's learning rate (in place where it is a tensor a captured graph reads)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)  # in place: a captured graph reads this tensor
        else:
            group["lr"] = lr


def make_train_steps(run: Run, params, optim_cfg: dict, mixup_alpha: float = 0.0,
                     train_model: Optional[nn.Module] = None) -> Tuple[TrainStep, Optional[TrainStep]]:
    """The training step of a stage as :func:`fit` runs it, and its mixup-free twin (None without mixup).

    The optimizer (fused / graph-capturable where the config asks), mixup, DDP, ``compile`` and CUDA
    graph capture are chosen here from ``run.cfg``; the step holds the optimizer (``step.optimizer``).
    """
    cfg, device = run.cfg, run.device
    fused = auto_flag(cfg["fused_optimizer"], device.type == "cuda")
    graph = auto_flag(cfg["cuda_graph"], device.type == "cuda" and not run.dist.enabled)
    optimizer = make_optimizer(params, optim_cfg, device, fused or graph, lr_at(0, optim_cfg))
    mix = MixupSchedule(mixup_alpha, device) if mixup_alpha > 0 else None
    model = run.model if train_model is None else train_model
    if run.dist.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None)
    if cfg["compile"]:
        model = torch.compile(model)
    step = TrainStep(model, run.loss_fn, optimizer, amp_dtype=run.amp_dtype, mixup=mix, cuda_graph=graph)
    no_mix = TrainStep(model, run.loss_fn, optimizer, amp_dtype=run.amp_dtype, mixup=None, cuda_graph=graph) if mix else None
    return step, no_mix


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
    step, no_mix = make_train_steps(run, params, optim_cfg, mixup_alpha, train_model)
    optimizer, mix = step.optimizer, step.mixup
    if loader is None:
        loader = make_train_loader(run, sampler_cfg, epochs, seed, batch_size)
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
                    msg += " | " + headline(metrics)
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
                save_config(run.cfg, run_dir / "config.yaml", command=command_line())
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
    """Write ``metrics.json`` with provenance (rank 0) and return it.

    ``argv`` is the command that created the run (from its ``config.yaml``); a resumed run adds the
    command that finished it as ``resumed_with``.
    """
    out = dict(metrics)
    now = command_line()
    argv = saved_command(run_dir / "config.yaml") or now
    out.update({"epoch": epochs - 1, "checkpoint": run.cfg["eval"]["checkpoint"], "split": run.cfg["eval"]["split"],
                "stage": stage, "seed": run.cfg["seed"], "recipe": run.cfg.get("recipe"), "wall_time_s": wall,
                "versions": software_versions(), "git_commit": git_commit(), "device": str(run.device),
                "machine": machine_line(), "precision": precision_label(run.amp_dtype, run.channels_last),
                "argv": argv})
    if argv != now:
        out["resumed_with"] = now
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
