"""Re-run the thesis's CIFAR-10-LT tables and compare with the published numbers.

``longtail reproduce TABLE [key=value ...] [--seeds 0 1 2] [--rho 100] [--out DIR] [--jobs N]
[--dry-run]`` trains every row of a thesis table for each imbalance ratio and seed, then writes
``<out>/table_<id>.md``: the measured top-1 (mean ± std over seeds), the many / medium / few
means, the published top-1 and the difference. ``longtail reproduce list`` prints the tables.

How the runs are organised:

* Every row names a recipe, extra stage-1 overrides and, for two-stage methods, stage-2
  overrides (``longtail retrain``). Stage-1 runs are identified by their resolved config (a
  short hash of it is part of the folder name), so rows that share a stage-1 configuration --
  the GCL rows of Tables 5.2, 5.4, 5.5 and 5.6 -- train it **once** per seed and rho and re-train
  the classifier of that one run; identical stage-2 runs are shared too.
* Folders: ``<out>/<data.name>-rho<rho>/<recipe>-<hash>-seed<seed>`` (stage 1) and
  ``...-seed<seed>-s2-<method>[-<sampler>]-<hash>`` (stage 2); process logs in ``<out>/logs/``.
* Resumable: a run folder holding ``metrics.json`` is reused, and so is a finished run of the same
  folder under another name whose saved config is the same run (:func:`same_run`: a folder renamed
  by hand, or one named before a default changed that its method does not use, such as the
  stage-2 lr of ``stage2.method=none``); a stage-1 folder with a checkpoint is continued with
  ``longtail train --resume``; an unfinished stage-2 folder (stage 2 has no resume) is removed and
  re-run. Do not run two ``reproduce`` commands on one ``--out`` at once.
* ``--jobs N`` runs up to N runs at once as subprocesses (``python -m longtail train|retrain
  ... quiet=true``); a stage-2 run starts when its stage-1 run has finished. Threads per process
  and ``--jobs auto`` (the default) follow :mod:`longtail.jobs`.
* User overrides (``data.name=synthetic optim.epochs=2``) apply to every run: the ``stage2.*``
  ones to every stage-2 run (after the row's stage-2 overrides, so they win; they do not touch
  the stage-1 runs, which stay shared across stage-2 settings), all others to every stage-1 run
  (after the recipe and the row's overrides). The imbalance ratio and the seed come from ``--rho`` and
  ``--seeds``. When ``optim.epochs`` is overridden, the epoch-valued keys of each recipe
  (``optim.milestones``, ``optim.warmup_epochs``, ``loss.params.ga_epoch``,
  ``loss.params.drw_epoch``, ``mixup.until_epoch``) are scaled by the same factor, so that a
  short run still switches on GA / DRW / the lr steps (a key overridden explicitly is left as
  given); the scaled values appear in the printed commands and the table header.
* ``--rows PATTERN ...`` trains only the runs of the rows whose label matches a pattern (the whole
  label or a shell-style pattern such as ``'GCL*'``, case-insensitive); the table still shows every
  row, each with whatever has finished in ``--out``.
* The published numbers are CIFAR-10-LT top-1 accuracies (ResNet-32). When the runs use other
  data (the synthetic set) or overrides that change the published recipe, the table says so in
  its header and shows ``n/c`` (not comparable) instead of the difference.

The tables themselves -- rows, recipes and the numbers printed in each table of the thesis -- are
data, in :mod:`longtail.thesis_tables`; measured numbers are averaged over seeds by
:func:`longtail.report.aggregate`, as ``longtail report`` and ``longtail results`` average them.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .config import (EPOCH_KEYS_STAGE1, EPOCH_KEYS_STAGE2, flatten, key_under, load_config, load_saved_config,
                     parse_override, scaled_epoch_overrides)
from .engine.stage2 import UNTRAINED_STAGE2
from .errors import ConfigError, DataError, LongTailError
from .jobs import Job, job_state, resolve_jobs, run_jobs
from .report import DEFAULT_METRICS, aggregate, read_metrics
from .thesis_tables import PUBLISHED_DATA, TABLES, Table, get_table

__all__ = ["BENIGN_PREFIXES", "Plan", "plan", "same_run", "select_rows", "comparability", "summarize_plan", "format_markdown", "format_list",
           "make_figures", "main"]

#: Override keys that do not change what a run computes (only where or how fast it runs).
BENIGN_PREFIXES = (
    "data.root", "data.num_workers", "data.download", "data.eval_batch_size", "data.gpu_resident",
    "device", "quiet", "tensorboard", "amp", "channels_last", "compile", "cuda_graph", "fused_optimizer",
    "deterministic", "eval.every", "eval.feature_norms", "output_dir", "name",
)

#: Config keys left out of a run's identity (its folder hash). A stage-1 run's ``stage2`` block
#: is the recipe's (stage-2 overrides go to ``longtail retrain`` only); stage-2 runs hash it.
_IDENTITY_IGNORE = ("name", "output_dir", "quiet", "seed")


# ---------------------------------------------------------------------------------------------
# Planning the runs
# ---------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """The jobs of one ``reproduce`` call and which run folder fills which table cell.

    Attributes:
        table: The table.
        rhos: Imbalance ratios run.
        seeds: Seeds run.
        jobs: Unique jobs, stage-1 jobs before the stage-2 jobs that need them.
        cells: ``(rho, row index) -> [run folder per seed]`` (the stage-2 folder for two-stage rows).
        stage1: ``(rho, row index) -> [stage-1 run folder per seed]``.
        data_name: ``data.name`` of the runs.
        user_overrides: The user's overrides.
        scaled: Epoch-valued overrides derived from ``optim.epochs`` / ``stage2.epochs``, per
            recipe (``recipe -> [key=value]``).
    """

    table: Table
    rhos: List[int]
    seeds: List[int]
    jobs: List[Job] = field(default_factory=list)
    cells: Dict[Tuple[int, int], List[Path]] = field(default_factory=dict)
    stage1: Dict[Tuple[int, int], List[Path]] = field(default_factory=dict)
    data_name: str = ""
    user_overrides: List[str] = field(default_factory=list)
    scaled: Dict[str, List[str]] = field(default_factory=dict)


def _identity(cfg: dict, ignore: Sequence[str] = ()) -> str:
    """Short hash of a resolved config without its name, folder, seed, verbosity and ``ignore``."""
    ident = {k: v for k, v in cfg.items() if k not in _IDENTITY_IGNORE and k not in ignore}
    return hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:8]


#: Keys that only name a run: left out when :func:`same_run` compares two configs.
RUN_NAMING = ("name", "output_dir", "quiet")


def same_run(expected: dict, saved: dict, stage: int, ignore: Sequence[str] = RUN_NAMING,
             significant: Sequence[str] = ()) -> bool:
    """Whether a saved run config is the run ``expected`` describes.

    By default every key must agree -- the seed, the precision and the speed settings included --
    except the run's name, folder and verbosity. Always left out: the ``stage2`` block of a stage-1
    run, the settings of a stage-2 method that trains nothing (``stage2.lr`` of
    ``stage2.method=none``; see ``UNTRAINED_STAGE2``), and keys present on one side only (read
    ``saved`` with :func:`~longtail.config.load_saved_config`, and a key added to the schema since
    the run holds its default on both sides).

    Args:
        expected: The resolved config of the wanted run.
        saved: A run's saved config.
        stage: 1 or 2.
        ignore: Keys (and prefixes) left out as well.
        significant: Keys (and prefixes) compared even where they would be left out.
    """
    a, b = flatten(expected), flatten(saved)
    kept = UNTRAINED_STAGE2.get(a.get("stage2.method")) if stage == 2 else None
    for key in a.keys() & b.keys():
        unused = key.startswith("stage2.") and (stage == 1 or (kept is not None and key not in kept))
        if (unused or key_under(key, ignore)) and not key_under(key, significant):
            continue
        if a[key] != b[key]:
            return False
    return True


class _Finished:
    """The finished runs of one folder, read once: ``(folder, saved config, metrics)`` by path."""

    def __init__(self) -> None:
        self._by_folder: Dict[Path, List[Tuple[Path, dict, dict]]] = {}

    def runs(self, folder: Path) -> List[Tuple[Path, dict, dict]]:
        if folder not in self._by_folder:
            found = []
            for d in sorted(folder.iterdir()) if folder.is_dir() else ():
                if not (d / "metrics.json").is_file() or not (d / "config.yaml").is_file():
                    continue
                try:
                    found.append((d, load_saved_config(d / "config.yaml"), read_metrics(d)))
                except LongTailError:
                    continue  # not reusable; a run with this name still reports its own problem
            self._by_folder[folder] = found
        return self._by_folder[folder]

    def state(self, run_dir: Path, stage: int, cfg: dict, parent: Optional[Path] = None) -> Tuple[Path, str, str]:
        """:func:`~longtail.jobs.job_state` of ``run_dir``; where that is ``new``, a finished run of the
        same folder that is the same run (:meth:`same`) takes its place as ``done``.

        Returns:
            ``(run folder, state, note)``.
        """
        state, note = job_state(run_dir, stage, cfg if stage == 1 else None)
        found = self.same(run_dir.parent, cfg, stage, parent) if state == "new" else None
        if found is None:
            return run_dir, state, note
        return found, "done", f"finished before as {found.name} (same config): reused"

    def same(self, folder: Path, cfg: dict, stage: int, parent: Optional[Path] = None) -> Optional[Path]:
        """The first finished run in ``folder`` that is the run ``cfg`` (of ``parent``, for stage 2)."""
        for d, saved, metrics in self.runs(folder):
            if int(metrics.get("stage", 1)) != stage:
                continue
            if parent is not None and Path(str(metrics.get("stage1_run", ""))).name != parent.name:
                continue
            if same_run(cfg, saved, stage):
                return d
        return None


def _override_key(text: str) -> str:
    return parse_override(text)[0]


def _scaled_overrides(cfg0: dict, user: Sequence[str], total_key: str, keys: Sequence[str]) -> List[str]:
    """Overrides scaling ``keys`` of ``cfg0`` when the user changes ``total_key`` (epochs)."""
    new_total = None
    for o in user:
        k, v = parse_override(o)
        if k == total_key:
            new_total = v
    return scaled_epoch_overrides(cfg0, total_key, new_total, keys, skip={_override_key(o) for o in user})


def _check_user_overrides(overrides: Sequence[str]) -> List[str]:
    out = []
    for o in overrides:
        key = _override_key(o)
        if key == "data.imbalance_ratio":
            raise ConfigError("reproduce: give the imbalance ratio with --rho, not data.imbalance_ratio=")
        if key == "seed":
            raise ConfigError("reproduce: give the seeds with --seeds, not seed=")
        if key in ("name", "output_dir"):
            raise ConfigError(f"reproduce: '{key}' is chosen per run; give the folder with --out")
        out.append(o)
    return out


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._" else "-" for c in text).strip("-")


def select_rows(table: Table, patterns: Sequence[str]) -> List[int]:
    """Indices of the rows whose label matches one of ``patterns``, in table order.

    A pattern matches a label when it equals it or matches it as a shell-style pattern
    (:mod:`fnmatch`: ``*``, ``?``, ``[...]``), case-insensitively.

    Raises:
        ConfigError: A pattern that matches no row (the message lists the table's row labels).
    """
    labels = [r.label for r in table.rows]
    chosen = set()
    for pat in patterns:
        hits = {i for i, lbl in enumerate(labels)
                if lbl.casefold() == pat.casefold() or fnmatch.fnmatchcase(lbl.casefold(), pat.casefold())}
        if not hits:
            raise ConfigError(f"reproduce: --rows {pat!r} matches no row of Table {table.id}; its rows: "
                              + "; ".join(repr(lbl) for lbl in labels))
        chosen |= hits
    return sorted(chosen)


def plan(table: Table, seeds: Sequence[int], rhos: Optional[Sequence[int]], overrides: Sequence[str],
         out: Path, rows: Optional[Sequence[str]] = None) -> Plan:
    """Resolve every run of a table: folders, commands and what is already finished.

    Args:
        table: The table.
        seeds: Seeds.
        rhos: Imbalance ratios (None: those the table reports).
        overrides: User overrides, applied to every run.
        out: Output folder.
        rows: Label patterns (see :func:`select_rows`): only the runs these rows need are jobs.
            Every row keeps its cells, so the table shows what has finished in ``out`` for all
            rows. None: every row.

    Returns:
        The :class:`Plan`.

    Raises:
        ConfigError: A bad override (unknown key, wrong type), an override reproduce sets itself,
            or a row pattern that matches no row.
    """
    selected = None if rows is None else select_rows(table, rows)
    user = _check_user_overrides(overrides)
    user_s2 = [o for o in user if _override_key(o).startswith("stage2.")]
    user_s1 = [o for o in user if not _override_key(o).startswith("stage2.")]
    rhos = list(rhos) if rhos else table.rhos
    seeds = list(seeds)
    if not seeds:
        raise ConfigError("reproduce: give at least one seed")
    p = Plan(table=table, rhos=rhos, seeds=seeds, user_overrides=list(user))
    jobs: Dict[Path, Job] = {}
    finished = _Finished()
    for rho in rhos:
        for ri, row in enumerate(table.rows):
            cell, s1cells = [], []
            for seed in seeds:
                fixed = list(table.overrides) + list(row.overrides) + [f"data.imbalance_ratio={rho}", f"seed={seed}"]
                cfg0 = load_config(row.recipe, fixed)
                scaled = _scaled_overrides(cfg0, user_s1, "optim.epochs", EPOCH_KEYS_STAGE1)
                s1_over = fixed + scaled + user_s1
                cfg1 = load_config(row.recipe, s1_over)
                p.data_name = cfg1["data"]["name"]
                folder = out / f"{_slug(cfg1['data']['name'])}-rho{rho}"
                name1 = f"{_slug(row.recipe)}-{_identity(cfg1, ignore=('stage2',))}-seed{seed}"
                dir1 = folder / name1
                if dir1 not in jobs:
                    dir1, state, note = finished.state(dir1, 1, cfg1)
                if dir1 not in jobs:  # a reused folder may be another row's job already
                    argv = (["train", "--resume", str(dir1)] if state == "resume" else
                            ["train", row.recipe, *s1_over, f"output_dir={folder}", f"name={name1}", "quiet=true"])
                    jobs[dir1] = Job(dir1, 1, argv, out / "logs" / f"{name1}.log", state=state, note=note)
                if scaled:
                    p.scaled.setdefault(row.recipe, scaled)
                s1cells.append(dir1)
                if not row.two_stage:
                    cell.append(dir1)
                    continue
                name1 = dir1.name
                base = dict(cfg1, name=name1, output_dir=str(folder), quiet=True)
                s2_fixed = list(row.stage2)
                s2_scaled = _scaled_overrides(load_config(base=base, overrides=s2_fixed), user_s2, "stage2.epochs",
                                              EPOCH_KEYS_STAGE2)
                s2_over = s2_fixed + s2_scaled + user_s2
                cfg2 = load_config(base=base, overrides=s2_over)
                method = cfg2["stage2"]["method"]
                what = method if method in ("none", "tau_norm") else f"{method}-{cfg2['stage2']['sampler']['name']}"
                name2 = f"{name1}-s2-{_slug(what)}-{_identity(cfg2)[:6]}"
                dir2 = folder / name2
                if dir2 not in jobs:
                    dir2, state, note = finished.state(dir2, 2, cfg2, parent=dir1)
                if dir2 not in jobs:  # as for stage 1
                    argv = ["retrain", str(dir1), *s2_over, f"output_dir={folder}", f"name={name2}", "quiet=true"]
                    jobs[dir2] = Job(dir2, 2, argv, out / "logs" / f"{name2}.log", depends=dir1, state=state,
                                     note=note)
                cell.append(dir2)
            p.cells[(rho, ri)] = cell
            p.stage1[(rho, ri)] = s1cells
    if selected is not None:
        needed = {d for rho in rhos for ri in selected for d in p.cells[(rho, ri)] + p.stage1[(rho, ri)]}
        jobs = {d: j for d, j in jobs.items() if d in needed}
    ordered = [j for j in jobs.values() if j.stage == 1] + [j for j in jobs.values() if j.stage == 2]
    p.jobs = ordered
    return p


# ---------------------------------------------------------------------------------------------
# The markdown table
# ---------------------------------------------------------------------------------------------
def _fmt(v: Optional[float], std: Optional[float] = None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def comparability(data_name: str, overrides: Sequence[str]) -> Tuple[bool, List[str]]:
    """Whether measured numbers are comparable with the published ones, and the overrides that
    change the published recipe."""
    changing = [o for o in overrides
                if not key_under(_override_key(o), BENIGN_PREFIXES)]
    return data_name == PUBLISHED_DATA and not changing, changing


def summarize_plan(p: Plan) -> List[dict]:
    """Per (rho, row): the seeds' ``metrics.json`` averaged by :func:`longtail.report.aggregate`,
    and failures.

    Returns:
        Dicts with ``rho``, ``row`` (:class:`~longtail.thesis_tables.Row`), ``label``, ``seeds``
        (finished runs), ``top1``/``top1_std``, ``many``, ``medium``, ``few`` (with ``_std``),
        ``published``, ``failures`` (reasons; an unreadable ``metrics.json`` is one, named),
        ``missing`` (runs with no result that did not fail: not selected by ``--rows``, not run yet),
        ``runs`` (folders, finished or not), ``wall_time_s`` (mean per seed, stage 1 + stage 2)
        and ``notes`` (e.g. tau chosen on the test split).
    """
    by_dir = {j.run_dir: j for j in p.jobs}
    out = []
    for rho in p.rhos:
        for ri, row in enumerate(p.table.rows):
            runs = p.cells[(rho, ri)]
            s1 = p.stage1[(rho, ri)]
            finished, parents, failures, notes, missing = [], [], [], [], 0
            for r, r1 in zip(runs, s1):
                try:
                    m = read_metrics(r, missing_ok=True)
                except DataError as err:
                    failures.append(str(err))
                    continue
                if m is None:
                    job = by_dir.get(r)
                    if job is not None and job.reason:
                        failures.append(job.reason)
                    else:
                        missing += 1
                    continue
                finished.append({"path": str(r), "metrics": m, "config": {}})
                parent = None
                if r != r1:
                    try:
                        parent = {"path": str(r1), "metrics": read_metrics(r1, missing_ok=True) or {}, "config": {}}
                    except DataError as err:
                        notes.append(f"wall time without stage 1: {err}")
                parents.append(parent)
                if m.get("tau_selected_on") == "test":
                    notes.append("tau chosen on the test split (no val split)")
            agg = aggregate(finished, DEFAULT_METRICS, stage1=parents)
            out.append({"rho": rho, "row": row, "label": row.label, "seeds": agg["seeds"], "runs": runs,
                        "published": row.published.get(rho), "failures": failures, "missing": missing,
                        "wall_time_s": agg["wall_time_s"], "notes": sorted(set(notes)),
                        **{k: agg[k] for key in DEFAULT_METRICS for k in (key, f"{key}_std")}})
    return out


def _machine(rows: Sequence[dict]) -> str:
    for entry in rows:
        for r in entry["runs"]:
            try:
                m = read_metrics(r, missing_ok=True)
            except DataError:
                continue
            if m:
                v = m.get("versions") or {}
                dev = v.get("gpu") or m.get("device") or "?"
                if dev == "cpu":
                    dev = f"CPU ({os.cpu_count()} cores)"
                return f"{dev}, torch {v.get('torch', '?')}"
    return "?"


def format_markdown(p: Plan, summary: Sequence[dict], wall_s: Optional[float] = None,
                    command: Optional[str] = None) -> str:
    """The ``table_<id>.md`` text: header lines, one table per rho, notes and run folders."""
    t = p.table
    comparable, changing = comparability(p.data_name, p.user_overrides)
    lines = [f"# Table {t.id}: {t.title}", ""]
    lines.append(f"- Published numbers: {t.source}; ResNet-32, top-1 % on the CIFAR-10 test split.")
    lines.append(f"- Measured on: data.name={p.data_name}; seeds {', '.join(map(str, p.seeds))}; "
                 f"rho {', '.join(map(str, p.rhos))}; machine: {_machine(summary)}"
                 + (f"; wall time of this command {wall_s:.0f} s" if wall_s is not None else "") + ".")
    if command:
        lines.append(f"- Command: `{command}`")
    if t.overrides:
        lines.append(f"- Table-wide overrides: `{' '.join(t.overrides)}`")
    if p.user_overrides:
        lines.append(f"- User overrides (every run): `{' '.join(p.user_overrides)}`")
    for recipe, sc in p.scaled.items():
        lines.append(f"- Epoch-valued keys of {recipe} scaled to the shortened schedule: `{' '.join(sc)}`")
    if p.data_name != PUBLISHED_DATA:
        lines.append(f"- **Not CIFAR-10-LT**: these runs use data.name={p.data_name}. The published column shows the "
                     f"published CIFAR-10-LT numbers for reference only; they are **not comparable** (diff: n/c).")
    else:
        if changing:
            lines.append(f"- **Not comparable**: the overrides `{' '.join(changing)}` change the published recipe "
                         f"(diff: n/c).")
        lines.append("- CIFAR-10 note: if data.root holds the CIFAR-10 rebuilt from the JPEG copy in shared/data "
                     "(quality 75; pixels differ from the original release by a few levels), accuracies are "
                     "comparable to, not identical with, the published ones: measure the CE baseline on the same "
                     "copy to see the offset.")
    lines.append("")
    for rho in p.rhos:
        lines += [f"## rho = {rho}", "",
                  "| method | seeds | top-1 (mean ± std) | many | medium | few | published | diff |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for e in (e for e in summary if e["rho"] == rho):
            pub = e["published"]
            if e["top1"] is None or pub is None:
                diff = "-"
            elif not comparable:
                diff = "n/c"
            else:
                diff = f"{e['top1'] - pub:+.2f}"
            seeds = f"{e['seeds']}" + (f" ({len(e['failures'])} failed)" if e["failures"] else "") \
                + (f" ({e['missing']} not run)" if e["missing"] and e["seeds"] else "")
            lines.append(f"| {e['label']} | {seeds} | {_fmt(e['top1'], e['top1_std'])} | {_fmt(e['many'])} | "
                         f"{_fmt(e['medium'])} | {_fmt(e['few'])} | {_fmt(pub)} | {diff} |")
        lines.append("")
    notes = []
    if t.note:
        notes.append(t.note)
    for row in t.rows:
        if row.note:
            notes.append(f"{row.label}: {row.note}")
    for e in summary:
        for n in e["notes"]:
            notes.append(f"{e['label']} (rho {e['rho']}): {n}.")
        for reason in sorted(set(e["failures"])):
            k = e["failures"].count(reason)
            notes.append(f"{e['label']} (rho {e['rho']}): {k} run(s) without result: {reason}")
    notes.append("many / medium / few: classes with > 100, 20..100, < 20 training images; '-' where a group "
                 "has no class or no run finished. std: sample std over seeds (ddof 1).")
    lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["<details><summary>Run folders</summary>", ""]
    for e in summary:
        walls = "" if e["wall_time_s"] is None else f" (mean wall time per seed {e['wall_time_s']:.0f} s)"
        lines.append(f"- rho {e['rho']}, {e['label']}{walls}: " + ", ".join(f"`{r}`" for r in e["runs"]))
    lines += ["", "</details>", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------
def make_figures(p: Plan, out: Path, echo=print) -> List[Path]:
    """Draw the table's figures (first seed, each rho) from finished runs; problems only warn."""
    made: List[Path] = []
    if not p.table.figures:
        return made
    try:
        from .analysis import figures as fig
    except ImportError as err:  # matplotlib / scikit-learn missing
        echo(f"  figures skipped: {err}")
        return made
    index = {row.label: i for i, row in enumerate(p.table.rows)}
    note = None if p.data_name == PUBLISHED_DATA and not comparability(p.data_name, p.user_overrides)[1] else \
        f"data.name={p.data_name}; overrides: {' '.join(p.user_overrides) or 'none'}"
    for spec in p.table.figures:
        for rho in p.rhos:
            key = "stage1" if spec.kind in ("feature_norm", "tsne") else "cells"
            runs = [getattr(p, key)[(rho, index[lbl])][0] for lbl in spec.rows]
            if not all((r / "metrics.json").is_file() for r in runs):
                echo(f"  figure {spec.name} (rho {rho}) skipped: not every run finished")
                continue
            path = out / f"{spec.name}_rho{rho}.png"
            title = f"Table {p.table.id}, rho={rho}, seed {p.seeds[0]}: {spec.caption}"
            try:
                if spec.kind == "per_class":
                    fig.plot_per_class_error(runs, path, labels=list(spec.rows), title=title, note=note)
                elif spec.kind == "feature_norm":
                    fig.plot_feature_norms(runs, path, labels=list(spec.rows), title=title, note=note)
                elif spec.kind == "tsne":
                    fig.plot_tsne(runs, path, labels=list(spec.rows), title=title, note=note)
                made.append(path)
                echo(f"  figure: {path}")
            except Exception as err:  # a figure never fails the reproduction
                echo(f"  figure {spec.name} (rho {rho}) failed: {type(err).__name__}: {err}")
    return made


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------
def format_list() -> str:
    """The registered tables, their rows, recipes and published numbers."""
    out = []
    for t in TABLES.values():
        n1 = len({(r.recipe, r.overrides) for r in t.rows})
        n2 = len({(r.recipe, r.overrides, r.stage2) for r in t.rows if r.two_stage})
        out.append(f"Table {t.id}: {t.title}")
        out.append(f"  rho {', '.join(map(str, t.rhos))}; per seed and rho: {n1} stage-1 run(s)"
                   + (f" + {n2} stage-2 run(s)" if n2 else "") + f"; source: {t.source}")
        for r in t.rows:
            pub = ", ".join(f"rho {k}: {'-' if v is None else f'{v:.2f}'}" for k, v in sorted(r.published.items(),
                                                                                           reverse=True))
            s2 = "" if r.stage2 is None else f" + retrain {' '.join(r.stage2) or '(recipe stage2)'}"
            extra = f" {' '.join(r.overrides)}" if r.overrides else ""
            out.append(f"    {r.label:<30} {r.recipe}{extra}{s2}  [{pub}]")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def main(args) -> int:
    """``longtail reproduce``: run a table's rows and write ``<out>/table_<id>.md``.

    Args:
        args: Namespace with ``table`` (id or ``list``), ``overrides`` (``key=value`` list),
            ``seeds`` (ints), ``rho`` (ints or None: the table's), ``out`` (folder), ``jobs``
            (processes at once), ``rows`` (label patterns: train only these rows; None: all) and
            ``dry_run`` (print the commands only).

    Returns:
        0 when every run finished, 1 when some failed (the table is written anyway).
    """
    if str(args.table).strip().lower() == "list":
        print(format_list(), end="")
        return 0
    table = get_table(args.table)
    out = Path(args.out)
    t0 = time.perf_counter()
    rows = getattr(args, "rows", None)
    p = plan(table, args.seeds, args.rho, list(args.overrides or []), out, rows=rows)
    if args.dry_run:
        n_done = sum(j.state == "done" for j in p.jobs)
        print(f"# Table {table.id}: {len(p.jobs)} runs ({n_done} finished, reused); "
              f"rho {', '.join(map(str, p.rhos))}; seeds {', '.join(map(str, p.seeds))}")
        for recipe, sc in p.scaled.items():
            print(f"# {recipe}: epoch-valued keys scaled: {' '.join(sc)}")
        for j in p.jobs:
            print(("# finished: " + str(j.run_dir)) if j.state == "done" else j.command())
        return 0
    todo = [j for j in p.jobs if j.state != "done"]
    n_jobs = resolve_jobs(args.jobs, len(todo))
    print(f"Table {table.id}: {len(p.jobs)} runs, {len(p.jobs) - len(todo)} finished already; "
          f"running {len(todo)} with --jobs {n_jobs}{' (auto)' if args.jobs == 'auto' else ''}")
    failed = run_jobs(p.jobs, n_jobs)
    wall = time.perf_counter() - t0
    summary = summarize_plan(p)
    out.mkdir(parents=True, exist_ok=True)
    cmd = "longtail reproduce " + shlex.join([table.id, *p.user_overrides]) + \
        f" --seeds {' '.join(map(str, p.seeds))} --rho {' '.join(map(str, p.rhos))} --out {out}"
    if rows:
        cmd += " --rows " + shlex.join(rows)
    text = format_markdown(p, summary, wall_s=wall, command=cmd)
    path = out / f"table_{table.id}.md"
    path.write_text(text)
    print(text)
    print(f"table written: {path}")
    make_figures(p, out)
    return 1 if failed else 0
