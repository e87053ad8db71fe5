"""The one policy for processes at once and threads per process (longtail.jobs)."""
import importlib.util
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from longtail import jobs
from longtail.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_explicit_jobs_are_taken_as_given():
    assert jobs.resolve_jobs(3, 1) == 3 and jobs.resolve_jobs("2", 10) == 2
    for bad in (0, -1, "x", "1.5", None):
        with pytest.raises(ConfigError, match="--jobs"):
            jobs.resolve_jobs(bad, 4)


@pytest.mark.parametrize("win, cores, pending, expected", [(True, 2, 4, 2), (True, 2, 1, 1), (True, 8, 3, 3),
                                                             (False, 2, 4, 1), (True, 2, 0, 1)])
def test_auto_jobs_on_a_cpu_machine(monkeypatch, win, cores, pending, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setattr(jobs, "CPU_CONCURRENT_RUNS_WIN", win)
    assert jobs.resolve_jobs("auto", pending) == expected


def test_auto_jobs_on_a_gpu_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert jobs.resolve_jobs("auto", 5) == 1


def test_child_env_splits_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert jobs.child_env(4)["OMP_NUM_THREADS"] == "2"
    assert jobs.child_env(16)["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in jobs.child_env(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert jobs.child_env(4)["OMP_NUM_THREADS"] == "3"  # the user's setting wins


def _parity():
    spec = importlib.util.spec_from_file_location("amp_parity", REPO / "benchmarks" / "amp_parity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(seed, top1):
    return SimpleNamespace(seed=seed, run_dir=Path(f"r{seed}"),
                           metrics={"top1": top1, "many": 1.0, "medium": 2.0, "few": 3.0, "wall_time_s": 5.0})


def test_parity_summary_math():
    s = _parity().summarize({"bf16": [_run(0, 70.0), _run(1, 72.0)], "none": [_run(0, 71.5), _run(1, 72.5)]})
    assert s["precisions"]["bf16"]["mean"] == pytest.approx(71.0)
    assert s["precisions"]["bf16"]["std"] == pytest.approx(2 ** 0.5)
    assert s["precisions"]["none"]["range"] == pytest.approx(1.0)
    assert s["difference_of_means"] == pytest.approx(-1.0) and s["seed_spread"] == pytest.approx(2.0)
    assert s["within_spread"] is True
    s = _parity().summarize({"bf16": [_run(0, 60.0), _run(1, 60.5)], "none": [_run(0, 70.0), _run(1, 70.2)]})
    assert s["within_spread"] is False


@pytest.mark.slow
def test_parity_script_end_to_end_on_synthetic(tmp_path):
    parity = _parity()
    out = tmp_path / "parity"
    rc = parity.main(["--data", "synthetic", "--epochs", "2", "--seeds", "0", "1", "--runs", str(tmp_path / "runs"),
                      "--jobs", "2", "--out", str(out), "data.params.test_per_class=5", "data.batch_size=32"])
    assert rc == 0
    md = out.with_suffix(".md").read_text()
    assert "bf16 autocast" in md and "float32" in md and "Difference of the means" in md
    runs = sorted((tmp_path / "runs").glob("parity-*-seed*/metrics.json"))
    assert len(runs) == 4
    import json
    import yaml
    amps = sorted(yaml.safe_load((p.parent / "config.yaml").read_text())["amp"] for p in runs)
    assert amps == ["bf16", "bf16", "none", "none"]
    # a second call reuses every finished run
    rc = parity.main(["--data", "synthetic", "--epochs", "2", "--seeds", "0", "1", "--runs", str(tmp_path / "runs"),
                      "--jobs", "2", "--out", str(out), "data.params.test_per_class=5", "data.batch_size=32"])
    assert rc == 0 and json.loads(out.with_suffix(".json").read_text())["summary"]["runs"].__len__() == 4
