"""Use a finished run: load its final model, classify images (``longtail predict``).

:func:`load_run` rebuilds a run folder's final model without its training data:

* a stage-1 folder with a stage-2 run made from it (``longtail retrain``, a sibling folder whose
  ``metrics.json`` names it as ``stage1_run``) gives the stage-2 model (the latest one; pass
  ``prefer_stage2=False`` for stage 1);
* stage 2 ``crt`` / ``lws``: the stage-2 checkpoint and loss; ``tau_norm``: the stage-1 checkpoint
  with the tau-normalized head (tau from ``metrics.json``); ``none``: the stage-1 model;
* class names, training counts and the preprocessing (resize, crop, mean, std) come from
  ``metrics.json`` (``data``), or from the dataset when the run predates it.

:class:`EvalLogits` maps normalized images to the evaluation logits: the head output passed
through the loss's ``predict`` (``s * cos`` for cosine losses, LWS scales and tau-normalization in
the head). ``longtail export`` writes exactly this module.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
from torch import Tensor, nn

from .errors import CheckpointError, DataError, LongTailError
from .report import read_metrics

__all__ = ["LoadedRun", "EvalLogits", "load_run", "find_stage2", "preprocess_image", "collect_images", "predict",
           "write_predictions"]


class EvalLogits(nn.Module):
    """``images (N, 3, H, W), normalized -> evaluation logits (N, C)``."""

    def __init__(self, model: nn.Module, loss_fn: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, images: Tensor) -> Tensor:
        out = self.model(images)
        return self.loss_fn.predict(out.logits, out.features)


@dataclass
class LoadedRun:
    """A run folder's final model, ready for inference (CPU, eval mode)."""

    run_dir: Path
    model_dir: Path          # the folder whose model is used (a stage-2 run of run_dir, or run_dir)
    cfg: dict
    stage: int
    module: EvalLogits
    class_names: List[str]
    class_counts: List[int]
    preprocess: Dict[str, Any]
    note: str = ""

    @property
    def image_size(self) -> int:
        return int(self.preprocess["image_size"])


def find_stage2(run_dir: Path) -> Optional[Path]:
    """The latest finished stage-2 run made from the stage-1 run ``run_dir`` (a sibling folder), or None."""
    run_dir = Path(run_dir).resolve()
    found = []
    parent = run_dir.parent
    if not parent.is_dir():
        return None
    for cand in parent.iterdir():
        if cand == run_dir or not (cand / "metrics.json").is_file():
            continue
        try:
            m = read_metrics(cand)
        except DataError:  # some other folder's broken file: not a stage-2 run of this one
            continue
        src = m.get("stage1_run")
        if int(m.get("stage", 1) or 1) == 2 and src:
            try:
                same = _stage1_dir(cand, src).resolve() == run_dir
            except (OSError, CheckpointError):
                same = False
            if same:
                found.append(((cand / "metrics.json").stat().st_mtime_ns, str(cand)))
    return Path(max(found)[1]) if found else None


def _stage1_dir(stage2_dir: Path, recorded: Optional[str]) -> Path:
    """The stage-1 folder a stage-2 run names (as given then: relative paths may be relative to
    another working folder, so a sibling of the same name is tried too)."""
    if not recorded:
        raise CheckpointError(f"{stage2_dir / 'metrics.json'} does not name its stage-1 run")
    p = Path(recorded)
    if (p / "config.yaml").is_file():
        return p
    sibling = stage2_dir.parent / p.name
    if (sibling / "config.yaml").is_file():
        return sibling
    raise CheckpointError(f"stage-1 run {recorded} of {stage2_dir} not found")


def _data_info(cfg: dict, metrics: Optional[dict]) -> dict:
    info = (metrics or {}).get("data")
    if isinstance(info, dict) and "preprocess" in info and "class_names" in info and "class_counts" in info:
        return info
    # a run without the data report: rebuild the dataset description (reads the data)
    from .data import build_datasets
    from .data.folder import data_summary

    return data_summary(build_datasets(cfg["data"]))


