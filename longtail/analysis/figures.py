"""The thesis's analysis figures, drawn from longtail run folders.

* :func:`plot_per_class_error` -- per-class (or per frequency group) test error of several runs
  as grouped bars, classes sorted from head to tail by their training counts (Figures 3.7 and
  3.8: CE, KPS, KPS with GA, ...). Reads ``metrics.json`` (``per_class``).
* :func:`plot_feature_norms` -- mean pooled-feature norm of the head and tail classes over the
  epochs, and of every class at the end (Figure 4.2: CE vs FBL). Reads ``log.jsonl``, whose rows
  hold ``test.feature_norm`` (a per-class list) when the run had ``eval.feature_norms=true``.
* :func:`plot_tsne` -- t-SNE of test-set embeddings (pooled features) of a subsample, coloured by
  class, head / tail classes marked (Figure 5.4: CE vs GCL). Loads the run's ``config.yaml`` and
  ``last.pt`` and evaluates the backbone.

Head, medium ("Mid") and tail classes are always found from the training counts, never from the
class index (ImageNet-LT labels are not sorted by size). Following the thesis's figures (Head1-3,
Mid1-4, Tail1-3 on CIFAR-10), the 30 % most frequent classes are "head" and the 30 % least
frequent "tail" (:func:`shot_names`).

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas (no pyplot
state, no display) and saved as PNG. matplotlib and scikit-learn are the optional ``analysis``
dependencies; a missing one raises ImportError naming the package.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from ..errors import DataError
from ..report import read_metrics

PathLike = Union[str, Path]

__all__ = [
    "shot_names",
    "rank_groups",
    "frequency_groups",
    "class_counts_of",
    "per_class_errors",
    "plot_per_class_error",
    "feature_norm_curves",
    "plot_feature_norms",
    "run_features",
    "tsne_2d",
    "plot_tsne",
]

HEAD_FRACTION = 0.3  # share of the classes called "head" (and, at the other end, "tail")


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def _figure(figsize):
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the figures need matplotlib (pip install 'longtail[analysis]')") from err
    return Figure(figsize=figsize, dpi=110)


def _save(fig, out: PathLike, note: Optional[str]) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if note:
        fig.text(0.005, 0.005, note, fontsize=7, color="0.3", ha="left", va="bottom", wrap=True)
    fig.savefig(out, format="png")
    return out


def _label_of(run_dir: Path) -> str:
    try:
        m = read_metrics(run_dir, missing_ok=True) or {}
    except DataError:  # a label only: the folder name will do
        m = {}
    label = m.get("recipe") or Path(run_dir).name
    if m.get("stage") == 2 and m.get("stage2_method"):
        label += f" + {m['stage2_method']}"
    return str(label)


def _labels(run_dirs: Sequence[PathLike], labels: Optional[Sequence[str]]) -> List[str]:
    if labels is None:
        return [_label_of(Path(r)) for r in run_dirs]
    if len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    return [str(l) for l in labels]


def _order(counts: Sequence[int]) -> np.ndarray:
    """Class indices from the most to the least frequent (ties: lower index first)."""
    c = np.asarray(counts, dtype=np.int64)
    return np.lexsort((np.arange(len(c)), -c))


def rank_groups(counts: Sequence[int], head_fraction: float = HEAD_FRACTION) -> List[str]:
    """``"head"`` / ``"mid"`` / ``"tail"`` of each class by its rank in the training counts.

    The ``round(head_fraction * C)`` most frequent classes are head, as many of the least
    frequent are tail (at least one each for C >= 3), the rest mid.
    """
    n = len(counts)
    k = max(1, int(round(head_fraction * n))) if n >= 3 else 0
    out = ["mid"] * n
    order = _order(counts)
    for i in order[:k]:
        out[int(i)] = "head"
    for i in order[n - k:] if k else []:
        out[int(i)] = "tail"
    return out


def shot_names(counts: Sequence[int], head_fraction: float = HEAD_FRACTION) -> List[str]:
    """Thesis-style names of the classes, per class index: ``Head1``..., ``Mid1``..., ``Tail1``...

    Numbered in order of decreasing training count within each group (CIFAR-10-LT: Head1-3,
    Mid1-4, Tail1-3, as in Figures 3.7 and 3.8).
    """
    groups = rank_groups(counts, head_fraction)
    names = [""] * len(counts)
    seen = {"head": 0, "mid": 0, "tail": 0}
    for i in _order(counts):
        g = groups[int(i)]
        seen[g] += 1
        names[int(i)] = f"{g.capitalize()}{seen[g]}"
    return names


def frequency_groups(counts: Sequence[int], n_groups: int = 10) -> List[List[int]]:
    """Split the classes, sorted by decreasing training count, into ``n_groups`` contiguous groups
    (CIFAR-100-LT in Figures 3.7 / 3.8: ten groups of ten classes)."""
    order = _order(counts)
    n_groups = max(1, min(int(n_groups), len(order)))
    return [[int(i) for i in part] for part in np.array_split(order, n_groups)]


def class_counts_of(run_dir: PathLike) -> List[int]:
    """Training count of every class of a run: from ``metrics.json`` (``per_class``), else by
    building the run's dataset from its ``config.yaml``."""
    run_dir = Path(run_dir)
    per = (read_metrics(run_dir, missing_ok=True) or {}).get("per_class")
    if per:
        return [int(p["train_count"]) for p in sorted(per, key=lambda p: p["class"])]
    cpath = run_dir / "config.yaml"
    if not cpath.is_file():
        raise DataError(f"{run_dir}: neither metrics.json with per_class nor config.yaml; class counts unknown")
    from ..config import load_saved_config
    from ..data import build_datasets

    bundle = build_datasets(load_saved_config(cpath)["data"])
    return [int(c) for c in np.asarray(bundle.class_counts).tolist()]


