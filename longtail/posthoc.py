"""Post-hoc tools on a finished run, no training (``longtail posthoc``, ``longtail eval --save-logits``).

* :func:`save_outputs` -- the evaluation logits (after the loss's ``predict``), the raw head
  outputs, the pooled features and the targets of a split, in ``MODEL_DIR/outputs-<split>.npz``.
* :func:`posthoc` -- ``logit_adjust``: ``logits - tau * log(prior)`` with the training prior
  (Menon et al. 2021); ``tau_norm``: the head's rows divided by ``||w_j||^tau``, bias dropped
  (Kang et al. 2020), applied to the saved features. ``tau`` is fixed (``--tau``) or swept over
  ``stage2.tau_grid`` and chosen by top-1 on the ``val`` split; without a val split it is chosen on
  the test split and the result says ``tau_selected_on: test`` (optimistic: it saw the test labels).
  The metrics are those of ``metrics.json`` (top-1, many / medium / few, per class, ...), written to
  ``MODEL_DIR/posthoc-<method>.json``.

Saved outputs are reused when present (``outputs-<split>.npz`` of the same model), so a post-hoc
sweep reads no image.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List, Optional

import numpy as np
import torch

from .errors import ConfigError, LongTailError
from .predict import LoadedRun, load_run

METHODS = ("logit_adjust", "tau_norm")


class _Outputs:
    """Builds the run's data once and computes (or reloads) the outputs of each split."""

    def __init__(self, loaded: LoadedRun, overrides: Iterable[str] = (), reuse: bool = True) -> None:
        self.loaded, self.overrides, self.reuse = loaded, list(overrides), reuse
        self._run = None

    @property
    def run(self):
        if self._run is None:
            from .config import load_config
            from .engine.build import build

            cfg = load_config(base=self.loaded.cfg, overrides=self.overrides)
            self._run = build(cfg)
        return self._run

    def has_val(self) -> bool:
        if self.reuse and (self.loaded.model_dir / "outputs-val.npz").is_file():
            return True
        return self.run.bundle.val is not None

    def get(self, split: str) -> Dict[str, np.ndarray]:
        path = self.loaded.model_dir / f"outputs-{split}.npz"
        if self.reuse and path.is_file() and not self.overrides:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        return self.compute(split)

    @torch.inference_mode()
    def compute(self, split: str) -> Dict[str, np.ndarray]:
        from .engine.loaders import eval_batches

        run = self.run
        module = self.loaded.module.to(run.device).eval()
        logits, raw, feats, targets = [], [], [], []
        for x, y in eval_batches(run, split):
            out = module.model(x)
            f = out.features.float()
            raw.append(out.logits.float().cpu())
            logits.append(module.loss_fn.predict(out.logits.float(), f).cpu())
            feats.append(f.cpu())
            targets.append(y.cpu())
        return {"logits": torch.cat(logits).numpy(), "raw_logits": torch.cat(raw).numpy(),
                "features": torch.cat(feats).numpy(), "targets": torch.cat(targets).numpy().astype(np.int64)}


def save_outputs(run_dir: Path, split: str = "test", overrides: Iterable[str] = (), prefer_stage2: bool = False,
                 out: Optional[Path] = None) -> Path:
    """Compute and save a split's logits, features and targets as ``.npz``; returns the path."""
    loaded = load_run(Path(run_dir), prefer_stage2=prefer_stage2)
    outs = _Outputs(loaded, overrides, reuse=False).compute(split)
    path = Path(out) if out else loaded.model_dir / f"outputs-{split}.npz"
    np.savez_compressed(path, **outs, class_names=np.asarray(loaded.class_names))
    return path


def _metrics(logits: np.ndarray, targets: np.ndarray, counts: List[int], many: int, few: int) -> dict:
    from .engine.metrics import metrics_from_logits

    return metrics_from_logits(torch.as_tensor(logits, dtype=torch.float32), torch.as_tensor(targets), counts,
                               many=many, few=few)


