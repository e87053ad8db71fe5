#!/usr/bin/env python3
"""Does bf16 autocast on the CPU train as well as float32?  CIFAR-10-LT CE, shortened schedule.

Trains ``--recipe`` (default ``cifar10_lt/ce``) for ``--epochs`` (default 30; the lr milestones
and warm-up scaled as ``longtail reproduce`` scales them) with every seed of ``--seeds`` in each
precision of ``--precisions`` (``amp=bf16`` and ``amp=none``), through ``longtail.sweep`` (resumable:
finished runs are skipped, interrupted ones resumed), then writes ``NAME.md`` / ``NAME.json``:
final-epoch top-1 and many / medium / few per run, mean and spread per precision, and the verdict

    |mean(bf16) - mean(fp32)| <= seed-to-seed spread,

where the spread is the larger of the two precisions' ranges (max - min over seeds).

    python benchmarks/amp_parity.py --data /path/to/cifar --runs /tmp/parity \
        --out benchmarks/results/amp_parity-cpu

Smoke test (CI): ``--data synthetic --epochs 2 --seeds 0 1`` on the built-in synthetic set.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from longtail import jobs as jobpool  # noqa: E402
from longtail import sweep  # noqa: E402
from longtail.config import EPOCH_KEYS_STAGE1, load_config, scaled_epoch_overrides  # noqa: E402

LABEL = {"bf16": "bf16 autocast", "none": "float32"}


def overrides_for(args) -> list[str]:
    data = (["data.name=synthetic", "data.params.n_max=40", "data.imbalance_ratio=10"] if args.data == "synthetic"
            else [f"data.root={Path(args.data).resolve()}"])
    base = data + [f"output_dir={Path(args.runs).resolve()}", "tensorboard=false", "device=cpu"]
    cfg = load_config(args.recipe, base)
    if args.epochs != int(cfg["optim"]["epochs"]):
        base += [f"optim.epochs={args.epochs}"] + scaled_epoch_overrides(cfg, "optim.epochs", args.epochs,
                                                                        EPOCH_KEYS_STAGE1)
    return base + list(args.overrides)


def summarize(runs_by_amp: dict) -> dict:
    out = {"runs": [], "precisions": {}}
    for amp, runs in runs_by_amp.items():
        tops = []
        for r in runs:
            m = r.metrics or {}
            if "top1" not in m:
                continue
            tops.append(m["top1"])
            out["runs"].append({"amp": amp, "seed": r.seed, "run_dir": str(r.run_dir), "top1": m["top1"],
                                "many": m.get("many"), "medium": m.get("medium"), "few": m.get("few"),
                                "wall_time_s": m.get("wall_time_s")})
        if tops:
            out["precisions"][amp] = {"seeds": len(tops), "mean": statistics.fmean(tops),
                                      "std": statistics.stdev(tops) if len(tops) > 1 else 0.0,
                                      "range": max(tops) - min(tops)}
    p = out["precisions"]
    if "bf16" in p and "none" in p:
        diff = p["bf16"]["mean"] - p["none"]["mean"]
        spread = max(p["bf16"]["range"], p["none"]["range"])
        out.update({"difference_of_means": diff, "seed_spread": spread, "within_spread": abs(diff) <= spread})
    return out


def markdown(report: dict) -> str:
    s = report["summary"]
    lines = [f"# bf16 vs float32 on the CPU: `{report['recipe']}`, {report['epochs']} epochs", "",
             f"- command: `{report['command']}`", f"- machine: {report['machine']}", f"- date: {report['date']}",
             f"- overrides: `{' '.join(report['overrides'])}`", "",
             "Final-epoch test top-1 (%); no checkpoint selection.", "",
             "| precision | seed | top-1 | many | medium | few | wall s |", "|---|---|---|---|---|---|---|"]

    def f(v):
        return "-" if v is None else f"{v:.2f}"

    for r in sorted(s["runs"], key=lambda r: (r["amp"], r["seed"])):
        lines.append(f"| {LABEL.get(r['amp'], r['amp'])} | {r['seed']} | {f(r['top1'])} | {f(r['many'])} | "
                     f"{f(r['medium'])} | {f(r['few'])} | {r['wall_time_s']:.0f} |")
    lines += ["", "| precision | seeds | mean | std | range (max - min) |", "|---|---|---|---|---|"]
    for amp, p in s["precisions"].items():
        lines.append(f"| {LABEL.get(amp, amp)} | {p['seeds']} | {p['mean']:.2f} | {p['std']:.2f} | {p['range']:.2f} |")
    if "difference_of_means" in s:
        verdict = "within" if s["within_spread"] else "**outside**"
        lines += ["", f"Difference of the means (bf16 - fp32): {s['difference_of_means']:+.2f} points; seed-to-seed "
                      f"spread (the larger range): {s['seed_spread']:.2f} points: {verdict} the spread."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--recipe", default="cifar10_lt/ce")
    p.add_argument("--data", default="data", help="folder holding cifar-10-batches-py, or 'synthetic'")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--precisions", nargs="+", default=["bf16", "none"], choices=["bf16", "none"])
    p.add_argument("--runs", default="runs/amp_parity", help="run folders (keep them outside the work tree)")
    p.add_argument("--jobs", default="auto", help="processes at once (auto: see longtail.jobs.default_jobs)")
    p.add_argument("--out", default="benchmarks/results/amp_parity", help="NAME for NAME.md and NAME.json")
    args = p.parse_args(argv)
    base = overrides_for(args)
    runs_by_amp = {amp: sweep.plan([args.recipe], args.seeds, base + [f"amp={amp}", f"name=parity-{amp}"])
                   for amp in args.precisions}
    every = [r for runs in runs_by_amp.values() for r in runs]
    n_jobs = jobpool.resolve_jobs(args.jobs, sum(r.state != "done" for r in every))
    t0 = time.perf_counter()
    failed = sweep.run_all(every, n_jobs)
    report = {"command": shlex.join(["python3", "benchmarks/amp_parity.py"] + (sys.argv[1:] if argv is None else argv)),
              "recipe": args.recipe, "epochs": args.epochs, "overrides": base, "jobs": n_jobs,
              "machine": jobpool.machine_line(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "wall_s": time.perf_counter() - t0, "summary": summarize(runs_by_amp)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