# ---------------------------------------------------------------------------------------------
# (a) Per-class error (Figures 3.7 / 3.8)
# ---------------------------------------------------------------------------------------------
def per_class_errors(run_dirs: Sequence[PathLike], labels: Optional[Sequence[str]] = None,
                     groups: Optional[int] = None) -> dict:
    """Per-class (or per-group) top-1 error of several runs, head to tail.

    Args:
        run_dirs: Finished run folders of one dataset (their training counts must agree).
        labels: Name of each run (default: its recipe).
        groups: Aggregate the frequency-sorted classes into this many groups (error of a group:
            test-count-weighted mean); default 10 groups when there are more than 20 classes.

    Returns:
        ``{"labels": [...], "ticks": [tick label per bar group], "classes": [[class indices]],
        "counts": [training images per bar group], "errors": {label: [error % or nan]}}``.

    Raises:
        DataError: A missing ``metrics.json`` or ``per_class``, or runs of different datasets.
    """
    if not run_dirs:
        raise ValueError("give at least one run folder")
    labels = _labels(run_dirs, labels)
    tables = []
    for r in run_dirs:
        per = read_metrics(r).get("per_class")
        if not per:
            raise DataError(f"{Path(r) / 'metrics.json'}: no per_class entry")
        tables.append(sorted(per, key=lambda p: p["class"]))
    counts = [int(p["train_count"]) for p in tables[0]]
    for r, t in zip(run_dirs, tables):
        if [int(p["train_count"]) for p in t] != counts:
            raise DataError(f"{r}: its training counts differ from {run_dirs[0]}'s; compare runs of one dataset")
    n = len(counts)
    if groups is None and n > 20:
        groups = 10
    if groups:
        members = frequency_groups(counts, groups)
        ticks = [f"G{i + 1}" for i in range(len(members))]
    else:
        members = [[int(i)] for i in _order(counts)]
        names = shot_names(counts)
        ticks = [f"{names[m[0]]} (c{m[0]})" for m in members]
    errors: Dict[str, List[float]] = {}
    for label, t in zip(labels, tables):
        row = []
        for m in members:
            acc = [(t[c]["accuracy"], max(int(t[c].get("test_count") or 1), 1)) for c in m if t[c]["accuracy"] is not None]
            if not acc:
                row.append(float("nan"))
                continue
            w = sum(n_ for _, n_ in acc)
            row.append(100.0 - sum(a * n_ for a, n_ in acc) / w)
        errors[label] = row
    return {"labels": labels, "ticks": ticks, "classes": members,
            "counts": [int(sum(counts[c] for c in m)) for m in members], "errors": errors}


