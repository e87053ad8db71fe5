"""``python -m longtail.analysis RUN_DIR [RUN_DIR ...] --out DIR``: the thesis's analysis figures.

Draws, for the given run folders (compared side by side, one label each):

* ``per_class``: per-class error bars (Figures 3.7 / 3.8) -> ``<out>/<name>_per_class_error.png``;
* ``feature_norm``: head / tail feature norms over epochs (Figure 4.2; runs trained with
  ``eval.feature_norms=true``) -> ``<out>/<name>_feature_norms.png``;
* ``tsne``: t-SNE of test embeddings (Figure 5.4) -> ``<out>/<name>_tsne.png``.

Without ``--figures`` every figure whose data the runs hold is drawn and the others are skipped
with a message; a figure asked for explicitly that cannot be drawn is an error.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..errors import LongTailError
from . import figures as F

KINDS = ("per_class", "feature_norm", "tsne")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m longtail.analysis",
                                description="Per-class error, feature-norm and t-SNE figures from run folders.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True, help="folder of the PNG files")
    p.add_argument("--labels", nargs="+", help="one name per run (default: the recipe)")
    p.add_argument("--figures", nargs="+", choices=KINDS, help="which figures (default: all the runs allow)")
    p.add_argument("--name", default="runs", help="file name prefix (default: runs)")
    p.add_argument("--title", help="title prefix of every figure")
    p.add_argument("--note", help="small text at the bottom, e.g. 'synthetic data, 8 epochs'")
    p.add_argument("--groups", type=int, help="per_class: aggregate classes into N frequency groups")
    p.add_argument("--head", type=int, default=2, help="feature_norm: head classes drawn (default 2)")
    p.add_argument("--tail", type=int, default=2, help="feature_norm: tail classes drawn (default 2)")
    p.add_argument("--split", default="test", help="evaluation split (default test)")
    p.add_argument("--tsne-points", type=int, default=2000, help="tsne: subsample size (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="tsne: seed of the subsample and of t-SNE")
    p.add_argument("--device", help="tsne: evaluation device (default: the run's config)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="tsne: config overrides when loading the runs, e.g. data.root=/data")
    return p


def _title(args, what: str) -> str:
    return f"{args.title}: {what}" if args.title else what


def _has_feature_norms(run: Path, split: str) -> bool:
    try:
        F.feature_norm_curves(run, split=split, class_counts=None)
        return True
    except (LongTailError, OSError):
        return False


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    runs = [Path(r) for r in args.runs]
    out = Path(args.out)
    explicit = args.figures is not None
    kinds = list(args.figures or KINDS)
    written = []
    try:
        for r in runs:
            if not r.is_dir():
                raise LongTailError(f"{r}: no such run folder")
        for kind in kinds:
            if kind == "per_class":
                if not explicit and not all((r / "metrics.json").is_file() for r in runs):
                    print("per_class: skipped (a run has no metrics.json)")
                    continue
                written.append(F.plot_per_class_error(runs, out / f"{args.name}_per_class_error.png", args.labels,
                                                      args.groups, _title(args, "per-class error rate"), args.note))
            elif kind == "feature_norm":
                if not explicit and not all(_has_feature_norms(r, args.split) for r in runs):
                    print("feature_norm: skipped (a run's log.jsonl has no feature norms; train with "
                          "eval.feature_norms=true)")
                    continue
                written.append(F.plot_feature_norms(runs, out / f"{args.name}_feature_norms.png", args.labels,
                                                    args.head, args.tail, args.split,
                                                    _title(args, "feature norms of head and tail classes"), args.note))
            elif kind == "tsne":
                if not explicit and not all((r / "config.yaml").is_file() for r in runs):
                    print("tsne: skipped (a run folder has no config.yaml)")
                    continue
                written.append(F.plot_tsne(runs, out / f"{args.name}_tsne.png", args.labels, args.split,
                                           args.tsne_points, args.seed, args.device, args.set,
                                           _title(args, f"t-SNE of {args.split}-set embeddings"), args.note))
    except (LongTailError, ValueError) as err:
        print(f"longtail.analysis: error: {err}", file=sys.stderr)
        return 2
    for w in written:
        print(f"figure: {w}")
    return 0 if written else 1


if __name__ == "__main__":
    raise SystemExit(main())