def _short(m: dict) -> dict:
    return {k: m.get(k) for k in ("top1", "many", "medium", "few")}


def posthoc(run_dir: Path, method: str, tau: Optional[float] = None, split: str = "test",
            select_on: Optional[str] = None, overrides: Iterable[str] = (), prefer_stage2: bool = True) -> dict:
    """Apply post-hoc logit adjustment or tau-normalization to a finished run (module docstring)."""
    if method not in METHODS:
        raise ConfigError(f"post-hoc method '{method}' unknown; valid: {', '.join(METHODS)}")
    loaded = load_run(Path(run_dir), prefer_stage2=prefer_stage2)
    cfg = loaded.cfg
    many, few = cfg["data"]["shot_thresholds"]
    counts = loaded.class_counts
    outs = _Outputs(loaded, overrides)
    prior = np.asarray(counts, dtype=np.float64)
    log_prior = np.log(prior / prior.sum()).astype(np.float32)
    head = loaded.module.model.head
    if method == "tau_norm":
        from .models import tau_normalize

        base = getattr(head, "base", None)
        if base is not None and hasattr(head, "scales"):
            raise LongTailError("tau_norm needs a linear or cosine head; this run's head is LWS")

    def apply(o: Dict[str, np.ndarray], t: float) -> np.ndarray:
        if method == "logit_adjust":
            return o["logits"] - t * log_prior
        with torch.no_grad():
            h = tau_normalize(head, float(t)).cpu()
            return h(torch.as_tensor(o["features"])).numpy()

    report = outs.get(split)
    if tau is not None:
        chosen, sel, sweep = float(tau), "fixed", None
    else:
        sel = select_on or ("val" if outs.has_val() else "test")
        if sel == "val" and not outs.has_val():
            raise ConfigError(f"{loaded.model_dir}: no val split to choose tau on (data.params.val_per_class=N adds one)")
        choose = report if sel == split else outs.get(sel)
        sweep = []
        for t in cfg["stage2"]["tau_grid"]:
            sweep.append({"tau": float(t), **_short(_metrics(apply(choose, float(t)), choose["targets"], counts,
                                                              many, few))})
        chosen = max(sweep, key=lambda r: (r["top1"], -r["tau"]))["tau"]
    metrics = _metrics(apply(report, chosen), report["targets"], counts, many, few)
    names = loaded.class_names
    for row in metrics.get("per_class") or []:
        row["name"] = names[row["class"]]
    baseline = _metrics(report["logits"], report["targets"], counts, many, few)
    metrics.update({"posthoc_method": method, "tau": chosen, "tau_selected_on": sel, "split": split,
                    "stage": loaded.stage, "run": str(loaded.run_dir), "model_run": str(loaded.model_dir),
                    "before": _short(baseline)})
    if sweep is not None:
        metrics["tau_sweep"] = sweep
    from .engine.runlog import write_json

    write_json(metrics, loaded.model_dir / f"posthoc-{method}.json")
    return metrics


def main_posthoc(run_dir: str, method: str, tau: Optional[float] = None, split: str = "test",
                 select_on: Optional[str] = None, overrides: Iterable[str] = (), stage1: bool = False) -> dict:
    """The ``longtail posthoc`` command."""
    from .report import shot_table

    m = posthoc(Path(run_dir), method, tau=tau, split=split, select_on=select_on, overrides=overrides,
                prefer_stage2=not stage1)
    b = m["before"]
    print(f"{method}: tau {m['tau']:g} (selected on: {m['tau_selected_on']}); {split} top-1 "
          f"{b['top1']:.2f} -> {m['top1']:.2f}")
    if m["tau_selected_on"] == "test":
        print("note: no val split, so tau was chosen on the test split itself (optimistic)")
    print(shot_table(m))
    print(f"written: {Path(m['model_run']) / f'posthoc-{method}.json'}")
    return m
