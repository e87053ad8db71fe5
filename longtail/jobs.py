"""The job pool of ``longtail sweep`` and ``longtail reproduce``: which runs to start, how many at
once, with how many threads, and what to do with a run folder found from an earlier call.

Both commands (and the benchmark scripts) plan :class:`Job` objects -- one ``python -m longtail``
process each -- decide their state with :func:`job_state` (done / new / resume / restart /
conflict, one rule for both) and hand them to :func:`run_jobs`, which starts them through an
executor (:class:`LocalExecutor`: child processes here; a cluster executor implements the same
``start`` method). How many at once:

* ``--jobs N``: N processes at once; each gets ``cpu_count // N`` CPU threads
  (``OMP_NUM_THREADS``, unless the environment sets it), so CPU runs never oversubscribe the cores.
* ``--jobs auto``: on a GPU machine one process (pack several by hand with ``--jobs N``: a
  CIFAR-LT run leaves most of a large GPU idle). On a CPU-only machine, one single-threaded
  process per core when concurrent runs train more images per second in aggregate than one run
  on every core -- :data:`CPU_CONCURRENT_RUNS_WIN`, measured by ``benchmarks/bench_cifar.py``
  part (f) -- and one process on every core otherwise.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .engine.runlog import machine_line  # noqa: F401  (re-exported)
from .errors import ConfigError

__all__ = ["CPU_CONCURRENT_RUNS_WIN", "resolve_jobs", "child_env", "machine_line", "Job", "job_state",
           "failure_reason", "LocalExecutor", "run_jobs"]

#: Part (f) of ``benchmarks/results/cpu-2core.md`` (2-core AVX512-BF16 machine, CIFAR-10-LT
#: ResNet-32, bf16, batch 128): two single-threaded runs at once against one two-threaded run.
CPU_CONCURRENT_RUNS_WIN = True


def resolve_jobs(jobs: Union[int, str], pending: int) -> int:
    """The number of processes for ``--jobs`` (an int >= 1 or ``auto``) and ``pending`` runs."""
    if jobs == "auto":
        if torch.cuda.is_available():
            return 1
        cores = os.cpu_count() or 1
        return max(1, min(cores, pending)) if CPU_CONCURRENT_RUNS_WIN else 1
    try:
        n = int(jobs)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(jobs).strip() != str(n):
        raise ConfigError(f"--jobs must be a positive integer or 'auto', got {jobs!r}")
    return n


def child_env(jobs: int) -> dict:
    """The environment of each child process: ``OMP_NUM_THREADS = cpu_count // jobs`` when
    several run at once (an ``OMP_NUM_THREADS`` already set is kept)."""
    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env



# ---------------------------------------------------------------------------------------------
# The job pool: one rule for done / resume / restart, one loop, pluggable executors
# ---------------------------------------------------------------------------------------------
#: Files a longtail run folder may hold before it has finished (anything else: not ours, kept).
_RUN_FILES = ("config.yaml", "log.jsonl", "last.pt", ".lock", "tensorboard")


@dataclass
class Job:
    """One ``python -m longtail`` process: a stage-1 training or a stage-2 re-training.

    Attributes:
        run_dir: The run folder the job produces (finished when it holds ``metrics.json``).
        stage: 1 (``train``) or 2 (``retrain``).
        argv: Arguments after ``python -m longtail``.
        log: The process's stdout + stderr.
        depends: The run folder of a job that must finish first (the stage-1 run of a stage 2).
        state: ``new``, ``done`` (skipped), ``resume`` (an interrupted stage 1, continued),
            ``restart`` (an interrupted stage 2, removed and run again) or ``conflict`` (a folder
            this job must not touch; reported as failed); see :func:`job_state`.
        note: Why the state is what it is.
        rc: Exit status once run (0 for a finished job that was skipped, -1 for a conflict).
        seconds: Wall time of the process.
        reason: One line saying why a job failed.
    """

    run_dir: Path
    stage: int
    argv: List[str]
    log: Path
    depends: Optional[Path] = None
    state: str = "new"
    note: str = ""
    rc: Optional[int] = None
    seconds: float = 0.0
    reason: str = ""

    @property
    def ok(self) -> bool:
        """Finished: exit status 0 and a ``metrics.json``."""
        return self.rc == 0 and (self.run_dir / "metrics.json").is_file()

    def command(self) -> str:
        """The shell command, as a dry run prints it."""
        cmd = "python -m longtail " + shlex.join(self.argv)
        if self.state == "restart":
            cmd = f"rm -r {shlex.quote(str(self.run_dir))} && " + cmd
        return cmd


def _comparable(cfg: dict) -> dict:
    out = json.loads(json.dumps(cfg, default=str))
    for key in ("quiet", "name", "output_dir"):
        out.pop(key, None)
    return out


def job_state(run_dir: Path, stage: int, config: Optional[dict] = None) -> Tuple[str, str]:
    """What to do with a job's run folder: the one rule of ``sweep`` and ``reproduce``.

    * ``metrics.json`` present: ``done``;
    * no folder, or an empty one: ``new``;
    * stage 1 with a saved ``config.yaml``: ``resume`` (``longtail train --resume``, which also
      continues a run killed before its first checkpoint), or ``conflict`` when ``config`` is
      given and the saved one differs from it (another experiment: left untouched);
    * stage 2 with a saved ``config.yaml``: ``restart`` (stage 2 has no resume: the folder is
      removed and the job run again);
    * a folder holding only what a run writes before its config (lock, temporary files):
      ``restart``; anything else: ``conflict``.

    Returns:
        ``(state, note)``.
    """
    run_dir = Path(run_dir)
    if (run_dir / "metrics.json").is_file():
        return "done", "finished before: skipped"
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return "new", ""
    if (run_dir / "config.yaml").is_file():
        if stage == 2:
            return "restart", "unfinished stage 2 (it cannot resume): removed and run again"
        if config is not None:
            from .config import load_saved_config

            try:
                saved = load_saved_config(run_dir / "config.yaml")
            except Exception as err:  # an unreadable config is not ours to overwrite
                return "conflict", f"{run_dir / 'config.yaml'} cannot be read ({err}); remove the folder"
            if _comparable(saved) != _comparable(config):
                return "conflict", (f"{run_dir} holds an unfinished run with another config; remove it or change "
                                    f"name=/output_dir=")
        return "resume", "unfinished before: resumed"
    foreign = [p.name for p in run_dir.iterdir() if p.name not in _RUN_FILES and not p.name.endswith(".tmp")]
    if foreign:
        return "conflict", f"{run_dir} exists and is not a longtail run folder ({', '.join(sorted(foreign)[:3])}); remove it"
    return "restart", "a run stopped before writing its config: started again"


def failure_reason(log: Path) -> str:
    """One line from a failed job's log: its ``longtail: error:`` message, else the last line."""
    try:
        lines = [line.strip() for line in Path(log).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "failed (no log)"
    for line in reversed(lines):
        for prefix in ("longtail: error:", "longtail.sweep: error:"):
            if line.startswith(prefix):
                return line[len(prefix):].strip()[:300]
    return lines[-1][:300] if lines else "failed with no output"


class LocalExecutor:
    """Runs each job as a ``python -m longtail`` child process of this one.

    The executor interface is one method, ``start(job, env)``, returning a handle with
    ``poll()`` (None while running, else the exit status), ``terminate()``, ``kill()`` and
    ``wait(timeout)``; a cluster executor (Slurm, Ray) implements the same.
    """

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python

    def start(self, job: Job, env: dict) -> subprocess.Popen:
        job.log.parent.mkdir(parents=True, exist_ok=True)
        fh: IO = open(job.log, "a" if job.state == "resume" else "w")
        fh.write(f"$ python -m longtail {shlex.join(job.argv)}\n")
        fh.flush()
        try:
            return subprocess.Popen([self.python, "-m", "longtail", *job.argv], stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env)
        finally:
            fh.close()  # the child holds its own descriptor


def run_jobs(jobs: Sequence[Job], n_jobs: int, executor: Optional[LocalExecutor] = None,
             echo: Callable[[str], None] = print, poll_s: float = 0.2) -> int:
    """Run the jobs that are not done, ``n_jobs`` at once, in order, each after its dependency.

    A job whose dependency failed is not run (failed, "stage-1 run failed"). A ``restart`` job's
    unfinished folder is removed first; a ``conflict`` job fails without touching its folder.
    Every job gets ``rc``, ``seconds`` and, on failure, ``reason``. On Ctrl-C the processes started
    here are terminated (an interrupted stage 1 resumes on the next call) and the interrupt is
    raised again.

    Args:
        jobs: The jobs; a dependency must come before the jobs that need it.
        n_jobs: Processes at once (>= 1); each gets :func:`child_env` threads.
        executor: Where processes run (default :class:`LocalExecutor`).
        echo: Progress printer.
        poll_s: Seconds between polls.

    Returns:
        The number of failed jobs (conflicts included).
    """
    executor = executor or LocalExecutor()
    n_jobs = max(1, int(n_jobs))
    env = child_env(n_jobs)
    by_dir = {j.run_dir: j for j in jobs}
    for j in jobs:
        if j.state == "done":
            j.rc = 0
        elif j.state == "conflict":
            j.rc, j.reason = -1, j.note
            echo(f"  FAILED (not started)  {j.run_dir}\n      {j.note}")
    pending = [j for j in jobs if j.state not in ("done", "conflict")]
    total, finished = len(pending), 0
    running: Dict[Any, Tuple[Job, float]] = {}
    try:
        while pending or running:
            for job in list(pending):
                if len(running) >= n_jobs:
                    break
                dep = by_dir.get(job.depends) if job.depends is not None else None
                if dep is not None and dep.rc is None:
                    continue  # its dependency has not finished yet
                pending.remove(job)
                if dep is not None and not dep.ok:
                    job.rc, job.reason = -1, "stage-1 run failed"
                    finished += 1
                    echo(f"  [{finished}/{total}] FAILED (not started)  {job.run_dir}: {job.reason}")
                    continue
                if job.state == "restart" and job.run_dir.exists() and not (job.run_dir / "metrics.json").exists():
                    shutil.rmtree(job.run_dir)
                running[executor.start(job, env)] = (job, time.perf_counter())
                echo(f"  start  stage {job.stage}{' (resume)' if job.state == 'resume' else ''}  {job.run_dir}")
            done = [h for h in running if h.poll() is not None]
            for h in done:
                job, t0 = running.pop(h)
                job.seconds, job.rc = time.perf_counter() - t0, h.poll()
                if job.rc == 0 and not (job.run_dir / "metrics.json").is_file():
                    job.rc = 1  # exit 0 without a result is a failure too
                job.reason = "" if job.ok else failure_reason(job.log)
                finished += 1
                echo(f"  [{finished}/{total}] {'done' if job.ok else 'FAILED'} ({job.seconds:.0f} s)  {job.run_dir}"
                     + ("" if job.ok else f"\n      {job.reason} (log: {job.log})"))
            if not done:
                time.sleep(poll_s)
    except BaseException:
        for h in running:
            if h.poll() is None:
                h.terminate()
        for h in running:
            try:
                h.wait(timeout=30)
            except subprocess.TimeoutExpired:
                h.kill()
        raise
    return sum(1 for j in jobs if not j.ok)
