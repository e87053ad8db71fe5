"""``longtail eval``: evaluate a run folder's checkpoint on a dataset split."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from ..config import load_config, load_saved_config
from ..data.folder import annotate_metrics
from ..errors import CheckpointError
from ..losses import build_loss
from ..models import LWSHead
from .checkpoint import load_checkpoint, load_model_state
from .runlog import write_json
from .build import build
from .loaders import eval_batches
from .loops import evaluate


def evaluate_run(run_dir: Path, *, split: Optional[str] = None, checkpoint: Optional[Path] = None,
                 overrides: Iterable[str] = (), out: Optional[Path] = None) -> dict:
    """Evaluate ``run_dir/last.pt`` (or ``checkpoint``) on ``split`` with the run's config.

    ``overrides`` may point the run at other data (e.g. ``data.root=...``); a checkpoint that
    does not fit the model raises CheckpointError naming the keys.
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise CheckpointError(f"{run_dir} is not a longtail run folder (no config.yaml)")
    cfg = load_config(base=load_saved_config(cfg_path), overrides=list(overrides))
    ckpt_path = Path(checkpoint) if checkpoint else run_dir / "last.pt"
    ckpt = load_checkpoint(ckpt_path)
    run = build(cfg)
    stage = int(ckpt.get("stage", 1))
    if stage == 2:
        s2 = cfg["stage2"]
        run.loss_fn = build_loss(s2["loss"]["name"], run.bundle.class_counts, **s2["loss"]["params"]).to(run.device)
        if s2["method"] == "lws":
            run.model.head = LWSHead.from_head(run.model.head).to(run.device)
    if stage == 2 and cfg["stage2"]["method"] == "tau_norm":
        raise CheckpointError(f"{run_dir} is a tau-normalization run; its metrics.json holds the evaluation")
    load_model_state(run.model, ckpt["model"], ckpt_path)
    split = split or cfg["eval"]["split"]
    many, few = cfg["data"]["shot_thresholds"]
    metrics, _ = evaluate(run.model, run.loss_fn, eval_batches(run, split), run.bundle.class_counts,
                          amp=run.amp_dtype, many=many, few=few)
    metrics.update({"split": split, "checkpoint": str(ckpt_path), "epoch": int(ckpt["epoch"]), "stage": stage})
    annotate_metrics(metrics, run.bundle)  # class names in per_class and the data report, as in metrics.json
    if out is not None:
        write_json(metrics, Path(out))
    return metrics
