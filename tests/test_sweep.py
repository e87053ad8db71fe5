"""``python -m longtail.sweep``: concurrent runs, logs beside the run folders, failures reported."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from longtail import sweep

TINY = ["data.name=synthetic", "data.imbalance_ratio=10", "data.params.n_max=40", "data.params.test_per_class=4",
        "data.batch_size=32", "optim.epochs=1", "optim.warmup_epochs=0", "device=cpu", "tensorboard=false"]


def _recipe(tmp: Path, name: str, text: str) -> str:
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.slow
def test_sweep_runs_seeds_concurrently_and_skips_finished(tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["--seeds", "0", "1", "--jobs", "2"] + TINY + [f"output_dir={out}"]
    assert sweep.main(argv) == 0
    text = capsys.readouterr().out
    for seed in (0, 1):
        run_dir = out / f"ce-synthetic-seed{seed}"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["seed"] == seed and 0 <= metrics["top1"] <= 100
        log = out / f"ce-synthetic-seed{seed}.log"  # in the run folder's parent
        assert log.is_file()
        body = log.read_text()
        assert "longtail train" in body.splitlines()[0] and f"seed={seed}" in body
        assert f"run folder: {run_dir}" in body
        assert f"ce-synthetic-seed{seed}" in text
    assert "2 runs, 0 failed" in text
    # a second sweep finds both finished and starts nothing
    assert sweep.main(argv) == 0
    text = capsys.readouterr().out
    assert text.count("skipped") >= 2 and "start" not in text


@pytest.mark.slow
def test_sweep_reports_failure_with_name_and_log(tmp_path, capsys):
    out = tmp_path / "runs"
    good = _recipe(tmp_path, "good", "loss: {name: ce}\n")
    # a loss parameter that load_config accepts (free-form block) but the loss rejects at build
    bad = _recipe(tmp_path, "bad", "loss: {name: ce, params: {no_such_parameter: 1}}\n")
    rc = sweep.main([good, bad, "--jobs", "2"] + TINY + [f"output_dir={out}"])
    assert rc == 1
    cap = capsys.readouterr()
    bad_log = out / "bad-synthetic-seed0.log"
    assert bad_log.is_file() and "no_such_parameter" in bad_log.read_text()
    assert "FAILED bad-synthetic-seed0 (stage1, exit 2)" in cap.out and str(bad_log) in cap.out
    assert "no_such_parameter" in cap.out  # the one-line reason, from the log
    assert f"failed: bad-synthetic-seed0 (stage1, exit 2): {bad_log}" in cap.err
    assert (out / "good-synthetic-seed0" / "metrics.json").is_file()
    assert "2 runs, 1 failed" in cap.out


@pytest.mark.slow
def test_sweep_retrain_runs_stage2(tmp_path, capsys):
    out = tmp_path / "runs"
    rc = sweep.main(["--retrain", "--seeds", "3"] + TINY + [f"output_dir={out}", "stage2.epochs=1",
                                                            "stage2.batch_size=16"])
    assert rc == 0, capsys.readouterr()
    s2 = out / "ce-synthetic-seed3-stage2"
    metrics = json.loads((s2 / "metrics.json").read_text())
    assert metrics["stage"] == 2 and metrics["stage1_run"] == str(out / "ce-synthetic-seed3")
    assert (out / "ce-synthetic-seed3-stage2.log").is_file()


def test_sweep_bad_override_fails_before_starting(tmp_path, capsys):
    rc = sweep.main(["--seeds", "0", "1", "no_such_key=1", f"output_dir={tmp_path}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no_such_key" in err
    assert not any(tmp_path.iterdir())


def test_sweep_refuses_seed_override(tmp_path, capsys):
    assert sweep.main(["seed=3", f"output_dir={tmp_path}"]) == 2
    assert "--seeds" in capsys.readouterr().err


def test_sweep_plan_names_resume_and_conflict(tmp_path):
    out = tmp_path / "runs"
    over = TINY + [f"output_dir={out}"]
    runs = sweep.plan(["cifar10_lt/gcl", None], [0, 2], over, retrain=True)
    names = [r.name for r in runs]
    assert names == ["cifar10_lt-gcl-synthetic-seed0", "cifar10_lt-gcl-synthetic-seed2",
                     "ce-synthetic-seed0", "ce-synthetic-seed2"]
    r = runs[0]
    assert r.log == out / f"{r.name}.log" and r.run_dir == out / r.name
    assert r.stage1.argv[:2] == ["train", "cifar10_lt/gcl"] and "seed=0" in r.stage1.argv
    assert f"name={r.name}" in r.stage1.argv
    assert r.stage2.argv[:2] == ["retrain", str(r.run_dir)] and r.stage2.run_dir == out / f"{r.name}-stage2"
    assert r.stage2.depends == r.run_dir and r.stage2.log == out / f"{r.name}-stage2.log"
    # user name: one per seed
    runs = sweep.plan([None], [0, 1], over + ["name=exp"])
    assert [r.name for r in runs] == ["exp-seed0", "exp-seed1"]
    # an interrupted run with the same config is resumed, with another config it is a conflict
    from longtail.config import load_config, save_config

    cfg = load_config(None, over + ["seed=0", "name=exp-seed0", "quiet=true"])
    (out / "exp-seed0").mkdir(parents=True)
    save_config(cfg, out / "exp-seed0" / "config.yaml")
    runs = sweep.plan([None], [0], over + ["name=exp"])
    assert runs[0].state == "resume" and "--resume" in runs[0].stage1.argv
    runs = sweep.plan([None], [0], over + ["name=exp", "optim.lr=0.2"])
    assert runs[0].state == "conflict"
    assert sweep.run_all(runs, echo=lambda *a: None) == 1
    assert (out / "exp-seed0" / "config.yaml").is_file()  # another experiment's folder is left alone
    assert "FAILED (conflict)" in sweep.summary(runs)


def test_sweep_module_entry_point_dry_run(tmp_path):
    res = subprocess.run([sys.executable, "-m", "longtail.sweep", "cifar10_lt/gcl", "--seeds", "0", "1", "--jobs", "3",
                          "--dry-run", f"output_dir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "cifar10_lt-gcl-cifar10_lt-seed0: new" in res.stdout and "seed=1" in res.stdout
    assert not any(tmp_path.iterdir())


def test_sweep_names_an_unreadable_metrics_file(tmp_path, capsys):
    """A run found finished whose metrics.json is corrupt fails with the file named, not a JSON traceback."""
    out = tmp_path / "runs"
    runs = sweep.plan([None], [0, 1], TINY + [f"output_dir={out}"])
    for r, text in zip(runs, ['{"top1": 5', json.dumps({"top1": 61.5, "seed": 1})]):
        r.run_dir.mkdir(parents=True)
        (r.run_dir / "metrics.json").write_text(text)
    runs = sweep.plan([None], [0, 1], TINY + [f"output_dir={out}"])
    assert [r.state for r in runs] == ["done", "done"]
    lines = []
    assert sweep.run_all(runs, echo=lines.append) == 1
    bad = runs[0].run_dir / "metrics.json"
    assert any(line.startswith(f"FAILED {runs[0].name}: {bad}: corrupt JSON") for line in lines), lines
    assert runs[1].metrics["top1"] == 61.5 and any("top-1 61.50" in line for line in lines)
    table = sweep.summary(runs)
    assert "FAILED (unreadable metrics.json)" in table and "61.50" in table
