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


# ---------------------------------------------------------------------------------------------
# The job pool (one rule for sweep and reproduce), with an executor that runs nothing
# ---------------------------------------------------------------------------------------------
class _Handle:
    def __init__(self, rc):
        self.rc = rc

    def poll(self):
        return self.rc

    def terminate(self):
        pass

    def kill(self):
        pass

    def wait(self, timeout=None):
        return self.rc


class FakeExecutor:
    """Finishes a job at once: writes metrics.json unless its run folder's name says 'fail'."""

    def __init__(self):
        self.started = []

    def start(self, job, env):
        self.started.append((job.run_dir.name, env.get("OMP_NUM_THREADS")))
        job.log.parent.mkdir(parents=True, exist_ok=True)
        if "fail" in job.run_dir.name:
            job.log.write_text("loading...\nlongtail: error: data.root /nowhere does not exist\n")
            return _Handle(2)
        job.run_dir.mkdir(parents=True, exist_ok=True)
        (job.run_dir / "metrics.json").write_text('{"top1": 50.0}')
        job.log.write_text("ok\n")
        return _Handle(0)


def _job(tmp, name, stage=1, depends=None, cfg=None):
    from longtail.jobs import Job, job_state

    run_dir = tmp / name
    state, note = job_state(run_dir, stage, cfg)
    return Job(run_dir, stage, ["train" if stage == 1 else "retrain", name], tmp / "logs" / f"{name}.log",
               depends=None if depends is None else tmp / depends, state=state, note=note)


def test_job_state_rule(tmp_path):
    from longtail.config import load_config, save_config
    from longtail.jobs import job_state

    cfg = load_config(None, ["seed=1"])
    assert job_state(tmp_path / "absent", 1) == ("new", "")
    (tmp_path / "empty").mkdir()
    assert job_state(tmp_path / "empty", 1)[0] == "new"
    done = tmp_path / "done"
    done.mkdir()
    (done / "metrics.json").write_text("{}")
    assert job_state(done, 1)[0] == job_state(done, 2)[0] == "done"
    part = tmp_path / "part"
    part.mkdir()
    save_config(dict(cfg, name="part", output_dir=str(tmp_path), quiet=True), part / "config.yaml")
    assert job_state(part, 1)[0] == "resume"                      # with no checkpoint yet, too
    assert job_state(part, 1, cfg)[0] == "resume"                 # name / output_dir / quiet do not count
    state, note = job_state(part, 1, load_config(None, ["seed=1", "optim.lr=0.3"]))
    assert state == "conflict" and "another config" in note
    assert job_state(part, 2)[0] == "restart"                     # stage 2 cannot resume
    lock_only = tmp_path / "lock"
    lock_only.mkdir()
    (lock_only / ".lock").write_text("123")
    (lock_only / ".last.pt.1.tmp").write_bytes(b"x")
    assert job_state(lock_only, 1)[0] == "restart"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.pdf").write_bytes(b"x")
    state, note = job_state(foreign, 1)
    assert state == "conflict" and "thesis.pdf" in note


def test_run_jobs_order_dependencies_failures_and_threads(tmp_path, monkeypatch):
    from longtail.jobs import run_jobs

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    (tmp_path / "s2-redo").mkdir()
    (tmp_path / "s2-redo" / "config.yaml").write_text("{}")
    (tmp_path / "s2-redo" / "stale.bin").write_bytes(b"x")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("mine")
    jobs = [_job(tmp_path, "a"), _job(tmp_path, "fail-b"), _job(tmp_path, "foreign"),
            _job(tmp_path, "s2-redo", 2, depends="a"), _job(tmp_path, "s2-of-b", 2, depends="fail-b")]
    assert [j.state for j in jobs] == ["new", "new", "conflict", "restart", "new"]
    ex = FakeExecutor()
    lines = []
    failed = run_jobs(jobs, 2, executor=ex, echo=lines.append, poll_s=0)
    assert failed == 3
    assert [name for name, _ in ex.started] == ["a", "fail-b", "s2-redo"]   # s2-of-b never starts
    assert {threads for _, threads in ex.started} == {"2"}                   # 4 cores / 2 jobs
    a, b, foreign, redo, s2b = jobs
    assert a.ok and redo.ok and not (tmp_path / "s2-redo" / "stale.bin").exists()  # removed, run again
    assert b.rc == 2 and b.reason == "data.root /nowhere does not exist"
    assert s2b.rc == -1 and s2b.reason == "stage-1 run failed"
    assert foreign.rc == -1 and (tmp_path / "foreign" / "keep.txt").read_text() == "mine"  # untouched
    assert any("FAILED" in line and "fail-b" in line for line in lines)
