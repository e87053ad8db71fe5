"""Stage 2: re-balancing the classifier on a frozen backbone (``longtail retrain``).

Starts from a finished stage-1 run folder (its ``config.yaml`` and ``last.pt``) and writes a new
run folder. Methods (``stage2.method``):

* ``crt`` -- classifier re-training (Kang et al. 2020) with any sampler and loss; ``reinit``
  re-initializes the head (Kang et al.) or fine-tunes the stage-1 head (the GCL code,
  Algorithm 5.1 of the thesis, with the CBEN sampler and GCL loss m = 0.1, s = 20, focal gamma 1).
* ``lws`` -- learnable weight scaling: only a per-class scale of the frozen head is trained.
* ``tau_norm`` -- tau-normalization of a linear head, no training; tau swept over
  ``stage2.tau_grid`` on saved features and chosen on the ``val`` split (on the test split only
  when the dataset has none, and then labelled ``tau_selected_on: test``), or fixed by ``stage2.tau``.
* ``none`` -- evaluate the stage-1 model as it is (the "no re-training" row of Table 5.6).

The backbone's weights never change; its BatchNorm statistics stay frozen (``bn: frozen``) or are
re-estimated once on the training data before re-training (``bn: reestimate``, MiSLAS).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable

import torch

from ..config import load_config, load_saved_config
from ..errors import CheckpointError, ConfigError
from ..losses import build_loss
from ..models import LWSHead, tau_normalize
from ..seeding import seed_everything
from .checkpoint import load_checkpoint, load_model_state
from .features import FeatureLoader, HeadOnly, compute_features, use_feature_cache
from .metrics import Accumulator
from .runlog import default_run_name
from .build import Run, build, check_loss_head
from .loaders import eval_batches, make_train_loader, train_batch_size
from .loops import evaluate
from .trainer import finish, fit, make_run_dir

METHODS = ("crt", "lws", "tau_norm", "none")
#: The methods that train nothing, with the only ``stage2`` keys that decide what they compute
#: (their lr, epochs, sampler, loss ... are never used).
UNTRAINED_STAGE2 = {"none": ("stage2.method", "stage2.bn"),
                    "tau_norm": ("stage2.method", "stage2.bn", "stage2.tau", "stage2.tau_grid")}


def load_stage1(stage1_dir: Path) -> tuple[dict, dict]:
    """Read a stage-1 run folder; an unfinished or foreign folder raises CheckpointError."""
    stage1_dir = Path(stage1_dir)
    cfg_path = stage1_dir / "config.yaml"
    if not cfg_path.is_file():
        raise CheckpointError(f"{stage1_dir} is not a longtail run folder (no config.yaml)")
    cfg = load_saved_config(cfg_path)
    ckpt = load_checkpoint(stage1_dir / "last.pt")
    if int(ckpt.get("stage", 1)) != 1:
        raise CheckpointError(f"{stage1_dir / 'last.pt'} is a stage-{ckpt.get('stage')} checkpoint, not stage 1")
    epochs = int(cfg["optim"]["epochs"])
    if int(ckpt["epoch"]) != epochs - 1:
        raise CheckpointError(
            f"stage-1 run {stage1_dir} stopped after epoch {int(ckpt['epoch']) + 1} of {epochs}; "
            f"finish it first with: longtail train --resume {stage1_dir}"
        )
    return cfg, ckpt


@torch.no_grad()
def reestimate_bn(run: Run, loader: Iterable) -> None:
    """Recompute every BatchNorm's running statistics as a cumulative average over ``loader``."""
    bns = [m for m in run.model.backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for x, _ in loader:
        run.model.backbone(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
        m.eval()


def tau_sweep(run: Run, split: str, grid: list[float], many: int, few: int) -> list[dict]:
    """Metrics of the tau-normalized head for each tau, from features computed once."""
    _, outs = evaluate(run.model, run.loss_fn, eval_batches(run, split), run.bundle.class_counts,
                       amp=run.amp_dtype, many=many, few=few, keep_logits=True)
    feats, targets = outs["features"], outs["targets"]  # one pass over the split
    rows = []
    for tau in grid:
        head = tau_normalize(run.model.head, float(tau)).to(feats.device)
        acc = Accumulator()
        with torch.no_grad():
            acc.update(head(feats), targets)
        m = acc.compute(run.bundle.class_counts, many=many, few=few)
        rows.append({"tau": float(tau), **{k: m[k] for k in ("top1", "many", "medium", "few")}})
    return rows


def retrain(stage1_dir: Path, overrides: Iterable[str] = ()) -> tuple[Path, dict]:
    """Re-train (or re-normalize) the classifier of a finished stage-1 run.

    Args:
        stage1_dir: The stage-1 run folder.
        overrides: Dotted overrides, e.g. ``stage2.method=lws``, ``stage2.sampler.name=cben``.

    Returns:
        The stage-2 run folder and its final metrics.
    """
    t0 = time.perf_counter()
    stage1_dir = Path(stage1_dir)
    s1cfg, ckpt = load_stage1(stage1_dir)
    cfg = load_config(base=s1cfg, overrides=list(overrides))
    s2 = cfg["stage2"]
    if s2["method"] not in METHODS:
        raise ConfigError(f"stage2.method '{s2['method']}' unknown; valid: {', '.join(METHODS)}")
    if s2["bn"] not in ("frozen", "reestimate"):
        raise ConfigError(f"stage2.bn '{s2['bn']}' unknown; valid: frozen, reestimate")
    if cfg["model"] != s1cfg["model"]:
        raise CheckpointError(f"stage 2 must use the stage-1 model of {stage1_dir}; do not override model.*")
    seed_everything(int(cfg["seed"]))
    run = build(cfg)
    load_model_state(run.model, ckpt["model"], stage1_dir / "last.pt")
    method = s2["method"]
    # everything that can be wrong with the stage-2 settings is found before a run folder exists
    if method == "tau_norm" and cfg["model"]["head"] not in ("linear", "cosine"):
        raise ConfigError(f"stage2.method=tau_norm needs a linear or cosine head; the stage-1 run has "
                          f"model.head={cfg['model']['head']}")
    if method in ("crt", "lws"):
        loss2 = build_loss(s2["loss"]["name"], run.bundle.class_counts, **s2["loss"]["params"]).to(run.device)
        check_loss_head(loss2, run.model, "lws" if method == "lws" else cfg["model"]["head"])
        loader2 = make_train_loader(run, s2["sampler"], int(s2["epochs"]), int(cfg["seed"]), s2["batch_size"])
        cache = use_feature_cache(s2["cache_features"], run.bundle.augment, float(s2["mixup_alpha"]))
    name = cfg["name"] if cfg["name"] and cfg["name"] != s1cfg.get("name") else default_run_name(cfg, stage=2)
    cfg["name"] = name
    run_dir = make_run_dir(run, name)
    backbone_before = {k: v.clone() for k, v in run.model.backbone.state_dict().items()}
    many, few = cfg["data"]["shot_thresholds"]
    extra: dict = {"stage1_run": str(stage1_dir), "stage2_method": method}
    epochs = 1

    if s2["bn"] == "reestimate":
        loader = make_train_loader(run, {"name": "instance", "params": {}}, 1, int(cfg["seed"]))
        loader.set_epoch(0)
        reestimate_bn(run, loader)
        backbone_before = {k: v.clone() for k, v in run.model.backbone.state_dict().items()}
    run.model.freeze_backbone(bn="frozen")

    if method == "none":
        metrics, _ = evaluate(run.model, run.loss_fn, eval_batches(run, cfg["eval"]["split"]), run.bundle.class_counts,
                              amp=run.amp_dtype, many=many, few=few)
    elif method == "tau_norm":
        # the tau-normalized head is linear: its logits are used as they are
        run.loss_fn = build_loss("ce", run.bundle.class_counts).to(run.device)
        if s2["tau"] is not None:
            tau, sel = float(s2["tau"]), "fixed"
        else:
            sel = "val" if run.bundle.val is not None else "test"
            sweep = tau_sweep(run, sel, s2["tau_grid"], many, few)
            best = max(sweep, key=lambda r: r["top1"])
            tau = best["tau"]
            extra["tau_sweep"] = sweep
        extra.update({"tau": tau, "tau_selected_on": sel})
        run.model.head = tau_normalize(run.model.head, tau).to(run.device)
        metrics, _ = evaluate(run.model, run.loss_fn, eval_batches(run, cfg["eval"]["split"]), run.bundle.class_counts,
                              amp=run.amp_dtype, many=many, few=few)
    else:
        run.loss_fn = loss2
        if method == "lws":
            run.model.head = LWSHead.from_head(run.model.head).to(run.device)
        elif s2["reinit"]:
            run.model.reset_head()
        params = [p for p in run.model.head.parameters() if p.requires_grad]
        optim_cfg = {"epochs": s2["epochs"], "lr": s2["lr"], "momentum": cfg["optim"]["momentum"],
                     "nesterov": cfg["optim"]["nesterov"], "weight_decay": s2["weight_decay"],
                     "warmup_epochs": s2["warmup_epochs"], "schedule": s2["schedule"],
                     "milestones": [], "milestone_factors": [], "min_lr": 0.0}
        epochs = int(s2["epochs"])
        head_only = None
        if cache:  # the frozen backbone's features, computed once; the head trains on them
            t_feat = time.perf_counter()
            feats, targets = compute_features(run.model, eval_batches(run, "train"), run.amp_dtype)
            loader2 = FeatureLoader(feats, targets, loader2.sampler, train_batch_size(run, s2["batch_size"]))
            head_only = HeadOnly(run.model)
            extra["feature_cache_seconds"] = time.perf_counter() - t_feat
        extra["stage2_feature_cache"] = cache
        metrics = fit(run, run_dir, params=params, optim_cfg=optim_cfg, sampler_cfg=s2["sampler"], stage=2,
                      mixup_alpha=float(s2["mixup_alpha"]), loader=loader2, train_model=head_only)

    after = run.model.backbone.state_dict()
    changed = [k for k, v in backbone_before.items() if not torch.equal(v, after[k])]
    if changed:  # a bug, never expected: say so loudly rather than report a silently changed model
        raise RuntimeError(f"stage 2 changed backbone tensors {changed[:5]}")
    return run_dir, finish(run, run_dir, metrics, time.perf_counter() - t0, 2, epochs, extra)
