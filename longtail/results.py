"""Measured results beside the thesis: collect finished runs, generate ``docs/results.md``.

Finished runs keep only their small files in the repository, one folder per machine (the
*source*)::

    results/<source>/<any sub-folders>/<run>/{config.yaml, log.jsonl, metrics.json}

``longtail results collect RUNS --into results/<source>`` copies them from a ``longtail
reproduce --out RUNS`` folder (never the checkpoints). ``longtail results page`` writes
``docs/results.md`` from every source: for each key row of the thesis
(:data:`longtail.thesis_tables.KEY_TABLE`, ``longtail reproduce key``) and each cell of the
registered tables (:data:`longtail.thesis_tables.TABLES`) it finds the runs whose saved
configuration is the row's published recipe, and prints the thesis number, the measured mean ±
std over seeds (:func:`longtail.report.aggregate`), the difference, many / medium / few, the
machine, the precision, the wall time and the command. A run matches a row when its ``config.yaml`` equals the config ``longtail reproduce``
resolves for that row, rho and seed, except for keys that do not change what is computed (where
the data lies, precision, evaluation frequency: :data:`longtail.reproduce.BENIGN_PREFIXES`); a
row that sets the precision itself (``amp=none``) takes only runs trained in it.
Hand-written findings (why a row misses) live in ``results/notes.md`` and are included verbatim.
Runs kept under a ``*-probes`` folder (:data:`PROBE_SUFFIX`) answer one-off questions of those
findings; the page lists them with their commands but never matches them to a row.
"""
from __future__ import annotations

import filecmp
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .config import flatten, key_under, load_config, parse_override
from .errors import DataError, LongTailError
from .report import DEFAULT_METRICS, aggregate, load_runs
from .reproduce import BENIGN_PREFIXES, same_run
from .thesis_tables import KEY_RHO, KEY_TABLE, PER_CLASS_TABLE, TABLES, Row, Table

__all__ = ["SMALL_FILES", "collect", "find_runs", "row_configs", "summarize_cell", "key_rows_summary",
           "per_class_summary", "run_confusion", "format_page", "main"]

#: A run's later evaluation of its final model (``longtail eval RUN --out RUN/eval-test.json``): where
#: ``metrics.json`` predates the confusion matrix, the page takes it from here.
EVAL_FILE = "eval-test.json"
#: The files of a run kept in the repository (the last one where there is one).
SMALL_FILES = ("config.yaml", "log.jsonl", "metrics.json", EVAL_FILE)

#: Runs under a folder whose name ends in this are probes: one-off questions read in
#: ``results/notes.md`` (a stage 2 with other settings, a recipe trained on a re-encoded copy of the
#: data by ``benchmarks/recompress_cifar.py``). They are kept in the repository but never matched
#: to a row, as where the data lies (``data.root``) does not decide a match.
PROBE_SUFFIX = "-probes"

#: Config keys (dotted prefixes) that never decide whether a run matches a row.
IGNORED_KEYS = ("name", "output_dir", "quiet", "seed", "stage2.cache_features") + tuple(BENIGN_PREFIXES)

#: Left-out keys that do change the numbers a little (the precision): they decide a match where a
#: row sets them itself, and otherwise rank the runs that match (:func:`find_runs`).
PRECISION_KEYS = ("amp",)


# ---------------------------------------------------------------------------------------------
# Collecting run files
# ---------------------------------------------------------------------------------------------
def collect(src: Path, dest: Path) -> List[Path]:
    """Copy the small files of every finished run under ``src`` into ``dest``.

    A run is finished when it holds ``metrics.json`` and ``config.yaml``; its folder keeps its
    path relative to ``src``. :data:`SMALL_FILES` are copied (``eval-test.json`` where the run has
    one); checkpoints and other files never are.

    Args:
        src: A run folder or a folder of runs (``longtail reproduce --out``).
        dest: The source folder in the repository, e.g. ``results/cpu-2core``.

    Returns:
        The run folders written or already present under ``dest``.

    Raises:
        DataError: ``src`` does not exist or holds no finished run, or ``dest`` already holds a
            different result for one of the runs (measured results are never overwritten).
    """
    src, dest = Path(src), Path(dest)
    if not src.exists():
        raise DataError(f"{src}: no such folder")
    runs = sorted({p.parent for p in src.rglob("metrics.json") if (p.parent / "config.yaml").is_file()})
    if not runs:
        raise DataError(f"{src}: no finished run (a folder with metrics.json and config.yaml)")
    out = []
    for run in runs:
        target = dest / (run.relative_to(src) if run != src else Path(run.name))
        for name in SMALL_FILES:
            f, t = run / name, target / name
            if not f.is_file():
                continue
            if t.exists() and not filecmp.cmp(f, t, shallow=False):
                raise DataError(f"{t} already exists with different content; remove it by hand to replace it "
                                f"with {f}")
        target.mkdir(parents=True, exist_ok=True)
        for name in SMALL_FILES:
            if (run / name).is_file():
                shutil.copyfile(run / name, target / name)
        out.append(target)
    return out


