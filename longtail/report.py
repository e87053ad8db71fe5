"""Collect finished runs and tabulate them: mean ± std over seeds, optional reference numbers.

A run folder holds ``metrics.json`` (written by the trainer, see below) and ``config.yaml`` (the
resolved configuration). Typical use::

    runs = load_runs(["runs/"])
    rows = summarize(runs)
    print(format_table(rows, reference={"ce-drw": 41.5}))

``metrics.json`` layout (the contract with the trainer)::

    {"top1", "top5", "many", "medium", "few", "per_class", "confusion", "macro_f1", "g_mean", "ece", "nll",
     "shot_thresholds", "epoch", "checkpoint", "split", "seed", "wall_time_s", "versions",
     "git_commit", "recipe"}            # stage-2 runs add "stage": 2
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import statistics
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .config import flatten, read_yaml
from .errors import DataError

__all__ = ["read_metrics", "load_runs", "aggregate", "summarize", "format_table", "per_class_rows",
           "format_per_class", "SEED_KEYS", "DEFAULT_METRICS", "headline", "shot_table"]

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
SEED_KEYS: Tuple[str, ...] = ("seed", "name", "output_dir")
"""Top-level config keys in which runs of one group may differ (the seeds of one experiment)."""
DEFAULT_METRICS: Tuple[str, ...] = ("top1", "many", "medium", "few")

PathLike = Union[str, os.PathLike]


def read_metrics(run_dir: PathLike, missing_ok: bool = False) -> Optional[Dict[str, Any]]:
    """A run's ``metrics.json``: the one reader of ``report``, ``results``, ``reproduce`` and ``sweep``.

    Args:
        run_dir: The run folder.
        missing_ok: Return None, instead of raising, when the folder has no ``metrics.json``
            (a run that has not finished).

    Returns:
        The JSON object (None for a missing file with ``missing_ok``).

    Raises:
        DataError: The file is missing (unless ``missing_ok``), unreadable, not valid JSON or not
            a JSON object; the message names the file.
    """
    path = Path(run_dir) / METRICS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return None
        raise DataError(f"{path}: missing (the run has no {METRICS_FILE}; did it finish?)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: corrupt JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_config(path: Path) -> Dict[str, Any]:
    return read_yaml(path, missing_ok=True, error=DataError)


def _load_one(folder: Path) -> Dict[str, Any]:
    metrics = read_metrics(folder)
    top1 = metrics.get("top1")
    if isinstance(top1, bool) or not isinstance(top1, (int, float)):
        raise DataError(f"{folder / METRICS_FILE}: 'top1' must be a number, got {top1!r}")
    config = _read_config(folder / CONFIG_FILE)
    return {"path": str(folder), "metrics": metrics, "config": config}


def load_runs(paths: Union[PathLike, Iterable[PathLike]]) -> List[Dict[str, Any]]:
    """Load finished runs.

    Each path is one of:

    * a run folder (it holds ``metrics.json`` or ``config.yaml``): loaded, and its sub-folders are
      searched too (stage-2 runs may live inside their stage-1 folder); a run folder with
      ``config.yaml`` but no ``metrics.json`` is an error;
    * a ``metrics.json`` file: its folder is loaded;
    * any other folder: searched recursively; sub-folders without ``metrics.json`` are skipped.

    A missing ``config.yaml`` next to a ``metrics.json`` is tolerated (the config is then ``{}``,
    and runs are grouped by their ``metrics.json`` fields only).

    Args:
        paths: One path or several.

    Returns:
        One dict per run, sorted by path and without duplicates:
        ``{"path": str, "metrics": dict, "config": dict}``.

    Raises:
        DataError: A path that does not exist, a missing (in a run folder) or corrupt
            ``metrics.json``, a corrupt ``config.yaml``, or a folder holding no run at all; the
            message names the file or folder.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    folders: Dict[str, Path] = {}
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise DataError(f"{p}: no such run folder or file")
        if p.is_file():
            if p.name != METRICS_FILE:
                raise DataError(f"{p}: expected a run folder or a {METRICS_FILE} file")
            folders.setdefault(str(p.parent.resolve()), p.parent)
            continue
        if (p / CONFIG_FILE).is_file() and not (p / METRICS_FILE).exists():
            raise DataError(f"{p / METRICS_FILE}: missing (the run has no {METRICS_FILE}; did it finish?)")
        found = sorted({m.parent for m in p.rglob(METRICS_FILE)})
        if not found:
            raise DataError(f"{p}: no run folder (no {METRICS_FILE}) found in it")
        for f in found:
            folders.setdefault(str(f.resolve()), f)
    return [_load_one(folders[k]) for k in sorted(folders)]