def plot_per_class_error(run_dirs: Sequence[PathLike], out: PathLike, labels: Optional[Sequence[str]] = None,
                         groups: Optional[int] = None, title: Optional[str] = None,
                         note: Optional[str] = None) -> Path:
    """Grouped bar chart of the per-class error of several runs (Figures 3.7 / 3.8).

    Args:
        run_dirs: Finished run folders.
        out: PNG path.
        labels: Legend name of each run.
        groups: See :func:`per_class_errors`.
        title: Figure title.
        note: Small text at the bottom (e.g. "synthetic data, 8 epochs").

    Returns:
        ``out`` as a Path.
    """
    d = per_class_errors(run_dirs, labels, groups)
    k, n = len(d["labels"]), len(d["ticks"])
    fig = _figure((max(6.0, 0.75 * n * max(1, k) / 2 + 2), 4.2))
    ax = fig.subplots()
    width = 0.8 / k
    x = np.arange(n)
    for i, label in enumerate(d["labels"]):
        ax.bar(x + (i - (k - 1) / 2) * width, d["errors"][label], width, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{t}\n(n={c})" for t, c in zip(d["ticks"], d["counts"])], fontsize=7)
    ax.set_ylabel("top-1 error (%)")
    ax.set_xlabel("classes from head to tail (training images)" if not groups and n <= 20 else
                  "frequency-sorted class groups (training images)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Per-class error rate", fontsize=9)
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    return _save(fig, out, note)


# ---------------------------------------------------------------------------------------------
# (b) Feature norms over epochs (Figure 4.2)
# ---------------------------------------------------------------------------------------------
def feature_norm_curves(run_dir: PathLike, head: int = 2, tail: int = 2, split: str = "test",
                        class_counts: Optional[Sequence[int]] = None) -> dict:
    """Per-class mean feature norms over the epochs of a run, with its head and tail classes.

    Args:
        run_dir: A run folder whose ``log.jsonl`` rows hold ``<split>.feature_norm`` (a list, one
            mean norm per class; logged with ``eval.feature_norms=true``).
        head: Number of head classes (the most frequent ones).
        tail: Number of tail classes (the least frequent ones).
        split: Evaluation split of the logged norms.
        class_counts: Training counts (default: :func:`class_counts_of` the run).

    Returns:
        ``{"epochs": [int], "norms": np.ndarray (epochs, C), "counts": [int], "head": [class],
        "tail": [class], "head_mean": np.ndarray (epochs,), "tail_mean": np.ndarray (epochs,),
        "final": np.ndarray (C,)}``; ``head`` from the most frequent down, ``tail`` from the least
        frequent up.

    Raises:
        DataError: No ``log.jsonl``, or no row with feature norms.
    """
    run_dir = Path(run_dir)
    path = run_dir / "log.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: missing")
    key = f"{split}.feature_norm"
    epochs, norms = [], []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise DataError(f"{path}, line {i + 1}: corrupt JSON: {err}") from None
        if row.get(key) is not None:
            epochs.append(int(row.get("epoch", len(epochs))))
            norms.append([float("nan") if v is None else float(v) for v in row[key]])
    if not norms:
        raise DataError(f"{path}: no '{key}' entries; train with eval.feature_norms=true")
    arr = np.asarray(norms, dtype=np.float64)
    counts = list(class_counts) if class_counts is not None else class_counts_of(run_dir)
    if len(counts) != arr.shape[1]:
        raise DataError(f"{path}: {arr.shape[1]} classes in the log but {len(counts)} class counts")
    order = _order(counts)
    head = max(0, min(int(head), len(order)))
    tail = max(0, min(int(tail), len(order) - head))
    head_cls = [int(c) for c in order[:head]]
    tail_cls = [int(c) for c in order[::-1][:tail]]
    return {
        "epochs": epochs,
        "norms": arr,
        "counts": [int(c) for c in counts],
        "head": head_cls,
        "tail": tail_cls,
        "head_mean": arr[:, head_cls].mean(axis=1) if head_cls else np.full(len(epochs), np.nan),
        "tail_mean": arr[:, tail_cls].mean(axis=1) if tail_cls else np.full(len(epochs), np.nan),
        "final": arr[-1],
    }