# ---------------------------------------------------------------------------------------------
# Matching runs to rows
# ---------------------------------------------------------------------------------------------
def same_computation(expected: dict, saved: dict, stage: int, significant: Sequence[str] = ()) -> bool:
    """Whether a saved run config computes what ``expected`` computes: :func:`same_run` with the
    keys that only say where or how fast a run goes (:data:`IGNORED_KEYS`) left out as well. Keys
    under a prefix in ``significant`` are compared even so (a row that sets ``amp=none`` measures
    fp32)."""
    return same_run(expected, saved, stage, ignore=IGNORED_KEYS, significant=significant)


def _row_precision(table: Table, row: Row) -> Tuple[str, ...]:
    """The precision keys (:data:`PRECISION_KEYS`) the table or the row sets itself: a row that sets
    ``amp=none`` measures float32 and matches float32 runs only."""
    keys = [parse_override(o)[0] for o in tuple(table.overrides) + tuple(row.overrides) + tuple(row.stage2 or ())]
    return tuple(k for k in keys if key_under(k, PRECISION_KEYS))


def _agreement(expected: dict, run: dict) -> int:
    """How many precision keys a run shares with ``expected``: among the runs that match a row and
    seed, one trained in the row's own precision (``amp: auto`` where the row does not set it) is
    taken before one trained in another."""
    a, b = flatten(expected), flatten(run["config"])
    return sum(a[k] == b[k] for k in a.keys() & b.keys() if key_under(k, PRECISION_KEYS))


def row_configs(table: Table, row: Row, rho: int, seed: int, stage2: Sequence[str] = ()) -> Tuple[dict, Optional[dict]]:
    """The stage-1 and stage-2 configs ``longtail reproduce`` runs for a row (published schedule).

    Returns:
        ``(stage-1 config, stage-2 config or None for a one-stage row)``.
    """
    fixed = list(table.overrides) + list(row.overrides) + [f"data.imbalance_ratio={rho}", f"seed={seed}"]
    cfg1 = load_config(row.recipe, fixed)
    if not row.two_stage:
        return cfg1, None
    return cfg1, load_config(base=cfg1, overrides=list(row.stage2) + list(stage2))


def find_runs(runs: Sequence[dict], table: Table, row: Row, rho: int,
              stage2: Sequence[str] = ()) -> List[Tuple[dict, Optional[dict]]]:
    """The runs (from :func:`longtail.report.load_runs`) of one row at one rho, one per seed.

    Returns:
        ``(run, its stage-1 run or None)`` per seed, by seed; for a one-stage row the run is the
        stage-1 run and the second item is None. Precision (``amp``) does not decide a match unless
        the row sets it; where several runs match one seed, the first in the row's own precision
        is used, then the first by path.
    """
    seeds = sorted({int(r["metrics"].get("seed", r["config"].get("seed", -1))) for r in runs})
    own = _row_precision(table, row)
    out = []
    for seed in seeds:
        if seed < 0:
            continue
        cfg1, cfg2 = row_configs(table, row, rho, seed, stage2)
        want_stage = 1 if cfg2 is None else 2
        cands = [r for r in runs if int(r["metrics"].get("stage", 1)) == want_stage
                 and int(r["metrics"].get("seed", r["config"].get("seed", -1))) == seed]
        stage1 = [r for r in runs if int(r["metrics"].get("stage", 1)) == 1 and r["config"].get("seed") == seed
                  and same_computation(cfg1, r["config"], 1, own)]
        stage1.sort(key=lambda r: -_agreement(cfg1, r))  # stable: by path among equals
        if cfg2 is None:
            match = stage1[:1]
            if match:
                out.append((match[0], None))
            continue
        match = sorted((r for r in cands if same_computation(cfg2, r["config"], 2, own)),
                       key=lambda r: -_agreement(cfg2, r))
        if match:
            parent = _stage1_of(match[0], stage1)
            out.append((match[0], parent))
    return out


