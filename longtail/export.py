"""``longtail export RUN_DIR --format onnx|torchscript [--out PATH]``.

Writes the run's final model (as :func:`longtail.predict.load_run` finds it: stage 2 when a
stage-2 run exists) as a module mapping **normalized** images ``(N, 3, S, S)`` (float32) to the
**evaluation logits** ``(N, C)``: the head output passed through the loss's ``predict`` (so a
cosine head's scale, an LWS head's scales and a tau-normalized head are included). The batch size
is dynamic. Next to the model, ``PATH.json`` records what a caller needs: class names, input
size, mean / std and the resize of the run's evaluation preprocessing.

ONNX needs the ``onnx`` package (``pip install longtail[export]``); the file is checked with
``onnx.checker``. TorchScript uses ``torch.jit.trace``.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional

import torch

from .errors import LongTailError
from .predict import LoadedRun, load_run

FORMATS = ("onnx", "torchscript")
OPSET = 18


def _metadata(loaded: LoadedRun, fmt: str, path: Path) -> dict:
    pre = loaded.preprocess
    return {
        "format": fmt,
        "file": path.name,
        "run": str(loaded.run_dir),
        "model_run": str(loaded.model_dir),
        "stage": loaded.stage,
        "input": {"name": "images", "shape": ["batch", 3, loaded.image_size, loaded.image_size], "dtype": "float32",
                  "normalized": True, "mean": pre["mean"], "std": pre["std"], "preprocess": pre},
        "output": {"name": "logits", "shape": ["batch", len(loaded.class_names)],
                   "meaning": "evaluation logits (softmax gives the class probabilities)"},
        "class_names": loaded.class_names,
    }


def export_run(run_dir: Path, fmt: str = "onnx", out: Optional[Path] = None, prefer_stage2: bool = True) -> Path:
    """Export a run folder's final model; returns the written path (metadata in ``PATH.json``)."""
    if fmt not in FORMATS:
        raise LongTailError(f"export format '{fmt}' unknown; valid: {', '.join(FORMATS)}")
    loaded = load_run(Path(run_dir), prefer_stage2=prefer_stage2)
    module = loaded.module.eval()
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    path = Path(out) if out else loaded.model_dir / f"model{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    s = loaded.image_size
    example = torch.randn(2, 3, s, s)
    if fmt == "onnx":
        try:
            import onnx
        except ImportError:
            raise LongTailError("ONNX export needs the onnx package: pip install -e '.[export]' "
                                "(onnx, onnxruntime)") from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(path), input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=OPSET,
                              dynamo=False, do_constant_folding=True)
        onnx.checker.check_model(onnx.load(str(path)))
    else:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, example, check_trace=False)
        traced.save(str(path))
    meta = Path(str(path) + ".json")
    meta.write_text(json.dumps(_metadata(loaded, fmt, path), indent=1))
    return path


def main_export(run_dir: str, fmt: str, out: Optional[str] = None, stage1: bool = False) -> Path:
    """The ``longtail export`` command."""
    path = export_run(Path(run_dir), fmt, Path(out) if out else None, prefer_stage2=not stage1)
    meta = json.loads(Path(str(path) + ".json").read_text())
    if meta["model_run"] != meta["run"]:
        print(f"longtail: using the stage-2 model of {meta['model_run']}")
    n = meta["input"]["shape"][2]
    print(f"wrote {path} ({fmt}): normalized images (N, 3, {n}, {n}) -> logits (N, {len(meta['class_names'])}); "
          f"metadata {path}.json")
    return path
