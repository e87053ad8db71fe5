"""The run folder: resolved config, per-epoch metrics, checkpoints, final metrics.

Layout of ``output_dir/name/``::

    config.yaml      resolved config (what was run)
    log.jsonl        one JSON object per epoch (train loss, lr, seconds, eval metrics)
    last.pt          checkpoint of the latest finished epoch (atomic, every epoch)
    metrics.json     final-epoch evaluation + provenance (seed, versions, git commit, wall time)
    tb/              TensorBoard scalars (when the tensorboard package is installed)
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..errors import ConfigError


def software_versions() -> dict:
    import torchvision

    import longtail

    out = {
        "longtail": longtail.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    return out


def git_commit() -> Optional[str]:
    """The commit of the longtail source tree, with ``-dirty`` when it has changes; None outside git."""
    here = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def default_run_name(cfg: dict, stage: int = 1) -> str:
    recipe = (cfg.get("recipe") or cfg["loss"]["name"]).replace("/", "-")
    base = f"{recipe}-{cfg['data']['name']}-seed{cfg['seed']}"
    return base if stage == 1 else f"{base}-stage2-{cfg['stage2']['method']}"


def new_run_dir(output_dir: str | Path, name: str) -> Path:
    """Create a fresh run folder; an existing one is never overwritten."""
    run = Path(output_dir) / name
    if run.exists() and any(run.iterdir()):
        raise ConfigError(
            f"run folder {run} already exists; pick another name (name=...), resume it with "
            f"--resume {run}, or remove it"
        )
    run.mkdir(parents=True, exist_ok=True)
    return run


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(obj: Any, path: Path) -> None:
    """Write JSON atomically (NaN/inf become null)."""
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w") as f:
        json.dump(_clean(obj), f, indent=1)
    os.replace(tmp, path)


class EpochLog:
    """Appends one JSON line per epoch and mirrors scalars to TensorBoard when available."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, truncate_after: Optional[int] = None) -> None:
        self.path = Path(run_dir) / "log.jsonl"
        if truncate_after is not None and self.path.exists():
            # On resume keep only the epochs the checkpoint covers.
            lines = [l for l in self.path.read_text().splitlines() if l.strip()]
            keep = [l for l in lines if json.loads(l).get("epoch", -1) < truncate_after]
            self.path.write_text("".join(l + "\n" for l in keep))
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tb"))
            except Exception:  # tensorboard not installed: the JSONL log is the record
                self.tb = None

    def write(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(_clean(row)) + "\n")
        if self.tb is not None:
            step = row.get("epoch", 0)
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch" and v is not None and math.isfinite(v):
                    self.tb.add_scalar(k.replace(".", "/"), v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_log(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