def _stage1_of(run2: dict, stage1: Sequence[dict]) -> Optional[dict]:
    """The stage-1 run a stage-2 run re-trained: by the folder name it records, else the first match."""
    name = Path(str(run2["metrics"].get("stage1_run", ""))).name
    for r in stage1:
        if Path(r["path"]).name == name:
            return r
    return stage1[0] if stage1 else None


# ---------------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------------
def _precision(run: dict) -> str:
    m = run["metrics"]
    if m.get("precision"):
        return str(m["precision"])
    return f"amp={run['config'].get('amp', '?')} (not recorded)"


def _machine(run: dict) -> str:
    m = run["metrics"]
    if m.get("machine"):
        return str(m["machine"])
    v = m.get("versions") or {}
    return f"{v.get('gpu') or m.get('device', '?')}; torch {v.get('torch', '?')}"


def summarize_cell(matches: Sequence[Tuple[dict, Optional[dict]]], published: Optional[float]) -> dict:
    """Mean ± std over the seeds of one cell (:func:`longtail.report.aggregate`), with provenance.

    Returns:
        ``seeds``, ``seed_list``, ``runs`` (paths), ``top1``/``top1_std``, ``many``, ``medium``,
        ``few`` (with ``_std``), ``wall_time_s`` (mean per seed, stage 1 + stage 2),
        ``published``, ``diff`` (measured mean - published), ``machines``, ``precisions`` and
        ``notes``.
    """
    ms = [m for m, _ in matches]
    e: Dict[str, Any] = aggregate(ms, DEFAULT_METRICS, stage1=[p for _, p in matches])
    e["published"] = published
    e["diff"] = None if e["top1"] is None or published is None else e["top1"] - published
    e["machines"] = sorted({_machine(m) for m in ms})
    # the training's precision: the stage-1 run's where it recorded one
    e["precisions"] = sorted({_precision(p if p is not None and p["metrics"].get("precision") else m)
                              for m, p in matches})
    notes = []
    if any(m["metrics"].get("tau_selected_on") == "test" for m in ms):
        notes.append("tau chosen on the test split (CIFAR has no val split)")
    e["notes"] = notes
    return e


def load_sources(root: Path, probes: bool = False) -> Dict[str, List[dict]]:
    """The runs of every source folder under ``root`` (``results/``), by source name.

    Args:
        root: The ``results/`` folder.
        probes: Return only the probes (runs under a ``*-probes`` folder, :func:`is_probe`)
            instead of every run but them.
    """
    return split_sources(root)[1 if probes else 0]


def split_sources(root: Path) -> Tuple[Dict[str, List[dict]], Dict[str, List[dict]]]:
    """``(runs, probes)`` of every source folder under ``root``, each by source name, read once:
    what :func:`load_sources` returns without and with ``probes``."""
    root = Path(root)
    runs: Dict[str, List[dict]] = {}
    probes: Dict[str, List[dict]] = {}
    if not root.is_dir():
        return runs, probes
    for src in sorted(p for p in root.iterdir() if p.is_dir()):
        if any(src.rglob("metrics.json")):
            runs[src.name] = []
            for r in load_runs(src):
                (probes.setdefault(src.name, []) if is_probe(r["path"], src) else runs[src.name]).append(r)
    return runs, probes


def is_probe(run_path: str | Path, source: Path) -> bool:
    """Whether a run lies under a ``*-probes`` folder of its source (:data:`PROBE_SUFFIX`)."""
    path, source = Path(run_path).resolve(), Path(source).resolve()
    parts = path.relative_to(source).parts if path.is_relative_to(source) else path.parts
    return any(part.endswith(PROBE_SUFFIX) for part in parts)


def key_rows_summary(sources: Dict[str, List[dict]]) -> List[dict]:
    """One entry per key row and source that has runs for it (or one 'not yet run' entry)."""
    out = []
    for row in KEY_TABLE.rows:
        published = row.published.get(KEY_RHO)
        found = False
        for name, runs in sources.items():
            matches = find_runs(runs, KEY_TABLE, row, KEY_RHO)
            if matches:
                found = True
                out.append({"row": row, "source": name, **summarize_cell(matches, published)})
        if not found:
            out.append({"row": row, "source": None, "seeds": 0, "published": published})
    return out


