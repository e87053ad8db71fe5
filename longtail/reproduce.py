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
* Resumable: a run folder holding ``metrics.json`` is reused; a stage-1 folder with a checkpoint
  is continued with ``longtail train --resume``; an unfinished stage-2 folder (stage 2 has no
  resume) is removed and re-run. Do not run two ``reproduce`` commands on one ``--out`` at once.
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
* The published numbers are CIFAR-10-LT top-1 accuracies (ResNet-32). When the runs use other
  data (the synthetic set) or overrides that change the published recipe, the table says so in
  its header and shows ``n/c`` (not comparable) instead of the difference.

Published numbers: each table carries the numbers printed in *that* table of the thesis (LI
Mengke, "Advances in Long-Tailed Visual Recognition", 2022; Tables 3.2 and 3.4 print top-1
*error*, converted here as ``100 - error``). The CE baseline was measured separately per chapter:
70.36 / 75.22 in Table 3.2, 71.07 / 75.31 in Table 4.2 and 65.68 / 70.70 / 74.81 in Table 5.2;
each table is compared with its own.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .config import EPOCH_KEYS_STAGE1, EPOCH_KEYS_STAGE2, load_config, parse_override, scaled_epoch_overrides
from .errors import ConfigError
from .jobs import Job, job_state, resolve_jobs, run_jobs

__all__ = ["Row", "Table", "FigureSpec", "TABLES", "get_table", "plan", "format_markdown", "main"]