def load_run(run_dir: Path, prefer_stage2: bool = True, device: str = "cpu") -> LoadedRun:
    """Load a finished run folder's final model (see the module docstring).

    Raises:
        CheckpointError: Not a run folder, no checkpoint, or a checkpoint that does not fit.
    """
    from .config import load_saved_config
    from .engine.checkpoint import load_checkpoint, load_model_state
    from .losses import build_loss
    from .models import LWSHead, build_model, tau_normalize

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir} is not a longtail run folder (no config.yaml)")
    note = ""
    model_dir = run_dir
    cfg = load_saved_config(run_dir / "config.yaml")
    metrics = read_metrics(run_dir, missing_ok=True)
    stage = int((metrics or {}).get("stage", 1) or 1)
    if stage == 1 and prefer_stage2:
        s2 = find_stage2(run_dir)
        if s2 is not None:
            model_dir = s2
            cfg = load_saved_config(s2 / "config.yaml")
            metrics = read_metrics(s2, missing_ok=True)
            stage = 2
            note = f"using the stage-2 model of {s2}"
    info = _data_info(cfg, metrics)
    counts = [int(c) for c in info["class_counts"]]
    names = [str(n) for n in info["class_names"]]
    m = cfg["model"]
    model = build_model(m["backbone"], m["head"], len(counts), head_params=m["head_params"])
    method = (metrics or {}).get("stage2_method", cfg["stage2"]["method"]) if stage == 2 else None
    if stage == 2 and method in ("tau_norm", "none"):
        ckpt_path = _stage1_dir(model_dir, (metrics or {}).get("stage1_run")) / "last.pt"
    else:
        ckpt_path = model_dir / "last.pt"
    ckpt = load_checkpoint(ckpt_path)
    if stage == 2 and method in ("crt", "lws"):
        s2c = cfg["stage2"]
        loss_fn = build_loss(s2c["loss"]["name"], counts, **s2c["loss"]["params"])
        if method == "lws":
            model.head = LWSHead.from_head(model.head)
    else:
        loss_fn = build_loss(cfg["loss"]["name"], counts, **cfg["loss"]["params"])
    load_model_state(model, ckpt["model"], ckpt_path)
    if stage == 2 and method == "tau_norm":
        tau = (metrics or {}).get("tau")
        if tau is None:
            raise CheckpointError(f"{model_dir / 'metrics.json'} has no tau (tau-normalization run not finished?)")
        model.head = tau_normalize(model.head, float(tau))
        loss_fn = build_loss("ce", counts)
    module = EvalLogits(model, loss_fn).to(device).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return LoadedRun(run_dir, model_dir, cfg, stage, module, names, counts, dict(info["preprocess"]), note)


# -- images -------------------------------------------------------------------------------------


def collect_images(inputs: Sequence[str]) -> List[Path]:
    """Image files named on the command line; folders are searched recursively (sorted)."""
    from .data.folder import IMAGE_EXTENSIONS

    out: List[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS
                           and not q.name.startswith("."))
            if not found:
                raise DataError(f"no image files in folder {p}")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"image or folder not found: {p}")
    return out


def preprocess_image(path: Path, pre: Dict[str, Any]) -> Tensor:
    """The evaluation preprocessing of the run: an image file -> normalized tensor (3, S, S)."""
    from torchvision import transforms as T

    from .data.folder import load_rgb, resize_square

    img, _ = load_rgb(path)
    size = int(pre["image_size"])
    if pre.get("kind") == "small":
        img = resize_square(img, size)
        ops = []
    else:
        ops = [T.Resize(int(round(size * 256 / 224))), T.CenterCrop(size)]
    tf = T.Compose(ops + [T.ToTensor(), T.Normalize(pre["mean"], pre["std"])])
    return tf(img)


@torch.inference_mode()
def predict(loaded: LoadedRun, files: Sequence[Path], topk: int = 5, batch_size: int = 64) -> List[dict]:
    """Top-k classes and softmax probabilities of each image."""
    if topk < 1:
        raise LongTailError(f"--topk must be >= 1, got {topk}")
    k = min(int(topk), len(loaded.class_names))
    rows = []
    device = next(loaded.module.parameters()).device
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        x = torch.stack([preprocess_image(f, loaded.preprocess) for f in chunk]).to(device)
        prob = torch.softmax(loaded.module(x).float(), dim=1)
        p, i = prob.topk(k, dim=1)
        for f, pp, ii in zip(chunk, p.tolist(), i.tolist()):
            rows.append({"file": str(f), "top": [{"rank": r + 1, "class": loaded.class_names[c], "index": int(c),
                                                   "probability": float(q)} for r, (q, c) in enumerate(zip(pp, ii))]})
    return rows


def format_predictions(rows: Iterable[dict]) -> str:
    lines = []
    for row in rows:
        top = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in row["top"])
        lines.append(f"{row['file']}: {top}")
    return "\n".join(lines)


def write_predictions(rows: List[dict], out: Path) -> Path:
    """Write predictions as CSV (one line per image and rank) or JSON, by the file's suffix."""
    out = Path(out)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        out.write_text(json.dumps(rows, indent=1))
    elif out.suffix.lower() == ".csv":
        with open(out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "rank", "class", "index", "probability"])
            for row in rows:
                for t in row["top"]:
                    w.writerow([row["file"], t["rank"], t["class"], t["index"], f"{t['probability']:.6f}"])
    else:
        raise LongTailError(f"--out must end in .csv or .json, got {out}")
    return out


def main_predict(run_dir: str, inputs: Sequence[str], topk: int = 5, out: Optional[str] = None,
                 stage1: bool = False) -> List[dict]:
    """The ``longtail predict`` command: print (and optionally write) the predictions."""
    loaded = load_run(Path(run_dir), prefer_stage2=not stage1)
    if loaded.note:
        print(f"longtail: {loaded.note}", flush=True)
    rows = predict(loaded, collect_images(inputs), topk=topk)
    print(format_predictions(rows))
    if out:
        path = write_predictions(rows, Path(out))
        print(f"predictions: {path}")
    return rows
