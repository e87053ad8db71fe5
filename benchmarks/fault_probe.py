"""The kill -9 probe: every kill point of a tiny run, on both data paths, resumed and compared.

For each data path (a list-file set read by two DataLoader workers, and the in-memory synthetic
set on the device-resident loader) this trains one uninterrupted reference run, then, for every
kill point -- before each training step, halfway through each checkpoint write, halfway through
each log line -- starts a child ``longtail`` process, ``SIGKILL``s it there, resumes the run in
this process and checks, tensor for tensor, that the resumed run equals the reference (weights,
metrics, one log row per epoch, the same training losses, no temporary files left). It uses the
kill driver and checks of ``tests/test_faults.py`` (which tries one random point per case in CI).

    python benchmarks/fault_probe.py --out benchmarks/results/fault_probe-cpu

Writes NAME.json (one record per kill point) and NAME.md (the summary table).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from test_faults import (LIST_BATCH, LIST_COUNTS, LIST_EPOCHS, SYN_EPOCHS, assert_same_run,  # noqa: E402
                         list_overrides, run_killed, synthetic_overrides, write_list_set)

from longtail.config import load_config  # noqa: E402
from longtail.engine.runlog import machine_line  # noqa: E402
from longtail.engine.trainer import train  # noqa: E402

SYN_STEPS_PER_EPOCH = 3  # the synthetic TINY set at batch 16 (tests/test_faults.py)


def kill_points(path: str) -> list[tuple[str, int]]:
    """Every (mode, n) of one data path: each step, each checkpoint write, each log line."""
    epochs = LIST_EPOCHS if path == "listfile" else SYN_EPOCHS
    steps = epochs * (-(-sum(LIST_COUNTS) // LIST_BATCH) if path == "listfile" else SYN_STEPS_PER_EPOCH)
    return ([("step", n) for n in range(1, steps + 1)] + [("save", n) for n in range(1, epochs + 1)]
            + [("log", n) for n in range(1, epochs + 1)])


def probe(path: str, work: Path, only: int = 0) -> list[dict]:
    """Kill at every point of ``path`` (``listfile`` or ``memory``); one record per point."""
    if path == "listfile":
        keys = write_list_set(work / "data")
        over = lambda name: list_overrides(keys, work / "runs", name)  # noqa: E731
        run_root, epochs = work / "runs", LIST_EPOCHS
    else:
        over = lambda name: synthetic_overrides(work / "runs", name)  # noqa: E731
        run_root, epochs = work / "runs", SYN_EPOCHS
    full_dir, full = train(load_config(None, over("full")))
    points = kill_points(path)
    if only:
        points = points[:only]
    records = []
    for mode, n in points:
        name = f"cut-{mode}-{n}"
        where = f"{path}: kill -9 at {mode} {n}"
        t0 = time.perf_counter()
        rec = {"path": path, "mode": mode, "n": n}
        try:
            run_killed(mode, n, over(name))
            cut_dir = run_root / name
            _, resumed = train({}, resume=cut_dir)
            assert_same_run(full_dir, cut_dir, full, resumed, epochs, where)
            rec.update(ok=True)
        except BaseException as err:  # a failed point is recorded, the probe goes on
            if isinstance(err, KeyboardInterrupt):
                raise
            rec.update(ok=False, error=f"{type(err).__name__}: {err}"[:500],
                       traceback=traceback.format_exc(limit=3)[-1500:])
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"{'ok  ' if rec['ok'] else 'FAIL'} {where} ({rec['seconds']} s)" + ("" if rec["ok"] else f": {rec['error']}"),
              flush=True)
        records.append(rec)
    return records


def markdown(records: list[dict], command: str, machine: str, wall: float) -> str:
    lines = ["# kill -9 probe: every kill point, resumed and compared with an uninterrupted run", "",
             f"- Command: `{command}`", f"- Machine: {machine}", f"- Wall time: {wall:.0f} s", "",
             "| data path | kill point | kills | bit-identical resumes | failures |", "|---|---|---:|---:|---:|"]
    for path in ("listfile", "memory"):
        for mode in ("step", "save", "log"):
            rs = [r for r in records if r["path"] == path and r["mode"] == mode]
            if rs:
                ok = sum(r["ok"] for r in rs)
                lines.append(f"| {path} | {mode} | {len(rs)} | {ok} | {len(rs) - ok} |")
    lines += ["", "A resume is counted bit-identical when every weight tensor and every reported metric equals the "
              "uninterrupted run's, the log holds each epoch once with the same training losses, and no temporary "
              "checkpoint file is left. listfile: 3 classes read from PNG files by 2 DataLoader workers, "
              f"{LIST_EPOCHS} epochs of 3 steps; memory: the synthetic set on the device-resident loader with mixup, "
              f"{SYN_EPOCHS} epochs of 3 steps."]
    fails = [r for r in records if not r["ok"]]
    if fails:
        lines += ["", "Failures:", ""] + [f"- {r['path']} {r['mode']} {r['n']}: {r['error']}" for r in fails]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="results path without suffix (NAME.json, NAME.md)")
    p.add_argument("--paths", nargs="+", default=["listfile", "memory"], choices=["listfile", "memory"])
    p.add_argument("--only", type=int, default=0, help="the first N kill points of each path (0: all)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.paths:
            records += probe(path, Path(tmp) / path, args.only)
    wall = time.perf_counter() - t0
    command = "python benchmarks/fault_probe.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"command": command, "machine": machine_line(), "wall_s": wall,
                                                    "records": records}, indent=1))
    out.with_suffix(".md").write_text(markdown(records, command, machine_line(), wall))
    print(out.with_suffix(".md").read_text())
    return 0 if all(r["ok"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