def per_class_summary(sources: Dict[str, List[dict]]) -> List[dict]:
    """Per-class top-1 of the key rows against the thesis's per-class table (Table 4.5).

    For each row of :data:`longtail.thesis_tables.PER_CLASS_TABLE` that prints per-class numbers at
    :data:`KEY_RHO`, every key row trained with the same recipe (its variants too: fp32, another batch
    size, another ``A``) that has runs in a source gives one entry: the per-class accuracies, averaged
    over its seeds, beside the published ones.

    Returns:
        Dicts with ``reference`` (the thesis row), ``row`` (the key row), ``source``, ``seeds``,
        ``names`` (class names, or indices), ``published``, ``measured`` and ``diff`` (per class).
    """
    out = []
    for ref in TABLES[PER_CLASS_TABLE].rows:
        published = ref.per_class.get(KEY_RHO)
        if not published:
            continue
        for kr in (r for r in KEY_TABLE.rows if r.recipe == ref.recipe and not r.two_stage):
            for name, runs in sources.items():
                matches = find_runs(runs, KEY_TABLE, kr, KEY_RHO)
                per_run = [m["metrics"].get("per_class") or [] for m, _ in matches]
                per_run = [pc for pc in per_run if len(pc) == len(published)]
                if not per_run:
                    continue
                measured = [sum(pc[c]["accuracy"] for pc in per_run) / len(per_run) for c in range(len(published))]
                out.append({"reference": ref, "row": kr, "source": name, "seeds": len(per_run),
                            "names": [str(e.get("name", e["class"])) for e in per_run[0]],
                            "published": list(published), "measured": measured,
                            "diff": [m - p for m, p in zip(measured, published)]})
    return out


def run_confusion(run: dict) -> Optional[dict]:
    """The metrics of a run's final model that hold a confusion matrix, or ``None``.

    ``metrics.json``'s own where it has one; otherwise the run folder's :data:`EVAL_FILE`, when that
    evaluated the same epoch of the same stage on the same split and found the same top-1 (so it
    is the same model; anything else is ignored, never mixed in).
    """
    m = run["metrics"]
    if m.get("confusion") is not None:
        return m
    path = Path(run["path"]) / EVAL_FILE
    if not path.is_file():
        return None
    try:
        e = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable ({err})") from None
    same = all(e.get(k) == m.get(k) for k in ("epoch", "stage", "split")) and e.get("top1") == m.get("top1")
    return e if same and e.get("confusion") is not None else None


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------
def _f(v: Optional[float], std: Optional[float] = None, signed: bool = False) -> str:
    if v is None:
        return "-"
    s = f"{v:+.2f}" if signed else f"{v:.2f}"
    return s + (f" ± {std:.2f}" if std is not None else "")


def _wall(s: Optional[float]) -> str:
    if not s:
        return "-"
    return f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"


def _command(row: Row, seeds: Sequence[int]) -> str:
    """The commands that train one key row for its seeds (``data.root=DIR`` where the data lies)."""
    over = " ".join([*row.overrides, f"data.imbalance_ratio={KEY_RHO}"])
    seed = "{" + ",".join(map(str, seeds)) + "}" if len(seeds) > 1 else str(seeds[0] if seeds else 0)
    cmd = f"longtail train {row.recipe} {over} seed={seed} name=RUN"
    if row.two_stage:
        cmd += " && " + " ".join(["longtail retrain RUNS/RUN", *row.stage2])
    return cmd


