"""How many training processes to run at once, and with how many threads each.

``longtail sweep`` and ``longtail reproduce`` (and the benchmark scripts) start one
``python -m longtail`` process per run. This module is their one policy:

* ``--jobs N``: N processes at once; each gets ``cpu_count // N`` CPU threads
  (``OMP_NUM_THREADS``, unless the environment sets it), so CPU runs never oversubscribe the cores.
* ``--jobs auto``: on a GPU machine one process (pack several by hand with ``--jobs N``: a
  CIFAR-LT run leaves most of a large GPU idle). On a CPU-only machine, one single-threaded
  process per core when concurrent runs train more images per second in aggregate than one run
  on every core -- :data:`CPU_CONCURRENT_RUNS_WIN`, measured by ``benchmarks/bench_cifar.py``
  part (f) -- and one process on every core otherwise.
"""
from __future__ import annotations

import os
from typing import Union

import torch

from .engine.runlog import machine_line  # noqa: F401  (re-exported)
from .errors import ConfigError

__all__ = ["CPU_CONCURRENT_RUNS_WIN", "resolve_jobs", "child_env", "machine_line"]

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

