"""Pack several training runs into concurrent processes on one machine (one GPU).

    python -m longtail.sweep RECIPE [RECIPE ...] --seeds 0 1 2 --jobs 3 [key=value ...]
                             [--retrain] [--dry-run]

Every (recipe, seed) pair is one ``python -m longtail train RECIPE key=value ... seed=S
name=NAME --quiet`` subprocess; up to ``--jobs`` of them run at once. A CIFAR-LT ResNet-32 run
leaves most of a large GPU idle (its step is a few milliseconds), so three or four runs side by
side take little longer than one. With no RECIPE the defaults (the synthetic demo) are used.

* Run folders: ``output_dir/NAME`` as ``longtail train`` makes them; NAME is the default run
  name (``<recipe>-<dataset>-seed<S>``), or ``<name>-seed<S>`` when ``name=`` is given.
* Logs: each run's stdout and stderr go to ``output_dir/NAME.log``, beside its run folder (the
  folder itself is created by the run, which refuses an existing non-empty one).
* Re-running a sweep is safe: a run whose folder holds ``metrics.json`` is skipped; one with a
  saved ``config.yaml`` but no metrics (interrupted) is continued with ``--resume``, provided its
  saved config equals the one the sweep asks for (otherwise it is reported as failed, untouched).
* ``--retrain``: after a stage-1 run succeeds, its slot runs ``python -m longtail retrain
  RUN_DIR name=NAME-stage2 --quiet`` (stage 2 as the recipe configures it: GCL's CBEN +
  classifier fine-tuning) into ``output_dir/NAME-stage2``, logged to ``output_dir/NAME-stage2.log``.
  A finished stage 2 is skipped; an unfinished stage-2 folder (stage 2 cannot resume) is
  removed and re-run.
* Every configuration is resolved before anything starts, so a misspelt key fails at once.
  Failures are reported with the run name, the exit status, the log path and the log's last
  lines; the exit status is 1 if any run failed, 2 for a bad command line, 130 if interrupted.
* ``--jobs`` and the threads of each process follow :mod:`longtail.jobs`: with N > 1 and no
  ``OMP_NUM_THREADS`` in the environment each process gets ``cpu_count // N`` CPU threads;
  ``--jobs auto`` (the default) runs one single-threaded process per core on a CPU-only machine
  (where that trains more images per second in aggregate) and one process on a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, List, Optional, Sequence

from .config import load_config, load_saved_config, parse_override
from .engine.runlog import default_run_name
from .errors import ConfigError, LongTailError
from .jobs import child_env, resolve_jobs

__all__ = ["Run", "plan", "run_all", "main"]

TAIL_LINES = 8


@dataclass
class Run:
    """One planned run of a sweep."""

    recipe: Optional[str]
    seed: int
    name: str
    run_dir: Path
    log: Path
    argv: List[str]
    state: str = "new"  # new | resume | done | conflict
    retrain_argv: Optional[List[str]] = None
    retrain_log: Optional[Path] = None
    stage2_dir: Optional[Path] = None
    stage2_state: str = "none"  # none | new | redo | done
    note: str = ""
    # outcome
    rc: Optional[int] = None
    seconds: float = 0.0
    failed_stage: Optional[str] = None
    metrics: dict = field(default_factory=dict)


def _split(items: Sequence[str]) -> tuple[list[str], list[str]]:
    recipes, overrides = [], []
    for it in items:
        (overrides if "=" in it else recipes).append(it)
    return recipes, overrides


def _comparable(cfg: dict) -> dict:
    out = json.loads(json.dumps(cfg, default=str))
    out.pop("quiet", None)  # --quiet is the sweep's, not the run's
    return out


def plan(recipes: Sequence[Optional[str]], seeds: Sequence[int], overrides: Sequence[str],
         retrain: bool = False, python: str = sys.executable) -> List[Run]:
    """Resolve every (recipe, seed) configuration and decide what to do with each run.

    Raises:
        ConfigError: A bad recipe or override (from :func:`longtail.config.load_config`), or two
            runs that would share a run folder.
    """
    user_name = None
    for text in overrides:
        key, value = parse_override(text)
        if key in ("seed", "quiet"):
            raise LongTailError(f"override '{text}': the sweep sets {key} itself (use --seeds)")
        if key == "name":
            user_name = None if value is None else str(value)
    runs: List[Run] = []
    seen: dict[Path, str] = {}
    for recipe in recipes or [None]:
        for seed in seeds:
            cfg = load_config(recipe, list(overrides) + [f"seed={int(seed)}"])
            name = f"{user_name}-seed{int(seed)}" if user_name else default_run_name(cfg)
            if user_name and len(recipes) > 1:
                name = f"{user_name}-{(recipe or 'defaults').replace('/', '-')}-seed{int(seed)}"
            cfg["name"] = name
            out_dir = Path(cfg["output_dir"])
            run_dir = out_dir / name
            if run_dir in seen:
                raise LongTailError(f"runs '{seen[run_dir]}' and '{recipe} seed {seed}' would share the run folder "
                                    f"{run_dir}; give distinct recipes or seeds")
            seen[run_dir] = f"{recipe} seed {seed}"
            train_argv = [python, "-m", "longtail", "train"] + ([recipe] if recipe else []) + list(overrides) + [
                f"seed={int(seed)}", f"name={name}", "--quiet"]
            run = Run(recipe, int(seed), name, run_dir, out_dir / f"{name}.log", train_argv)
            if (run_dir / "metrics.json").is_file():
                run.state, run.note = "done", "finished before: skipped"
            elif (run_dir / "config.yaml").is_file():
                saved = load_saved_config(run_dir / "config.yaml")
                if _comparable(saved) != _comparable(cfg):
                    run.state = "conflict"
                    run.note = (f"{run_dir} holds an unfinished run with another config; remove it or change "
                                f"name=/output_dir=")
                else:
                    run.state, run.note = "resume", "unfinished before: resumed"
                    run.argv = [python, "-m", "longtail", "train", "--resume", str(run_dir), "--quiet"]
            if retrain:
                run.stage2_dir = out_dir / f"{name}-stage2"
                run.retrain_argv = [python, "-m", "longtail", "retrain", str(run_dir), f"name={name}-stage2", "--quiet"]
                run.retrain_log = out_dir / f"{name}-stage2.log"
                if (run.stage2_dir / "metrics.json").is_file():
                    run.stage2_state = "done"
                elif run.stage2_dir.exists() and any(run.stage2_dir.iterdir()):
                    if not (run.stage2_dir / "config.yaml").is_file():
                        run.state = "conflict"
                        run.note = f"{run.stage2_dir} exists and is not a longtail run folder; remove it"
                    run.stage2_state = "redo"
                else:
                    run.stage2_state = "new"
            runs.append(run)
    return runs


def _tail(path: Path, n: int = TAIL_LINES) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    | " + line for line in lines[-n:])


def _read_metrics(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


class _Slot:
    """One running process of a run (stage 1, then optionally stage 2)."""

    def __init__(self, run: Run, stage: str, argv: List[str], log: Path, env: dict) -> None:
        self.run, self.stage, self.log = run, stage, log
        if stage == "stage2" and run.stage2_state == "redo":
            shutil.rmtree(run.stage2_dir)  # an interrupted stage 2 (it has no resume): start it afresh
        log.parent.mkdir(parents=True, exist_ok=True)
        self.fh: IO = open(log, "a" if stage == "stage1" and run.state == "resume" else "w")
        self.fh.write(f"$ {shlex.join(argv)}\n")
        self.fh.flush()
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(argv, stdout=self.fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)

    def poll(self) -> Optional[int]:
        rc = self.proc.poll()
        if rc is not None:
            self.fh.close()
        return rc


def run_all(runs: Sequence[Run], jobs: int = 1, echo=print, poll_s: float = 0.2) -> int:
    """Run the planned runs, ``jobs`` processes at once; returns the number of failed runs."""
    jobs = max(1, int(jobs))
    env = child_env(jobs)
    todo = [r for r in runs if r.state in ("new", "resume")]
    for r in runs:
        if r.state == "done":
            r.rc, r.metrics = 0, _read_metrics(r.run_dir)
            if r.stage2_state == "done":
                r.metrics = _read_metrics(r.stage2_dir)
            elif r.retrain_argv is not None:
                r.rc = None
                todo.append(r)  # stage 1 finished before: only stage 2 left
        elif r.state == "conflict":
            r.rc, r.failed_stage = -1, "plan"
    queue = list(todo)
    active: List[_Slot] = []
    total = len(queue)
    started = 0
    try:
        while queue or active:
            while queue and len(active) < jobs:
                run = queue.pop(0)
                started += 1
                if run.state == "done":  # only stage 2 left
                    slot = _Slot(run, "stage2", run.retrain_argv, run.retrain_log, env)
                else:
                    slot = _Slot(run, "stage1", run.argv, run.log, env)
                echo(f"[{started}/{total}] start {run.name} ({slot.stage}{', resume' if run.state == 'resume' else ''})"
                     f" -> {slot.log}")
                active.append(slot)
            time.sleep(poll_s)
            for slot in list(active):
                rc = slot.poll()
                if rc is None:
                    continue
                active.remove(slot)
                run = slot.run
                run.seconds += time.perf_counter() - slot.t0
                if rc != 0:
                    run.rc, run.failed_stage = rc, slot.stage
                    echo(f"FAILED {run.name} ({slot.stage}, exit {rc}) after {run.seconds:.1f} s; log: {slot.log}\n"
                         f"{_tail(slot.log)}")
                    continue
                if slot.stage == "stage1":
                    run.metrics = _read_metrics(run.run_dir)
                    if run.retrain_argv is not None and run.stage2_state != "done":
                        slot2 = _Slot(run, "stage2", run.retrain_argv, run.retrain_log, env)
                        echo(f"      start {run.name} (stage2) -> {slot2.log}")
                        active.append(slot2)
                        continue
                    if run.stage2_state == "done":
                        run.metrics = _read_metrics(run.stage2_dir)
                else:
                    run.metrics = _read_metrics(run.stage2_dir)
                run.rc = 0
                top1 = run.metrics.get("top1")
                echo(f"done   {run.name} in {run.seconds:.1f} s" + (f", top-1 {top1:.2f}" if isinstance(top1, (int, float)) else ""))
    except KeyboardInterrupt:
        for slot in active:  # only the processes this sweep started
            if slot.proc.poll() is None:
                slot.proc.terminate()
        for slot in active:
            try:
                slot.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                slot.proc.kill()
            slot.fh.close()
        raise
    return sum(1 for r in runs if r.rc not in (0, None) or r.failed_stage)


def summary(runs: Sequence[Run]) -> str:
    rows = ["| run | status | seconds | top-1 | log |", "|---|---|---|---|---|"]
    for r in runs:
        if r.failed_stage:
            status = f"FAILED ({r.failed_stage}, exit {r.rc})" if r.failed_stage != "plan" else "FAILED (conflict)"
        elif r.rc == 0:
            status = "ok" if r.seconds > 0 else "skipped (done)"
        else:
            status = "not run"
        top1 = r.metrics.get("top1")
        log = r.retrain_log if (r.failed_stage == "stage2" and r.retrain_log) else r.log
        rows.append(f"| {r.name} | {status} | {r.seconds:.1f} | {'-' if top1 is None else f'{top1:.2f}'} | {log} |")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m longtail.sweep",
                                description="Run several recipes / seeds as concurrent `longtail train` processes.")
    p.add_argument("items", nargs="*", metavar="RECIPE | key=value",
                   help="recipes (e.g. cifar10_lt/gcl; none: the defaults) and overrides applied to every run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default: 0)")
    p.add_argument("--jobs", default="auto",
                   help="processes at once: N, or auto (default; see longtail.jobs: one single-threaded run per "
                        "core on a CPU-only machine, 1 on a GPU)")
    p.add_argument("--retrain", action="store_true", help="run `longtail retrain` (stage 2) after each stage-1 run")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the commands, run nothing")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # key=value overrides may come anywhere (also right after --seeds 0 1 2); take them out first
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    args = build_parser().parse_intermixed_args([a for a in argv if a not in overrides])
    try:
        resolve_jobs(args.jobs, 1)
    except ConfigError as err:
        print(f"longtail.sweep: error: {err}", file=sys.stderr)
        return 2
    recipes, more = _split(args.items)
    overrides = more + overrides
    try:
        runs = plan(recipes, args.seeds, overrides, retrain=args.retrain)
    except LongTailError as err:
        print(f"longtail.sweep: error: {err}", file=sys.stderr)
        return 2
    for r in runs:
        cmd = shlex.join(r.argv) + (f" && {shlex.join(r.retrain_argv)}" if r.retrain_argv else "")
        print(f"{r.name}: {r.state}{' (' + r.note + ')' if r.note else ''}\n    {cmd}")
    if args.dry_run:
        return 0
    t0 = time.perf_counter()
    jobs = resolve_jobs(args.jobs, sum(r.state != "done" or r.stage2_state not in (None, "done") for r in runs))
    print(f"running with --jobs {jobs}" + (" (auto)" if args.jobs == "auto" else ""))
    try:
        failed = run_all(runs, jobs)
    except KeyboardInterrupt:
        print("longtail.sweep: interrupted; finished runs are kept, unfinished ones resume on the next sweep",
              file=sys.stderr)
        return 130
    print(summary(runs))
    print(f"{len(runs)} runs, {failed} failed, {time.perf_counter() - t0:.1f} s")
    for r in runs:
        if r.failed_stage:
            log = r.retrain_log if r.failed_stage == "stage2" else r.log
            print(f"failed: {r.name} ({r.failed_stage}{'' if r.failed_stage == 'plan' else f', exit {r.rc}'}): "
                  f"{r.note if r.failed_stage == 'plan' else log}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