#: The data protocol every published number here refers to.
PUBLISHED_DATA = "cifar10_lt"

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
# The table registry
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One method (one line) of a thesis table.

    Attributes:
        label: The method as the thesis names it.
        recipe: Recipe of the stage-1 run (``cifar10_lt/gcl``).
        published: Published top-1 (%) per imbalance ratio; only the ratios the thesis reports,
            ``None`` where it prints "-".
        overrides: Extra stage-1 overrides of this row.
        stage2: Overrides of the stage-2 run (``longtail retrain``), or ``None`` for a one-stage
            method; ``()`` re-trains with the recipe's own ``stage2`` block.
        note: A remark printed under the table.
    """

    label: str
    recipe: str
    published: Mapping[int, Optional[float]]
    overrides: Tuple[str, ...] = ()
    stage2: Optional[Tuple[str, ...]] = None
    note: str = ""

    @property
    def two_stage(self) -> bool:
        """Whether the row re-trains the classifier of its stage-1 run."""
        return self.stage2 is not None


@dataclass(frozen=True)
class FigureSpec:
    """A figure drawn from a table's runs once they have finished.

    Attributes:
        kind: ``per_class`` (per-class error bars), ``feature_norm`` (feature-norm curves; needs
            ``eval.feature_norms=true``) or ``tsne`` (t-SNE of test features).
        rows: Labels of the rows compared.
        name: File stem; the figure goes to ``<out>/<name>_rho<rho>.png``.
        caption: What the figure corresponds to in the thesis.
    """

    kind: str
    rows: Tuple[str, ...]
    name: str
    caption: str


@dataclass(frozen=True)
class Table:
    """A thesis table: its rows and where its numbers come from.

    Attributes:
        id: Thesis table number, e.g. ``"5.6"``.
        title: What the table compares.
        source: Where the published numbers are printed.
        rows: The rows.
        overrides: Stage-1 overrides shared by every row (e.g. the batch size of the chapter).
        note: A remark printed under the table.
        figures: Figures drawn from the runs.
    """

    id: str
    title: str
    source: str
    rows: Tuple[Row, ...]
    overrides: Tuple[str, ...] = ()
    note: str = ""
    figures: Tuple[FigureSpec, ...] = ()

    @property
    def rhos(self) -> List[int]:
        """The imbalance ratios the thesis reports for this table, largest first."""
        return sorted({r for row in self.rows for r in row.published}, reverse=True)

    def row(self, label: str) -> Row:
        """The row labelled ``label``."""
        for r in self.rows:
            if r.label == label:
                return r
        raise KeyError(label)


_KPS_BATCH = ("data.batch_size=64",)  # Table 3.1: mini-batch 64 on CIFAR (the KPS chapter)
_GCL = "cifar10_lt/gcl"

TABLES: Dict[str, Table] = {
    t.id: t
    for t in (
        Table(
            id="3.2",
            title="CIFAR-10-LT main comparison of the KPS chapter: CE, LDAM-DRW, KPS with GA",
            source="thesis Table 3.2 (published as top-1 error; shown as 100 - error)",
            overrides=_KPS_BATCH,
            rows=(
                Row("CE", "cifar10_lt/ce", {100: 70.36, 50: 75.22}),
                Row("LDAM-DRW", "cifar10_lt/ldam_drw", {100: 77.03, 50: 81.03}),
                Row("KPS (with GA)", "cifar10_lt/kps_ga", {100: 81.23, 50: 84.59}),
            ),
            note="Batch 64 for every row (Table 3.1) unless a user override sets data.batch_size. The CE "
                 "baseline of this table (70.36 / 75.22) differs from Table 5.2's (70.70 / 74.81): the thesis "
                 "measured it per chapter.",
            figures=(FigureSpec("per_class", ("CE", "LDAM-DRW", "KPS (with GA)"), "fig3.8_per_class_error",
                                "per-class error rates (cf. thesis Figure 3.8)"),),
        ),
        Table(
            id="3.4",
            title="KPS optimisation strategies: KPS alone, KPS + DRW, KPS + GA",
            source="thesis Table 3.4 (published as top-1 error; shown as 100 - error)",
            overrides=_KPS_BATCH,
            rows=(
                Row("KPS w/o GA and DRW", "cifar10_lt/kps", {100: 80.15, 50: 83.60}),
                Row("KPS-DRW", "cifar10_lt/kps_drw", {100: 80.91, 50: 83.89}),
                Row("KPS-GA", "cifar10_lt/kps_ga", {100: 81.23, 50: 84.59}),
            ),
            note="Batch 64 for every row (Table 3.1) unless a user override sets data.batch_size.",
            figures=(FigureSpec("per_class", ("KPS w/o GA and DRW", "KPS-DRW", "KPS-GA"), "fig3.7_per_class_error",
                                "per-class error rates of the optimisation strategies (cf. thesis Figure 3.7)"),),
        ),
        Table(
            id="4.2",
            title="CIFAR-10-LT comparison of the FBL chapter: CE, LDAM-DRW, FBL",
            source="thesis Table 4.2",
            overrides=("eval.feature_norms=true",),
            rows=(
                Row("CE", "cifar10_lt/ce", {100: 71.07, 50: 75.31}),
                Row("LDAM-DRW", "cifar10_lt/ldam_drw", {100: 77.03, 50: 81.03}),
                Row("FBL", "cifar10_lt/fbl", {100: 82.46, 50: 84.30}),
            ),
            note="Runs log per-class test feature norms every epoch (eval.feature_norms=true; evaluation only). "
                 "The CE baseline of this table (71.07 / 75.31) differs from Table 5.2's: measured per chapter.",
            figures=(FigureSpec("feature_norm", ("CE", "FBL"), "fig4.2_feature_norms",
                                "feature norms of head and tail classes over epochs (cf. thesis Figure 4.2)"),),
        ),
        Table(
            id="4.4",
            title="FBL curricula alpha(t)",
            source="thesis Table 4.4",
            rows=(
                Row("Linear decrease", "cifar10_lt/fbl_linear_decrease", {100: 75.97}),
                Row("Linear increase", "cifar10_lt/fbl_linear_increase", {100: 81.67}),
                Row("Sine increase", "cifar10_lt/fbl_sine", {100: 81.22}),
                Row("Cosine increase", "cifar10_lt/fbl_cosine", {100: 80.79}),
                Row("Parabolic increase", "cifar10_lt/fbl", {100: 82.46}),
            ),
        ),
        Table(
            id="5.2",
            title="CIFAR-10-LT comparison of the GCL chapter",
            source="thesis Table 5.2",
            rows=(
                Row("CE", "cifar10_lt/ce", {200: 65.68, 100: 70.70, 50: 74.81}),
                Row("CE + mixup", "cifar10_lt/ce_mixup", {200: 65.84, 100: 72.96, 50: 79.48}),
                Row("LDAM-DRW", "cifar10_lt/ldam_drw", {200: 73.52, 100: 77.03, 50: 81.03}),
                Row("CE + mixup + cRT", "cifar10_lt/ce_mixup_crt", {200: 73.06, 100: 79.15, 50: 84.21}, stage2=()),
                Row("GCL (CBEN + cRT)", _GCL, {200: 79.03, 100: 82.68, 50: 85.46}, stage2=()),
            ),
            figures=(FigureSpec("tsne", ("CE", "GCL (CBEN + cRT)"), "fig5.4_tsne",
                                "t-SNE of test-set embeddings, CE vs GCL stage 1 (cf. thesis Figure 5.4)"),),
        ),
        Table(
            id="5.4",
            title="GCL cloud-size strategies (full two-stage GCL: CBEN sampler + cRT)",
            source="thesis Table 5.4",
            rows=(
                Row("Cosine", "cifar10_lt/gcl_cloud_cos", {100: 79.21}, stage2=()),
                Row("Power difference (exp. 1/3)", "cifar10_lt/gcl_cloud_cbrt", {100: 80.80}, stage2=()),
                Row("Power difference (exp. 1/4)", "cifar10_lt/gcl_cloud_qrt", {100: 82.31}, stage2=()),
                Row("Logarithm difference", _GCL, {100: 82.68}, stage2=()),
            ),
        ),
        Table(
            id="5.5",
            title="GCL stage-2 samplers (cRT), on the same GCL stage-1 runs",
            source="thesis Table 5.5",
            rows=(
                Row("Instance balance + cRT", _GCL, {100: 80.41}, stage2=("stage2.sampler.name=instance",)),
                Row("Class balance + cRT", _GCL, {100: 82.43}, stage2=("stage2.sampler.name=class_balanced",)),
                Row("Effective number + cRT", _GCL, {100: 82.47}, stage2=("stage2.sampler.name=effective_number",)),
                Row("CBEN + cRT", _GCL, {100: 82.68}, stage2=("stage2.sampler.name=cben",)),
            ),
        ),
        Table(
            id="5.6",
            title="GCL classifier re-training strategies, on the same GCL stage-1 runs",
            source="thesis Table 5.6",
            rows=(
                Row("w/o re-training", _GCL, {100: 80.52}, stage2=("stage2.method=none",)),
                Row("CBEN + LWS", _GCL, {100: 82.25}, stage2=("stage2.method=lws",)),
                Row("CBEN + tau-normalization", _GCL, {100: 82.16}, stage2=("stage2.method=tau_norm",),
                    note="GCL's stage-1 head is a cosine classifier; the thesis does not say how it "
                         "tau-normalized it. longtail normalizes the head's stored weights and scores "
                         "f . w_j / ||w_j||^tau on the unnormalized feature (tau = 1 ranks like the cosine "
                         "head); tau is chosen on the val split, or on the test split where there is none "
                         "(CIFAR), and then labelled so."),
                Row("CBEN + cRT", _GCL, {100: 82.68}, stage2=("stage2.method=crt",)),
            ),
        ),
    )
}


def _key_row(label: str, table_id: str, row_label: str, rho: int = 100, stage2: Tuple[str, ...] = (),
             note: str = "") -> Row:
    """A row of another table as a row of its own (the table's overrides folded into the row's)."""
    table = TABLES[table_id]
    row = table.row(row_label)
    s2 = None if row.stage2 is None else tuple(row.stage2) + tuple(stage2)
    return Row(label, row.recipe, {rho: row.published[rho]}, overrides=tuple(table.overrides) + tuple(row.overrides),
               stage2=s2, note=note or row.note)


#: The key rows every reproduction is read against first (``longtail reproduce key``): one line per
#: method of the thesis on CIFAR-10-LT, rho = 100, with its chapter's settings. The GCL rows share
#: one stage-1 run per seed.
KEY_TABLE = Table(
    id="key",
    title="Key rows of the thesis on CIFAR-10-LT, rho = 100",
    source="thesis Tables 3.2 (KPS), 4.2 (FBL), 5.2 (CE, LDAM-DRW) and 5.6 (GCL)",
    rows=(
        _key_row("CE", "5.2", "CE", note="The thesis measured CE per chapter: 70.70 (Table 5.2), 70.36 (Table 3.2), "
                                          "71.07 (Table 4.2). On the JPEG copy of CIFAR-10 it measures the copy's "
                                          "offset."),
        _key_row("LDAM-DRW", "5.2", "LDAM-DRW"),
        _key_row("KPS with GA (batch 64)", "3.2", "KPS (with GA)"),
        _key_row("FBL", "4.2", "FBL"),
        _key_row("GCL stage 1 only", "5.6", "w/o re-training"),
        _key_row("GCL + CBEN + cRT", "5.6", "CBEN + cRT"),
        _key_row("GCL + CBEN + cRT, classifier lr 0.002", "5.6", "CBEN + cRT", stage2=("stage2.lr=0.002",),
                 note="The authors' CIFAR stage-2 script peaks at a classifier lr of 0.002 in its latest version "
                      "and 0.008 in an earlier commit; the recipe uses 0.008. Same stage-1 runs."),
    ),
)
TABLES[KEY_TABLE.id] = KEY_TABLE


def get_table(table_id: str) -> Table:
    """The registered table ``table_id`` (``"5.6"``; ``"table_5.6"`` works too).

    Raises:
        ConfigError: An unknown id; the message lists the valid ones.
    """
    key = str(table_id).strip().lower().removeprefix("table").strip(" _")
    if key not in TABLES:
        raise ConfigError(f"unknown table '{table_id}'; valid: {', '.join(TABLES)} (or 'list')")
    return TABLES[key]


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


def plan(table: Table, seeds: Sequence[int], rhos: Optional[Sequence[int]], overrides: Sequence[str],
         out: Path) -> Plan:
    """Resolve every run of a table: folders, commands and what is already finished.

    Args:
        table: The table.
        seeds: Seeds.
        rhos: Imbalance ratios (None: those the table reports).
        overrides: User overrides, applied to every run.
        out: Output folder.

    Returns:
        The :class:`Plan`.

    Raises:
        ConfigError: A bad override (unknown key, wrong type) or an override reproduce sets itself.
    """
    user = _check_user_overrides(overrides)
    user_s2 = [o for o in user if _override_key(o).startswith("stage2.")]
    user_s1 = [o for o in user if not _override_key(o).startswith("stage2.")]
    rhos = list(rhos) if rhos else table.rhos
    seeds = list(seeds)
    if not seeds:
        raise ConfigError("reproduce: give at least one seed")
    p = Plan(table=table, rhos=rhos, seeds=seeds, user_overrides=list(user))
    jobs: Dict[Path, Job] = {}
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
                    state, note = job_state(dir1, 1, cfg1)
                    argv = (["train", "--resume", str(dir1)] if state == "resume" else
                            ["train", row.recipe, *s1_over, f"output_dir={folder}", f"name={name1}", "quiet=true"])
                    jobs[dir1] = Job(dir1, 1, argv, out / "logs" / f"{name1}.log", state=state, note=note)
                if scaled:
                    p.scaled.setdefault(row.recipe, scaled)
                s1cells.append(dir1)
                if not row.two_stage:
                    cell.append(dir1)
                    continue
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
                    state, note = job_state(dir2, 2)
                    argv = ["retrain", str(dir1), *s2_over, f"output_dir={folder}", f"name={name2}", "quiet=true"]
                    jobs[dir2] = Job(dir2, 2, argv, out / "logs" / f"{name2}.log", depends=dir1, state=state,
                                     note=note)
                cell.append(dir2)
            p.cells[(rho, ri)] = cell
            p.stage1[(rho, ri)] = s1cells
    ordered = [j for j in jobs.values() if j.stage == 1] + [j for j in jobs.values() if j.stage == 2]
    p.jobs = ordered
    return p


# ---------------------------------------------------------------------------------------------
# The markdown table
# ---------------------------------------------------------------------------------------------
def _read_metrics(run_dir: Path) -> Optional[dict]:
    try:
        return json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None


def _mean_std(values: Sequence[Optional[float]]) -> Tuple[Optional[float], Optional[float]]:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def _fmt(v: Optional[float], std: Optional[float] = None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def comparability(data_name: str, overrides: Sequence[str]) -> Tuple[bool, List[str]]:
    """Whether measured numbers are comparable with the published ones, and the overrides that
    change the published recipe."""
    changing = [o for o in overrides
                if not any(_override_key(o) == b or _override_key(o).startswith(b + ".") for b in BENIGN_PREFIXES)]
    return data_name == PUBLISHED_DATA and not changing, changing


def summarize_plan(p: Plan) -> List[dict]:
    """Per (rho, row): measured means over the seeds' ``metrics.json`` and failures.

    Returns:
        Dicts with ``rho``, ``row`` (:class:`Row`), ``label``, ``seeds`` (finished runs),
        ``top1``/``top1_std``, ``many``, ``medium``, ``few``, ``published``, ``failures``
        (reasons), ``runs`` (folders), ``wall_time_s`` (mean per seed, stage 1 + stage 2) and
        ``notes`` (e.g. tau chosen on the test split).
    """
    by_dir = {j.run_dir: j for j in p.jobs}
    out = []
    for rho in p.rhos:
        for ri, row in enumerate(p.table.rows):
            runs = p.cells[(rho, ri)]
            s1 = p.stage1[(rho, ri)]
            metrics, failures, walls, notes = [], [], [], []
            for r, r1 in zip(runs, s1):
                m = _read_metrics(r)
                if m is None:
                    job = by_dir.get(r)
                    failures.append(job.reason if job is not None and job.reason else "not run")
                    continue
                metrics.append(m)
                wall = m.get("wall_time_s") or 0.0
                if r != r1:
                    m1 = _read_metrics(r1)
                    wall += (m1 or {}).get("wall_time_s") or 0.0
                walls.append(wall)
                if m.get("tau_selected_on") == "test":
                    notes.append("tau chosen on the test split (no val split)")
            entry = {"rho": rho, "row": row, "label": row.label, "seeds": len(metrics), "runs": runs,
                     "published": row.published.get(rho), "failures": failures,
                     "wall_time_s": statistics.fmean(walls) if walls else None, "notes": sorted(set(notes))}
            for key in ("top1", "many", "medium", "few"):
                mean, std = _mean_std([m.get(key) for m in metrics])
                entry[key], entry[f"{key}_std"] = mean, std
            out.append(entry)
    return out


def _machine(rows: Sequence[dict]) -> str:
    for entry in rows:
        for r in entry["runs"]:
            m = _read_metrics(r)
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
    lines.append(f"- Published numbers: {t.source}; CIFAR-10-LT, ResNet-32, top-1 %.")
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
        lines.append(f"- **Not CIFAR-10-LT**: these runs use data.name={p.data_name}. The thesis column shows the "
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
                  "| method | seeds | top-1 (mean ± std) | many | medium | few | thesis | diff |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for e in (e for e in summary if e["rho"] == rho):
            pub = e["published"]
            if e["top1"] is None or pub is None:
                diff = "-"
            elif not comparable:
                diff = "n/c"
            else:
                diff = f"{e['top1'] - pub:+.2f}"
            seeds = f"{e['seeds']}" + (f" ({len(e['failures'])} failed)" if e["failures"] else "")
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
            (processes at once) and ``dry_run`` (print the commands only).

    Returns:
        0 when every run finished, 1 when some failed (the table is written anyway).
    """
    if str(args.table).strip().lower() == "list":
        print(format_list(), end="")
        return 0
    table = get_table(args.table)
    out = Path(args.out)
    t0 = time.perf_counter()
    p = plan(table, args.seeds, args.rho, list(args.overrides or []), out)
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
    text = format_markdown(p, summary, wall_s=wall, command=cmd)
    path = out / f"table_{table.id}.md"
    path.write_text(text)
    print(text)
    print(f"table written: {path}")
    make_figures(p, out)
    return 1 if failed else 0