def _lookup(run: Mapping[str, Any], key: str) -> Any:
    """A field of ``metrics.json``, else a dotted key of the config, else None."""
    if key in run["metrics"]:
        return run["metrics"][key]
    node: Any = run["config"]
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _freeze(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _fmt_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str)


def _mean_std(values: Sequence[Any]) -> Tuple[Optional[float], Optional[float]]:
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                         for v in values):
        return None, None
    vals = [float(v) for v in values]
    mean = statistics.fmean(vals)
    std = statistics.stdev(vals) if len(vals) > 1 else None
    return mean, std


def aggregate(
    runs: Sequence[Mapping[str, Any]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    stage1: Optional[Sequence[Optional[Mapping[str, Any]]]] = None,
) -> Dict[str, Any]:
    """The numbers of one summary row: mean ± std over the runs of one experiment (its seeds).

    The one aggregate of :func:`summarize` (per group), ``longtail reproduce`` (per table cell)
    and ``longtail results`` (per row of the results page).

    Args:
        runs: Runs as :func:`load_runs` gives them (``path``, ``metrics``, ``config``).
        metrics: ``metrics.json`` fields to average.
        stage1: Per run, the stage-1 run it re-trained (or None); its wall time is added to the
            run's.

    Returns:
        ``{"seeds": int, "seed_list": [...], "runs": [paths], "<metric>": mean, "<metric>_std":
        std, ..., "wall_time_s": mean per run or None}``. The std is the sample standard deviation
        (ddof=1), ``None`` for a single run; a metric that is missing, ``None`` or not finite in
        any run has mean and std ``None``.
    """
    row: Dict[str, Any] = {
        "seeds": len(runs),
        "seed_list": [_lookup(r, "seed") for r in runs],
        "runs": [r["path"] for r in runs],
    }
    for m in metrics:
        row[m], row[f"{m}_std"] = _mean_std([r["metrics"].get(m) for r in runs])
    walls = []
    for r, parent in zip(runs, stage1 if stage1 is not None else [None] * len(runs)):
        wall = float(r["metrics"].get("wall_time_s") or 0.0)
        if parent is not None:
            wall += float(parent["metrics"].get("wall_time_s") or 0.0)
        walls.append(wall)
    row["wall_time_s"] = statistics.fmean(walls) if walls else None
    return row


def _base_label(run: Mapping[str, Any], group_by: Sequence[str]) -> str:
    parts = [_lookup(run, k) for k in group_by]
    if any(v is not None for v in parts):
        label = " / ".join("-" if v is None else _fmt_value(v) for v in parts)
    else:  # no recipe recorded: the run name (or folder name) without its seed suffix
        name = run["config"].get("name") or Path(run["path"]).name
        label = re.sub(r"[-_.]?seed[-_]?\d+$", "", str(name)) or str(name)
    stage = run["metrics"].get("stage")
    if stage not in (None, 1) and "stage" not in group_by:
        method = _lookup(run, "stage2.method")
        label += f" [stage {stage}" + (f": {method}]" if method else "]")
    return label


def summarize(
    runs: Sequence[Mapping[str, Any]],
    group_by: Sequence[str] = ("recipe",),
    metrics: Sequence[str] = DEFAULT_METRICS,
    ignore: Sequence[str] = SEED_KEYS,
) -> List[Dict[str, Any]]:
    """Group runs that differ only in their seed and average each group.

    Two runs are in one group when their configs are equal once the top-level keys ``ignore``
    (``seed``, ``name``, ``output_dir``) are removed, and their ``group_by`` fields, ``stage`` and
    ``split`` (from ``metrics.json``) are equal. A group is labelled by its ``group_by`` values,
    each looked up in ``metrics.json`` first and then as a dotted key of the config (the
    run name without its seed suffix when none is recorded); stage-2 groups get
    ``" [stage 2: <method>]"``. Groups sharing a label are told apart by the config keys in
    which they differ, e.g. ``"ce (loss.params.beta=0.99)"``.

    Args:
        runs: Runs from :func:`load_runs`.
        group_by: Fields naming a group (``metrics.json`` keys or dotted config keys).
        metrics: ``metrics.json`` fields to average.
        ignore: Top-level config keys ignored when comparing configs.

    Returns:
        One row per group, in order of first appearance: ``{"method": str}`` and the group's
        :func:`aggregate` (``seeds``, ``seed_list``, ``runs``, ``<metric>`` and ``<metric>_std``,
        ``wall_time_s``). The std is the sample standard deviation (ddof=1), ``None`` for a single
        run; a metric that is missing, ``None`` or not finite in any run of the group has mean
        and std ``None``.
    """
    groups: Dict[str, List[Mapping[str, Any]]] = {}
    for run in runs:
        cfg = {k: v for k, v in run["config"].items() if k not in ignore}
        key_parts = {
            "config": cfg,
            "group_by": [_lookup(run, k) for k in group_by],
            "stage": run["metrics"].get("stage"),
            "split": run["metrics"].get("split"),
        }
        groups.setdefault(_freeze(key_parts), []).append(run)

    labels = {key: _base_label(members[0], group_by) for key, members in groups.items()}
    by_label: Dict[str, List[str]] = {}
    for key, label in labels.items():
        by_label.setdefault(label, []).append(key)
    for label, keys in by_label.items():
        if len(keys) < 2:
            continue
        flats = [flatten({k: v for k, v in groups[key][0]["config"].items() if k not in ignore}) for key in keys]
        all_keys = sorted(set().union(*flats))
        differing = [k for k in all_keys if len({_freeze(f.get(k)) for f in flats}) > 1]
        for key, flat in zip(keys, flats):
            desc = ", ".join(f"{k}={_fmt_value(flat.get(k))}" for k in differing)
            if not desc:  # same config: they differ in split (or stage)
                m = groups[key][0]["metrics"]
                desc = f"split={m.get('split')}"
            labels[key] = f"{label} ({desc})"

    return [{"method": labels[key], **aggregate(members, metrics)} for key, members in groups.items()]


_HEADERS = {"top1": "top-1", "top5": "top-5"}


def _num(v: Optional[float], digits: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.{digits}f}"


def _cell(mean: Optional[float], std: Optional[float], digits: int) -> str:
    """A markdown cell: ``mean ± std``, just ``mean`` without a std, empty without a mean."""
    cell = _num(mean, digits)
    return cell + f" ± {std:.{digits}f}" if cell and std is not None else cell


def _reference_value(reference: Mapping[str, Any], method: str) -> Optional[float]:
    ref = reference.get(method)
    if isinstance(ref, Mapping):
        ref = ref.get("top1")
    return None if ref is None else float(ref)


def format_table(
    rows: Sequence[Mapping[str, Any]],
    fmt: str = "markdown",
    reference: Optional[Mapping[str, Any]] = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    digits: int = 2,
) -> str:
    """Render :func:`summarize` rows as a table.

    Columns: ``method``, ``seeds``, one per metric (``top-1``, ``many``, ``medium``, ``few``) and,
    when ``reference`` is given, ``reference`` (published top-1) and ``diff`` (our mean top-1 minus
    the reference). In markdown a cell reads ``mean ± std`` (just ``mean`` for a single seed);
    CSV has separate ``<metric>`` and ``<metric>_std`` columns. Missing values are empty cells.

    Args:
        rows: Rows from :func:`summarize`.
        fmt: ``"markdown"`` or ``"csv"``.
        reference: Method label -> reference top-1 (a number, or a mapping with a ``"top1"``
            entry); methods without a reference get empty cells.
        metrics: Metric columns, in order.
        digits: Decimals of every number.

    Returns:
        The table text, ending with a newline.

    Raises:
        ValueError: On an unknown ``fmt``.
    """
    if fmt not in ("markdown", "csv"):
        raise ValueError(f"fmt must be 'markdown' or 'csv', got {fmt!r}")

    def ref_cells(row: Mapping[str, Any]) -> List[str]:
        if reference is None:
            return []
        ref = _reference_value(reference, row["method"])
        ours = row.get("top1")
        diff = None if ref is None or ours is None else ours - ref
        return [_num(ref, digits), "" if diff is None else f"{diff:+.{digits}f}"]

    ref_header = ["reference", "diff"] if reference is not None else []
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        header = ["method", "seeds"]
        for m in metrics:
            header += [m, f"{m}_std"]
        writer.writerow(header + ref_header)
        for row in rows:
            cells = [row["method"], str(row["seeds"])]
            for m in metrics:
                cells += [_num(row.get(m), digits), _num(row.get(f"{m}_std"), digits)]
            writer.writerow(cells + ref_cells(row))
        return buf.getvalue()

    header = ["method", "seeds"] + [_HEADERS.get(m, m) for m in metrics] + ref_header
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for row in rows:
        cells = [str(row["method"]).replace("|", "\\|"), str(row["seeds"])]
        cells += [_cell(row.get(m), row.get(f"{m}_std"), digits) for m in metrics]
        lines.append("| " + " | ".join(cells + ref_cells(row)) + " |")
    return "\n".join(lines) + "\n"


def per_class_rows(runs: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Per-class top-1 of each :func:`summarize` row, one entry per class (Table 4.5's comparison).

    Args:
        runs: The runs given to :func:`summarize`.
        rows: Its rows (their ``runs`` name the member runs by path).

    Returns:
        One dict per class, in class order: ``class`` (index), ``name``, ``train_count`` and
        ``group`` (from ``metrics.json``'s ``per_class``; ``None`` where the runs disagree, e.g.
        two imbalance ratios), and per row, in order, ``cells``: ``(mean, std)`` of the class's
        accuracy over the row's seeds (std ``None`` for one seed).

    Raises:
        DataError: A run without per-class accuracies, or runs with different numbers of classes;
            the message names the ``metrics.json`` files.
    """
    by_path = {r["path"]: r for r in runs}
    first: Optional[Tuple[Path, int]] = None
    groups: List[List[List[Mapping[str, Any]]]] = []  # per row, per run: its per-class entries
    for row in rows:
        groups.append([])
        for path in row["runs"]:
            pc = by_path[path]["metrics"].get("per_class")
            where = Path(path) / METRICS_FILE
            if not isinstance(pc, list) or not pc or not all(isinstance(e, Mapping) and "accuracy" in e for e in pc):
                raise DataError(f"{where}: no per-class accuracies ('per_class' is empty or has no 'accuracy')")
            if first is None:
                first = (where, len(pc))
            elif len(pc) != first[1]:
                raise DataError(f"{where}: {len(pc)} classes, but {first[0]} has {first[1]}; "
                                "per-class tables compare runs of one dataset")
            groups[-1].append(pc)
    out = []
    for c in range(first[1] if first else 0):
        entries = [pc[c] for group in groups for pc in group]
        agreed = {k: entries[0].get(k) if len({_freeze(e.get(k)) for e in entries}) == 1 else None
                  for k in ("name", "train_count", "group")}
        cells = [_mean_std([pc[c]["accuracy"] for pc in group]) for group in groups]
        out.append({"class": c, **agreed, "cells": cells})
    return out


def format_per_class(
    rows: Sequence[Mapping[str, Any]],
    classes: Sequence[Mapping[str, Any]],
    fmt: str = "markdown",
    digits: int = 1,
) -> str:
    """Render :func:`per_class_rows` as a table: one line per class, one column per summary row.

    The columns are ``class``, ``name``, ``train images``, ``group`` and each row's method label;
    a last line ``mean`` averages the classes (top-1 itself on a balanced test split). Markdown
    cells read ``mean ± std``; CSV has a ``<label> std`` column after each label.

    Args:
        rows: Rows from :func:`summarize` (their labels head the columns).
        classes: Their :func:`per_class_rows`.
        fmt: ``"markdown"`` or ``"csv"``.
        digits: Decimals of every number.

    Raises:
        ValueError: On an unknown ``fmt``.
    """
    if fmt not in ("markdown", "csv"):
        raise ValueError(f"fmt must be 'markdown' or 'csv', got {fmt!r}")
    labels = [str(r["method"]) for r in rows]
    means = [_mean_std([c["cells"][i][0] for c in classes])[0] for i in range(len(rows))]

    def info(c: Mapping[str, Any]) -> List[str]:
        return [str(c["class"])] + ["" if c[k] is None else str(c[k]) for k in ("name", "train_count", "group")]

    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["class", "name", "train_images", "group"] + [x for lab in labels for x in (lab, f"{lab} std")])
        for c in classes:
            writer.writerow(info(c) + [_num(v, digits) for cell in c["cells"] for v in cell])
        writer.writerow(["mean", "", "", ""] + [x for m in means for x in (_num(m, digits), "")])
        return buf.getvalue()
    header = ["class", "name", "train images", "group"] + [lab.replace("|", "\\|") for lab in labels]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---:", "---", "---:", "---"] + ["---:"] * len(labels)) + "|"]
    for c in classes:
        cells = [_cell(m, s, digits) for m, s in c["cells"]]
        lines.append("| " + " | ".join(info(c) + cells) + " |")
    lines.append("| mean | | | | " + " | ".join(_num(m, digits) for m in means) + " |")
    return "\n".join(lines) + "\n"


# -- terminal tables of one run ------------------------------------------------------------------

def headline(metrics: dict) -> str:
    """``top1 81.23 | many 90.10 medium 75.00 few 70.33`` for an epoch line (``-`` where absent)."""
    def f(k):
        v = metrics.get(k)
        return "  -  " if v is None else f"{v:5.2f}"

    return f"top1 {f('top1')} | many {f('many')} medium {f('medium')} few {f('few')}"


def shot_table(metrics: dict) -> str:
    """The head / medium / tail table printed at the end of ``train``, ``retrain`` and ``eval``."""
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