def plot_feature_norms(run_dirs: Sequence[PathLike], out: PathLike, labels: Optional[Sequence[str]] = None,
                       head: int = 2, tail: int = 2, split: str = "test", title: Optional[str] = None,
                       note: Optional[str] = None) -> Path:
    """Feature norms of head and tail classes over the epochs, and of every class at the end
    (Figure 4.2: CE vs FBL).

    Three panels: head classes over epochs, tail classes over epochs (one colour per run, one
    line style per class), and the final per-class norms from head to tail.

    Args:
        run_dirs: Run folders trained with ``eval.feature_norms=true``.
        out: PNG path.
        labels: Legend name of each run.
        head: Number of head classes drawn.
        tail: Number of tail classes drawn.
        split: Evaluation split of the logged norms.
        title: Figure title.
        note: Small text at the bottom.

    Returns:
        ``out`` as a Path.
    """
    labels = _labels(run_dirs, labels)
    curves = [feature_norm_curves(r, head, tail, split) for r in run_dirs]
    fig = _figure((13.0, 4.0))
    axes = fig.subplots(1, 3)
    colors = [f"C{i}" for i in range(10)]
    styles = ["-", "--", ":", "-."]
    names = shot_names(curves[0]["counts"])
    for i, (label, c) in enumerate(zip(labels, curves)):
        col = colors[i % len(colors)]
        for ax, which in ((axes[0], "head"), (axes[1], "tail")):
            for j, cls in enumerate(c[which]):
                ax.plot(c["epochs"], c["norms"][:, cls], color=col, ls=styles[j % len(styles)],
                        label=f"{label}: class {cls} ({names[cls]}, n={c['counts'][cls]})")
        order = _order(c["counts"])
        axes[2].plot(np.arange(len(order)), c["final"][order], color=col, marker="o", ms=3, label=label)
    for ax, which in ((axes[0], "head"), (axes[1], "tail")):
        vals = np.concatenate([c["norms"][:, c[which]].ravel() for c in curves]) if curves[0][which] else np.array([])
        vals = vals[np.isfinite(vals) & (vals > 0)]
        if vals.size and vals.max() / vals.min() > 50:  # early-epoch spikes would flatten the rest
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean feature norm")
        ax.set_title(f"{which} classes", fontsize=9)
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    order = _order(curves[0]["counts"])
    axes[2].set_xticks(np.arange(len(order)))
    if len(order) <= 20:
        axes[2].set_xticklabels([str(int(c)) for c in order], fontsize=7)
    axes[2].set_xlabel("class, from head to tail")
    axes[2].set_ylabel("mean feature norm (last logged epoch)")
    axes[2].set_title("per-class feature norm", fontsize=9)
    axes[2].legend(fontsize=7)
    axes[2].grid(alpha=0.3)
    fig.suptitle(title or "Feature norms of head and tail classes", fontsize=10)
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    return _save(fig, out, note)


# ---------------------------------------------------------------------------------------------
# (c) t-SNE of embeddings (Figure 5.4)
# ---------------------------------------------------------------------------------------------
def _checkpoint_dir(run_dir: Path) -> Path:
    if (run_dir / "last.pt").is_file():
        return run_dir
    # tau_norm / none stage-2 runs keep the stage-1 backbone, no checkpoint
    s1 = (read_metrics(run_dir, missing_ok=True) or {}).get("stage1_run")
    if s1 and (Path(s1) / "last.pt").is_file():
        return Path(s1)
    raise DataError(f"{run_dir}: no last.pt (nor a stage-1 run with one)")


def run_features(run_dir: PathLike, split: str = "test", max_points: Optional[int] = 2000, seed: int = 0,
                 device: Optional[str] = None, overrides: Sequence[str] = ()) -> dict:
    """Pooled features of a run's backbone on an evaluation split (a random subsample).

    Builds the model from the run's ``config.yaml`` (:func:`longtail.engine.build.build`),
    loads the backbone weights of its ``last.pt`` (``weights_only=True``; the stage-1 checkpoint
    for ``none`` / ``tau_norm`` stage-2 runs, which have none) and evaluates the split with
    ``keep_logits=True``. Only the backbone is loaded, so stage-2 runs with another head type
    (LWS) work too.

    Args:
        run_dir: A run folder.
        split: ``test``, ``val`` or ``train``.
        max_points: Keep this many randomly chosen samples (None: all).
        seed: Seed of the subsample.
        device: Device to evaluate on (default: the config's, ``auto``).
        overrides: Config overrides, e.g. ``data.root=/data`` when the run's relative data root
            does not resolve from here.

    Returns:
        ``{"features": np.ndarray (N, D), "targets": np.ndarray (N,), "class_counts": [int],
        "class_names": [str] or None, "indices": np.ndarray (N,)}`` (indices into the split).
    """
    from ..config import load_config, load_saved_config
    from ..engine.checkpoint import load_checkpoint, load_model_state
    from ..engine.build import build
    from ..engine.loaders import eval_batches
    from ..engine.loops import evaluate
    from ..seeding import seed_everything

    run_dir = Path(run_dir)
    cpath = run_dir / "config.yaml"
    if not cpath.is_file():
        raise DataError(f"{run_dir}: no config.yaml (not a run folder)")
    cfg = load_config(base=load_saved_config(cpath), overrides=list(overrides))
    if device is not None:
        cfg["device"] = device
    ckpt_dir = _checkpoint_dir(run_dir)
    ckpt = load_checkpoint(ckpt_dir / "last.pt")
    seed_everything(int(cfg.get("seed", 0)))
    run = build(cfg)
    backbone = {k[len("backbone."):]: v for k, v in ckpt["model"].items() if k.startswith("backbone.")}
    load_model_state(run.model.backbone, backbone, ckpt_dir / "last.pt")
    many, few = cfg["data"]["shot_thresholds"]
    _, outs = evaluate(run.model, run.loss_fn, eval_batches(run, split), run.bundle.class_counts,
                       amp=run.amp_dtype, many=many, few=few, keep_logits=True)
    feats = outs["features"].float().cpu().numpy()
    targets = outs["targets"].cpu().numpy().astype(np.int64)
    idx = np.arange(len(targets))
    if max_points is not None and len(idx) > int(max_points):
        idx = np.sort(np.random.default_rng(seed).choice(len(idx), size=int(max_points), replace=False))
    counts = np.asarray(run.bundle.class_counts).astype(np.int64).tolist()
    names = list(run.bundle.class_names) if getattr(run.bundle, "class_names", None) is not None else None
    return {"features": feats[idx], "targets": targets[idx], "class_counts": counts, "class_names": names,
            "indices": idx}


