"""The ``longtail`` command line.

    longtail train [RECIPE] [key=value ...] [--resume RUN_DIR] [--quiet]
    longtail retrain STAGE1_RUN [key=value ...]
    longtail eval RUN_DIR [--split test] [--checkpoint PATH] [key=value ...]
    longtail report PATH [PATH ...] [--format markdown|csv] [--per-class]
    longtail recipes
    longtail constants [RECIPE] [key=value ...]
    longtail reproduce TABLE [key=value ...]
    longtail predict RUN_DIR IMAGE_OR_FOLDER... [--topk 5] [--out FILE.csv|FILE.json]
    longtail export RUN_DIR [--format onnx|torchscript] [--out PATH]
    longtail posthoc RUN_DIR --method logit_adjust|tau_norm [--tau T]
    longtail sweep RECIPE [RECIPE ...] --seeds 0 1 2 --jobs 3 [key=value ...]

With no recipe, ``longtail train`` runs the built-in synthetic long-tailed demo on the CPU in
about a minute. Every config key can be overridden with a dotted ``key=value``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import LongTailError


def _split_items(items: Sequence[str]) -> tuple[Optional[str], list[str]]:
    recipe, overrides = None, []
    for it in items:
        if "=" in it:
            overrides.append(it)
        elif recipe is None:
            recipe = it
        else:
            raise LongTailError(f"two recipes given ('{recipe}' and '{it}'); overrides look like key=value")
    return recipe, overrides


def cmd_train(args) -> int:
    from .config import load_config
    from .engine.trainer import train
    from .report import shot_table

    recipe, overrides = _split_items(args.items)
    if args.resume:
        if recipe or overrides:
            raise LongTailError("--resume continues a run with its saved config; give no recipe or overrides")
        run_dir, metrics = train({}, resume=Path(args.resume), quiet=args.quiet)
    else:
        if args.quiet:
            overrides.append("quiet=true")
        cfg = load_config(recipe, overrides)
        run_dir, metrics = train(cfg)
    print(shot_table(metrics))
    print(f"run folder: {run_dir}")
    return 0


def cmd_retrain(args) -> int:
    from .engine.stage2 import retrain
    from .report import shot_table

    overrides = list(args.overrides) + (["quiet=true"] if args.quiet else [])
    run_dir, metrics = retrain(Path(args.stage1), overrides)
    print(shot_table(metrics))
    print(f"run folder: {run_dir}")
    return 0


def _eval_out(text: str) -> Path:
    """``eval --out``: a JSON file path (checked before evaluating); its folder is created."""
    import os

    from .errors import ConfigError

    out = Path(text)
    if out.is_dir() or text.endswith(("/", os.sep)):
        raise ConfigError(f"--out {text} is a folder; give the path of a JSON file, e.g. --out {out / 'eval.json'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {text}: cannot create the folder {out.parent}: {err.strerror or err}") from None
    if not os.access(out.parent, os.W_OK):
        raise ConfigError(f"--out {text}: the folder {out.parent} is not writable")
    return out


def cmd_eval(args) -> int:
    import json

    from .engine.evaluation import evaluate_run
    from .report import shot_table

    out = _eval_out(args.out) if args.out else None
    metrics = evaluate_run(Path(args.run), split=args.split, checkpoint=args.checkpoint, overrides=args.overrides,
                           out=out)
    print(shot_table(metrics))
    if metrics.get("confusion") is not None:
        from .engine.metrics import top_confusions

        top = top_confusions(metrics, k=args.confusions)
        if top:
            print("\nmost frequent errors (true -> predicted: test images, % of the true class):")
            for e in top:
                true, pred = e["true_name"] or e["true"], e["pred_name"] or e["pred"]
                print(f"  {true} -> {pred}: {e['count']} ({e['percent']:.1f} %)")
    if args.json:
        print(json.dumps({k: v for k, v in metrics.items() if k not in ("per_class", "confusion")}, indent=1))
    if getattr(args, "save_logits", False):
        from .posthoc import save_outputs

        saved = save_outputs(Path(args.run), metrics.get("split") or args.split or "test", overrides=args.overrides)
        print(f"logits, features and targets: {saved}")
    return 0


def cmd_report(args) -> int:
    from .report import format_per_class, format_table, load_runs, per_class_rows, summarize

    runs = load_runs([Path(p) for p in args.paths])
    rows = summarize(runs)
    if args.per_class:
        print(format_per_class(rows, per_class_rows(runs, rows), fmt=args.format), end="")
    else:
        print(format_table(rows, fmt=args.format))
    return 0


def cmd_recipes(args) -> int:
    from .config import list_recipes

    print("\n".join(list_recipes()))
    return 0


def cmd_constants(args) -> int:
    from .config import load_config
    from .data.lt import train_class_counts
    from .losses import build_loss
    from .losses.constants import format_constants

    recipe, overrides = _split_items(args.items)
    cfg = load_config(recipe, overrides)
    counts = train_class_counts(cfg["data"])
    loss = build_loss(cfg["loss"]["name"], counts, **cfg["loss"]["params"])
    print(format_constants(loss, counts))
    return 0


def cmd_predict(args) -> int:
    from .predict import main_predict

    main_predict(args.run, args.images, topk=args.topk, out=args.out, stage1=args.stage1)
    return 0


def cmd_export(args) -> int:
    from .export import main_export

    main_export(args.run, args.format, out=args.out, stage1=args.stage1)
    return 0


def cmd_posthoc(args) -> int:
    from .posthoc import main_posthoc

    main_posthoc(args.run, args.method, tau=args.tau, split=args.split, select_on=args.select_on,
                 overrides=args.overrides, stage1=args.stage1)
    return 0


def cmd_reproduce(args) -> int:
    from .reproduce import main as reproduce_main

    return reproduce_main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="longtail", description="Long-tailed visual recognition: train, re-train, evaluate, report.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train stage 1 (no recipe: the synthetic CPU demo)")
    t.add_argument("items", nargs="*", help="RECIPE (e.g. cifar10_lt/gcl) and key=value overrides")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    t.add_argument("--quiet", action="store_true", help="no progress bars (clusters)")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("retrain", help="stage 2: re-train the classifier of a finished stage-1 run")
    r.add_argument("stage1", metavar="STAGE1_RUN")
    r.add_argument("overrides", nargs="*", help="key=value overrides, e.g. stage2.method=lws")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_retrain)

    e = sub.add_parser("eval", help="evaluate a run folder's checkpoint")
    e.add_argument("run", metavar="RUN_DIR")
    e.add_argument("overrides", nargs="*")
    e.add_argument("--split", choices=["test", "val", "train"])
    e.add_argument("--checkpoint")
    e.add_argument("--out", help="write the metrics to this JSON file")
    e.add_argument("--json", action="store_true", help="also print the metrics as JSON")
    e.add_argument("--confusions", type=int, default=8, metavar="K",
                   help="print the K most frequent errors from the confusion matrix (up to 100 classes; default 8)")
    e.add_argument("--save-logits", action="store_true",
                   help="keep the split's logits, features and targets in RUN_DIR/outputs-<split>.npz (longtail posthoc)")
    e.set_defaults(func=cmd_eval)

    rep = sub.add_parser("report", help="tables across run folders (mean +- std over seeds)")
    rep.add_argument("paths", nargs="+")
    rep.add_argument("--format", choices=["markdown", "csv"], default="markdown")
    rep.add_argument("--per-class", action="store_true",
                     help="one line per class: each group's per-class top-1 (mean +- std over seeds)")
    rep.set_defaults(func=cmd_report)

    rc = sub.add_parser("recipes", help="list the shipped recipes")
    rc.set_defaults(func=cmd_recipes)

    c = sub.add_parser("constants", help="print a loss's per-class constants for a dataset")
    c.add_argument("items", nargs="*", help="RECIPE and key=value overrides")
    c.set_defaults(func=cmd_constants)

    sub.add_parser("sweep", help="several runs (seeds, recipes) as concurrent processes: "
                                 "RECIPE... --seeds 0 1 2 --jobs 3 [key=value ...]")

    sub.add_parser("results", help="measured results: 'collect RUNS --into results/<machine>' copies finished runs' "
                                   "small files; 'page' writes docs/results.md from them")

    pr = sub.add_parser("predict", help="classify images with a run's final model (stage 2 when there is one)")
    pr.add_argument("run", metavar="RUN_DIR")
    pr.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    pr.add_argument("--topk", type=int, default=5)
    pr.add_argument("--out", help="also write the predictions to a .csv or .json file")
    pr.add_argument("--stage1", action="store_true", help="use the stage-1 model even when a stage-2 run exists")
    pr.set_defaults(func=cmd_predict)

    ex = sub.add_parser("export", help="write a run's final model as ONNX or TorchScript (normalized images -> logits)")
    ex.add_argument("run", metavar="RUN_DIR")
    ex.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    ex.add_argument("--out", help="output file (default RUN_DIR/model.onnx or model.pt)")
    ex.add_argument("--stage1", action="store_true", help="export the stage-1 model even when a stage-2 run exists")
    ex.set_defaults(func=cmd_export)

    ph = sub.add_parser("posthoc", help="post-hoc logit adjustment or tau-normalization of a finished run, no training")
    ph.add_argument("run", metavar="RUN_DIR")
    ph.add_argument("overrides", nargs="*", help="key=value overrides (e.g. data.root=...)")
    ph.add_argument("--method", choices=["logit_adjust", "tau_norm"], required=True)
    ph.add_argument("--tau", type=float, help="fixed tau (default: chosen on the val split, else on test, labelled)")
    ph.add_argument("--split", choices=["test", "val"], default="test", help="split the metrics are reported on")
    ph.add_argument("--select-on", choices=["val", "test"], help="split tau is chosen on (default val if any)")
    ph.add_argument("--stage1", action="store_true", help="use the stage-1 model even when a stage-2 run exists")
    ph.set_defaults(func=cmd_posthoc)

    rp = sub.add_parser("reproduce", help="run every row of a thesis table and write a markdown table")
    rp.add_argument("table", help="table id, e.g. 5.6, or 'list'")
    rp.add_argument("overrides", nargs="*")
    rp.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    rp.add_argument("--rho", type=int, nargs="+", default=None)
    rp.add_argument("--out", default="runs/reproduce")
    rp.add_argument("--jobs", default="auto",
                    help="runs at once: N, or auto (default: one single-threaded run per core on a CPU-only "
                         "machine, 1 on a GPU; see longtail.jobs)")
    rp.add_argument("--rows", nargs="+", metavar="PATTERN",
                    help="train only the rows whose label matches (the whole label or a shell-style pattern, "
                         "e.g. 'GCL*'; case-insensitive); the table still shows every row's finished runs")
    rp.add_argument("--dry-run", action="store_true", help="print the commands only")
    rp.set_defaults(func=cmd_reproduce)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["results"]:  # its own sub-commands (collect, page)
        from .results import main as results_main

        return results_main(argv[1:])
    if argv[:1] == ["sweep"]:  # its own parser (key=value overrides may come anywhere)
        from .sweep import main as sweep_main

        return sweep_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LongTailError as err:
        print(f"longtail: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("longtail: interrupted; the last finished epoch's checkpoint is kept (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