def _per_class_section(sources: Dict[str, List[dict]]) -> List[str]:
    """The per-class comparison with the thesis's Table 4.5 (nothing when no run matches)."""
    entries = per_class_summary(sources)
    if not entries:
        return []
    names = entries[0]["names"]
    lines = [f"## Per class against the thesis (Table 4.5, rho = {KEY_RHO})", "",
             "Test top-1 (%) of each class, head (5,000 training images) to tail (50), final epoch, mean over seeds;",
             "each measured line is followed by its difference from the thesis line above it.", "",
             "| row | " + " | ".join(names) + " | mean | seeds |",
             "|---|" + "---:|" * (len(names) + 2)]
    shown = set()
    for e in entries:
        ref = e["reference"]
        if ref.label not in shown:
            shown.add(ref.label)
            lines.append(f"| **thesis {ref.label}** | " + " | ".join(f"{v:.1f}" for v in e["published"])
                         + f" | {sum(e['published']) / len(e['published']):.2f} | |")
        lines.append(f"| {e['row'].label} ({e['source']}) | " + " | ".join(f"{v:.1f}" for v in e["measured"])
                     + f" | {sum(e['measured']) / len(e['measured']):.2f} | {e['seeds']} |")
        lines.append("| diff | " + " | ".join(f"{v:+.1f}" for v in e["diff"])
                     + f" | {sum(e['diff']) / len(e['diff']):+.2f} | |")
    return lines + [""]


def _errors_section(sources: Dict[str, List[dict]], k: int = 4) -> List[str]:
    """The most frequent errors of each key row's final model (lowest seed), from its confusion matrix."""
    from .engine.metrics import top_confusions

    lines = []
    for row in KEY_TABLE.rows:
        for name, runs in sources.items():
            matches = find_runs(runs, KEY_TABLE, row, KEY_RHO)
            m = run_confusion(matches[0][0]) if matches else None
            if m is None:
                continue
            errors = sum(sum(r) for r in m["confusion"]) - sum(r[i] for i, r in enumerate(m["confusion"]))
            top = "; ".join(f"{e['true_name'] or e['true']} -> {e['pred_name'] or e['pred']} {e['count']}"
                            for e in top_confusions(m, k))
            lines.append(f"| {row.label} ({name}) | {matches[0][0]['metrics'].get('seed', '-')} | {errors:,} | {top} |")
    if not lines:
        return []
    return [f"## Most frequent errors of the final models (rho = {KEY_RHO})", "",
            f"Test images of the true class taken for the predicted one (of 1,000 per class), the {k} largest cells",
            f"of each key row's confusion matrix (its lowest seed; from `metrics.json`, or from `{EVAL_FILE}` where",
            "`longtail eval` evaluated the same final model later).", "",
            "| row | seed | test errors | most frequent errors (true -> predicted images) |",
            "|---|---:|---:|---|", *lines, ""]