def tsne_2d(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-d t-SNE (scikit-learn) of ``features`` (N, D); the perplexity is capped for small N."""
    try:
        from sklearn.manifold import TSNE
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the t-SNE figure needs scikit-learn (pip install 'longtail[analysis]')") from err
    x = np.asarray(features, dtype=np.float32)
    n = len(x)
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 points, got {n}")
    perp = float(min(perplexity, max(1.0, (n - 1) / 3.0)))
    return TSNE(n_components=2, perplexity=perp, init="pca", learning_rate="auto", random_state=seed).fit_transform(x)


def plot_tsne(run_dirs: Sequence[PathLike], out: PathLike, labels: Optional[Sequence[str]] = None,
              split: str = "test", max_points: int = 2000, seed: int = 0, device: Optional[str] = None,
              overrides: Sequence[str] = (), title: Optional[str] = None, note: Optional[str] = None,
              features: Optional[Sequence[dict]] = None) -> Path:
    """t-SNE of each run's embeddings side by side (Figure 5.4: CE vs GCL).

    Points are coloured by class; head classes are drawn as circles, mid classes as small
    squares and tail classes as triangles (:func:`rank_groups`). Every run uses the same random
    subsample of the split.

    Args:
        run_dirs: Run folders.
        out: PNG path.
        labels: Panel title of each run.
        split: Evaluation split.
        max_points: Subsample size.
        seed: Seed of the subsample and of t-SNE.
        device: Evaluation device.
        overrides: Config overrides for loading the runs (see :func:`run_features`).
        title: Figure title.
        note: Small text at the bottom.
        features: Precomputed :func:`run_features` outputs, one per run (skips the evaluation).

    Returns:
        ``out`` as a Path.
    """
    labels = _labels(run_dirs, labels)
    if features is None:
        features = [run_features(r, split, max_points, seed, device, overrides) for r in run_dirs]
    k = len(features)
    fig = _figure((5.2 * k + 1.8, 5.0))
    axes = np.atleast_1d(fig.subplots(1, k))
    markers = {"head": "o", "mid": "s", "tail": "^"}
    sizes = {"head": 9, "mid": 5, "tail": 14}
    handles = None
    for ax, label, f in zip(axes, labels, features):
        emb = tsne_2d(f["features"], seed=seed)
        counts = f["class_counts"]
        groups = rank_groups(counts)
        names = shot_names(counts)
        cls_names = f.get("class_names")
        c_total = len(counts)
        cmap_name = "tab10" if c_total <= 10 else ("tab20" if c_total <= 20 else "viridis")
        from matplotlib import colormaps

        cmap = colormaps[cmap_name]
        handles = []
        for cls in (int(c) for c in _order(counts)):
            sel = f["targets"] == cls
            color = cmap(cls % 20 if c_total <= 20 else cls / max(c_total - 1, 1))
            g = groups[cls]
            h = ax.scatter(emb[sel, 0], emb[sel, 1], s=sizes[g], marker=markers[g], color=color, alpha=0.7,
                           linewidths=0.3, edgecolors="k" if g == "tail" else "none")
            if c_total <= 20:
                name = f" {cls_names[cls]}" if cls_names else ""
                h.set_label(f"{cls}{name}: {names[cls]} (n={counts[cls]})")
                handles.append(h)
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if handles:
        fig.legend(handles=handles, loc="center right", fontsize=7, markerscale=1.5, frameon=False)
    fig.suptitle(title or f"t-SNE of {split}-set embeddings ({len(features[0]['targets'])} points; "
                          "o head, ^ tail, s mid classes)", fontsize=10)
    fig.tight_layout(rect=(0, 0.04 if note else 0, 0.78 if handles else 1, 0.95))
    return _save(fig, out, note)
