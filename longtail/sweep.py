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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from .config import load_config, parse_override
from .engine.runlog import default_run_name
from .errors import ConfigError, DataError, LongTailError
from .jobs import Job, job_state, resolve_jobs, run_jobs
from .report import read_metrics

__all__ = ["SweepRun", "plan", "run_all", "main"]

TAIL_LINES = 8


@dataclass
class SweepRun:
    """One (recipe, seed) of a sweep: its stage-1 job and, with ``--retrain``, its stage-2 job."""

    recipe: Optional[str]
    seed: int
    name: str
    stage1: Job
    stage2: Optional[Job] = None
    metrics: dict = field(default_factory=dict)
    error: str = ""  #: why a run whose jobs finished has no result (an unreadable ``metrics.json``)

    @property
    def run_dir(self) -> Path:
        return self.stage1.run_dir

    @property
    def log(self) -> Path:
        return self.stage1.log

    @property
    def state(self) -> str:
        """The stage-1 job's state (see :func:`longtail.jobs.job_state`)."""
        return self.stage1.state

    @property
    def jobs(self) -> List[Job]:
        return [self.stage1] + ([self.stage2] if self.stage2 is not None else [])

    @property
    def failed_job(self) -> Optional[Job]:
        """The first job of this run that did not finish (None when all did)."""
        return next((j for j in self.jobs if j.rc is not None and not j.ok), None)

    @property
    def seconds(self) -> float:
        return sum(j.seconds for j in self.jobs)


def _split(items: Sequence[str]) -> tuple[list[str], list[str]]:
    recipes, overrides = [], []
    for it in items:
        (overrides if "=" in it else recipes).append(it)
    return recipes, overrides


def plan(recipes: Sequence[Optional[str]], seeds: Sequence[int], overrides: Sequence[str],
         retrain: bool = False) -> List[SweepRun]:
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
    runs: List[SweepRun] = []
    seen: dict[Path, str] = {}
    for recipe in recipes or [None]:
        for seed in seeds:
            cfg = load_config(recipe, list(overrides) + [f"seed={int(seed)}"])
            name = f"{user_name}-seed{int(seed)}" if user_name else default_run_name(cfg)
            if user_name and len(recipes) > 1:
                name = f"{user_name}-{(recipe or 'defaults').replace('/', '-')}-seed{int(seed)}"
            out_dir = Path(cfg["output_dir"])
            run_dir = out_dir / name
            if run_dir in seen:
                raise LongTailError(f"runs '{seen[run_dir]}' and '{recipe} seed {seed}' would share the run folder "
                                    f"{run_dir}; give distinct recipes or seeds")
            seen[run_dir] = f"{recipe} seed {seed}"
            state, note = job_state(run_dir, 1, dict(cfg, name=name))
            argv = (["train", "--resume", str(run_dir), "--quiet"] if state == "resume" else
                    ["train"] + ([recipe] if recipe else []) + list(overrides) + [f"seed={int(seed)}", f"name={name}",
                                                                                 "--quiet"])
            run = SweepRun(recipe, int(seed), name, Job(run_dir, 1, argv, out_dir / f"{name}.log", state=state, note=note))
            if retrain:
                dir2 = out_dir / f"{name}-stage2"
                state2, note2 = job_state(dir2, 2)
                run.stage2 = Job(dir2, 2, ["retrain", str(run_dir), f"name={name}-stage2", "--quiet"],
                                 out_dir / f"{name}-stage2.log", depends=run_dir, state=state2, note=note2)
            runs.append(run)
    return runs


def _tail(path: Path, n: int = TAIL_LINES) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    | " + line for line in lines[-n:])


def run_all(runs: Sequence[SweepRun], jobs: int = 1, echo=print, poll_s: float = 0.2) -> int:
    """Run the planned runs' jobs, ``jobs`` processes at once (:func:`longtail.jobs.run_jobs`).

    Returns:
        The number of runs with a job that did not finish.
    """
    run_jobs([j for r in runs for j in r.jobs], jobs, echo=echo, poll_s=poll_s)
    failed = 0
    for r in runs:
        bad = r.failed_job
        if bad is not None:
            failed += 1
            if bad.state != "conflict" and bad.rc not in (None, -1):
                echo(f"FAILED {r.name} (stage{bad.stage}, exit {bad.rc}); log: {bad.log}\n{_tail(bad.log)}")
            continue
        last = r.stage2 if r.stage2 is not None else r.stage1
        try:
            r.metrics = read_metrics(last.run_dir)
        except DataError as err:  # finished, but its result cannot be read
            r.error = str(err)
            failed += 1
            echo(f"FAILED {r.name}: {r.error}")
            continue
        top1 = r.metrics.get("top1")
        echo(f"done   {r.name}" + (f" in {r.seconds:.1f} s" if r.seconds else " (finished before)")
             + (f", top-1 {top1:.2f}" if isinstance(top1, (int, float)) else ""))
    return failed


def summary(runs: Sequence[SweepRun]) -> str:
    rows = ["| run | status | seconds | top-1 | log |", "|---|---|---|---|---|"]
    for r in runs:
        bad = r.failed_job
        if bad is not None:
            status = "FAILED (conflict)" if bad.state == "conflict" else f"FAILED (stage{bad.stage}, exit {bad.rc})"
        elif r.error:
            status = "FAILED (unreadable metrics.json)"
        elif all(j.rc == 0 for j in r.jobs):
            status = "ok" if r.seconds > 0 else "skipped (done)"
        else:
            status = "not run"
        top1 = r.metrics.get("top1")
        log = (bad or r.stage1).log
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
        cmd = " && ".join(j.command() for j in r.jobs)
        notes = "; ".join(j.note for j in r.jobs if j.note)
        print(f"{r.name}: {r.state}{' (' + notes + ')' if notes else ''}\n    {cmd}")
    if args.dry_run:
        return 0
    t0 = time.perf_counter()
    jobs = resolve_jobs(args.jobs, sum(any(j.state != "done" for j in r.jobs) for r in runs))
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
        bad = r.failed_job
        if bad is not None:
            what = bad.note if bad.state == "conflict" else (bad.reason if bad.rc == -1 else bad.log)
            exit_txt = "" if bad.rc == -1 else f", exit {bad.rc}"
            print(f"failed: {r.name} (stage{bad.stage}{exit_txt}): {what}", file=sys.stderr)
        elif r.error:
            print(f"failed: {r.name}: {r.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