def format_page(sources: Dict[str, List[dict]], notes: str = "",
                probes: Optional[Dict[str, List[dict]]] = None) -> str:
    """The text of ``docs/results.md``: ``sources`` and ``probes`` as :func:`load_sources` returns
    them (probes are only listed with their commands under "Run files")."""
    lines = [
        "# Results: measured beside the thesis",
        "",
        "<!-- Generated by `longtail results page` from the run files under results/. Do not edit by hand:",
        "     findings go in results/notes.md, the layout in longtail/results.py. -->",
        "",
        "Every number below was measured by this project on CIFAR-10-LT with the thesis's full schedules and",
        "comes from a run whose small files (`config.yaml`, `log.jsonl`, `metrics.json`) are committed under",
        "`results/<machine>/`. Top-1 is the **final epoch's** test accuracy (%), never a best checkpoint.",
        "many / medium / few: classes with > 100, 20..100, < 20 training images. std is over seeds (ddof 1).",
        "Wall time is per seed, stage 1 + stage 2, evaluation included, on the machine named.",
        "",
        "The CIFAR-10 here is rebuilt from the JPEG copy (quality 75) in `../shared/data`",
        "(`python3 ../shared/data/cifar10_from_jpeg.py DIR`), so a measured row is comparable to, not identical",
        "with, the published one; the CE row measures that copy's offset.",
        "",
        "Regenerate this page: `longtail results page` (after `longtail results collect RUNS --into results/<machine>`).",
        "",
        f"Sources: {', '.join(f'`results/{s}/` ({len(r)} runs)' for s, r in sources.items()) or 'none yet'}.",
        f"Runs under a `*{PROBE_SUFFIX}/` folder answer one-off questions in the findings and are not matched to rows.",
        "",
        "## Key rows: CIFAR-10-LT, rho = 100 (`longtail reproduce key`)",
        "",
        "| row | thesis | measured top-1 | diff | many | medium | few | seeds | machine | precision | wall time | command |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---|",
    ]
    key_notes = []
    for e in key_rows_summary(sources):
        kr = e["row"]
        if e["source"] is None:
            lines.append(f"| {kr.label} | {_f(e['published'])} | not yet run | - | - | - | - | 0 | - | - | - | "
                         f"`{_command(kr, [0])}` |")
            continue
        extra = "; ".join(e["notes"])
        lines.append(
            f"| {kr.label} | {_f(e['published'])} | {_f(e['top1'], e['top1_std'])}{' ('+extra+')' if extra else ''} | "
            f"{_f(e['diff'], signed=True)} | {_f(e['many'])} | {_f(e['medium'])} | {_f(e['few'])} | {e['seeds']} | "
            f"{'; '.join(e['machines'])} | {'; '.join(e['precisions'])} | {_wall(e['wall_time_s'])} | "
            f"`{_command(kr, e['seed_list'])}` |")
    for kr in KEY_TABLE.rows:
        if kr.note:
            key_notes.append(f"- {kr.label}: {kr.note}")
    lines += [""] + key_notes + [""]
    lines += _per_class_section(sources)
    lines += _errors_section(sources)
    if notes.strip():  # results/notes.md: findings, commands, known issues (its own headings)
        lines += [notes.strip(), ""]
    lines += ["## Every table", "",
              "Cells of the registered tables (`longtail reproduce list`) with measured runs; the key rows above are",
              "among them. The published column holds the number of the source named under each table's heading.", ""]
    for table in (t for t in TABLES.values() if t is not KEY_TABLE):
        lines += [f"### Table {table.id}: {table.title}", "", f"Published: {table.source}.", "",
                  "| method | rho | published | measured top-1 | diff | many | medium | few | seeds | source |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        any_cell = False
        for row in table.rows:
            for rho in sorted(row.published, reverse=True):
                for name, runs in sources.items():
                    matches = find_runs(runs, table, row, rho)
                    if not matches:
                        continue
                    any_cell = True
                    e = summarize_cell(matches, row.published.get(rho))
                    lines.append(f"| {row.label} | {rho} | {_f(e['published'])} | {_f(e['top1'], e['top1_std'])} | "
                                 f"{_f(e['diff'], signed=True)} | {_f(e['many'])} | {_f(e['medium'])} | {_f(e['few'])} | "
                                 f"{e['seeds']} | {name} |")
        if not any_cell:
            lines.append("| not yet run | | | | | | | | | |")
        lines.append("")
    lines += ["## Run files", ""]
    listed = [(f"`results/{name}/`", runs) for name, runs in sources.items()]
    listed += [(f"`results/{name}/`, probes (not matched to rows)", runs) for name, runs in (probes or {}).items()]
    for title, runs in listed:
        lines.append(f"- {title}:")
        for r in runs:
            m = r["metrics"]
            rel = Path(r["path"])
            cmd = " ".join(m["argv"]) if m.get("argv") else ""
            lines.append(f"  - `{rel.name}`: stage {m.get('stage', 1)}, seed {m.get('seed')}, top-1 {_f(m.get('top1'))}, "
                         f"{_wall(m.get('wall_time_s'))}, commit {m.get('git_commit') or '?'}"
                         + (f"; `longtail {cmd}`" if cmd else ""))
    lines.append("")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``longtail results collect|page``."""
    import argparse

    p = argparse.ArgumentParser(prog="longtail results", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("collect", help="copy the small files of finished runs into results/<machine>")
    c.add_argument("runs", help="a run folder or a folder of runs (longtail reproduce --out)")
    c.add_argument("--into", required=True, help="e.g. results/cpu-2core")
    g = sub.add_parser("page", help="write docs/results.md from results/")
    g.add_argument("--results", default="results")
    g.add_argument("--out", default="docs/results.md")
    args = p.parse_args(argv)
    try:
        return _run(args)
    except LongTailError as err:
        print(f"longtail: error: {err}", file=sys.stderr)
        return 2


def _run(args) -> int:
    if args.what == "collect":
        done = collect(Path(args.runs), Path(args.into))
        print(f"{len(done)} run(s) in {args.into}")
        return 0
    root = Path(args.results)
    notes_path = root / "notes.md"
    notes = notes_path.read_text(encoding="utf-8") if notes_path.is_file() else ""
    sources, probes = split_sources(root)
    text = format_page(sources, notes, probes=probes)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"written: {args.out}")
    return 0
