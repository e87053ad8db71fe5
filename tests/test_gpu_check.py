"""The GPU script's CPU dry run: every step of ``benchmarks/gpu_check.sh`` at tiny sizes, so that a
script error is found here and never costs the few minutes of a lent GPU."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_step_and_brings_back_the_run_files(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, DRY_RUN="1", OUT=str(out), TRAIN_JOBS="2", TOTAL_BUDGET="1500", TEST_BUDGET="300",
               BENCH_BUDGET="600")
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=1500)
    summary = (out / "summary.txt").read_text()
    assert r.returncode == 0, summary + r.stdout[-4000:] + r.stderr[-2000:]
    for step in ("cuda tests", "benchmark", "key rows, seeds 0", "key rows, seeds 1", "collect run files"):
        assert f"ok      {step}" in summary, summary
    # the benchmark ran its parts and wrote its files to $OUT only
    report = json.loads((out / "dry-run.json").read_text())
    assert not report["errors"] and {"conventional", "fast"} <= set(report["results"])
    assert not (ROOT / "benchmarks" / "results" / "dry-run.json").exists()
    # every key row, seed 0 then seed 1 (two calls, as on the GPU): 10 stage-1 runs per seed (CE in bf16 and
    # in fp32, CE + mixup, LDAM-DRW, KPS, FBL at A = 60 (the two batch rows share one run at the dry run's
    # batch), in fp32 and at A = 30, GCL on two schedules) and 7 stage-2 runs
    runs = sorted(p.parent for p in (out / "results" / "dry-run").rglob("metrics.json"))
    assert len(runs) == 2 * 17
    for run in runs:
        files = {f.name for f in run.iterdir() if f.is_file()}
        assert {"config.yaml", "metrics.json"} <= files <= {"config.yaml", "log.jsonl", "metrics.json"} and not any(f.endswith(".pt") for f in files)
    seeds = sorted(json.loads((run / "metrics.json").read_text())["seed"] for run in runs)
    assert seeds == [0] * 17 + [1] * 17
