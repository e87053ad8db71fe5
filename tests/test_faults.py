"""Fault injection: kills, full disks, unwritable folders, half-written logs, two processes on one
run folder, diverging training and hostile inputs. Each case asserts the clear error or the correct
result (issue 11: nothing lost, nothing silent).

Kills are real ``SIGKILL``s of a child ``longtail`` process at a random training step, during a
checkpoint write or during a log write (the child runs :data:`DRIVER`, which installs the kill
point and calls ``longtail.engine.trainer.train``); the run is then resumed here and compared,
tensor for tensor, with an uninterrupted run. The random kill point is printed in every assertion.
"""
from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers_engine import TINY, tiny_config
from longtail import cli
from longtail.config import load_config, load_saved_config, parse_override
from longtail.data.listfile import ListFileDataset
from longtail.engine import checkpoint as ckpt_mod
from longtail.engine import trainer as trainer_mod
from longtail.engine.checkpoint import load_checkpoint
from longtail.engine.evaluation import evaluate_run
from longtail.engine.runlog import LOCK_NAME, _lock_holder, lock_run_dir, new_run_dir, read_log, release_run_dir
from longtail.engine.trainer import train
from longtail.errors import CheckpointError, ConfigError, DataError, DivergenceError

REPO = Path(__file__).resolve().parents[1]
_RNG = random.SystemRandom()

# ------------------------------------------------------------------------------------------------
# tiny data and runs
# ------------------------------------------------------------------------------------------------
LIST_COUNTS = [6, 4, 2]          # training images of the three classes (labels 10, 20, 30: remapped)
LIST_EPOCHS = 4
LIST_BATCH = 4                   # 3 steps an epoch, 12 in all


def write_list_set(root: Path, size: int = 32, test_sizes=None, counts=LIST_COUNTS) -> list[str]:
    """A tiny list-file dataset under ``root`` (PNG images); returns its config overrides."""
    rng = np.random.RandomState(0)
    train, test = [], []
    for c, n in enumerate(counts):
        label = 10 * (c + 1)
        for i in range(n):
            rel = f"train/c{c}/{i}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.randint(0, 256, (size, size, 3), dtype=np.uint8)).save(root / rel)
            train.append(f"{rel} {label}")
        for i in range(2):
            rel = f"test/c{c}/{i}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            s = size if test_sizes is None else test_sizes[(2 * c + i) % len(test_sizes)]
            Image.fromarray(rng.randint(0, 256, (s, s, 3), dtype=np.uint8)).save(root / rel)
            test.append(f"{rel} {label}")
    (root / "train.txt").write_text("\n".join(train) + "\n")
    (root / "test.txt").write_text("\n".join(test) + "\n")
    return ["data.name=imagenet_lt", f"data.root={root}", f"data.train_list={root / 'train.txt'}",
            f"data.test_list={root / 'test.txt'}", "data.params.remap_labels=true", "data.augment=cifar"]


def list_overrides(keys: list[str], out: Path, name: str, workers: int = 2) -> list[str]:
    """A 4-epoch run on the tiny list-file set (``keys`` from :func:`write_list_set`)."""
    return [*TINY, *keys, f"data.num_workers={workers}", f"data.batch_size={LIST_BATCH}", "data.eval_batch_size=8",
            f"optim.epochs={LIST_EPOCHS}", "optim.milestones=[2,3]", "optim.warmup_epochs=1",
            f"output_dir={out}", f"name={name}", "seed=5"]


SYN_EPOCHS = 3


def synthetic_overrides(out: Path, name: str) -> list[str]:
    """The in-memory (GPU-resident loader) path: 3 steps an epoch, 9 in all."""
    return [*TINY, f"optim.epochs={SYN_EPOCHS}", "optim.milestones=[2]", "optim.milestone_factors=[0.1]",
            "mixup.alpha=0.2", f"output_dir={out}", f"name={name}", "seed=2"]


DRIVER = textwrap.dedent('''
    import json, os, signal, sys
    import torch
    import longtail.engine.runlog as runlog
    import longtail.engine.step as step
    from longtail.config import load_config
    from longtail.engine.trainer import train

    mode, n, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    count = [0]

    def hit():
        count[0] += 1
        return count[0] == n

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if mode == "step":            # in the middle of an epoch, before step n
        orig_step = step.TrainStep.__call__
        def call(self, x, y):
            if hit():
                die()
            return orig_step(self, x, y)
        step.TrainStep.__call__ = call
    elif mode == "save":          # halfway through writing the n-th checkpoint
        orig_save = torch.save
        def save(obj, f, *a, **k):
            if hit():
                with open(f, "wb") as fh:
                    fh.write(b"PK\\x03\\x04 half a checkpoint")
                die()
            return orig_save(obj, f, *a, **k)
        torch.save = save
    elif mode == "log":           # halfway through writing the n-th log line
        orig_write = runlog.EpochLog.write
        def write(self, row):
            if hit():
                with open(self.path, "a") as f:
                    f.write(json.dumps(row)[:20])
                die()
            return orig_write(self, row)
        runlog.EpochLog.write = write
    elif mode == "hold":          # block at step n (holding the run folder) until killed
        orig_step = step.TrainStep.__call__
        def call(self, x, y):
            if hit():
                print("HOLDING", flush=True)
                import time
                time.sleep(600)
            return orig_step(self, x, y)
        step.TrainStep.__call__ = call
    train(load_config(None, overrides))
''')


def child(mode: str, n: int, overrides: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", DRIVER, mode, str(n), *overrides], cwd=str(REPO), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def run_killed(mode: str, n: int, overrides: list[str]) -> None:
    p = child(mode, n, overrides)
    try:
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == -signal.SIGKILL, f"child was not killed at {mode} {n} (rc {p.returncode}): {err[-2000:]}"


def assert_same_run(full_dir: Path, cut_dir: Path, full: dict, resumed: dict, epochs: int, where: str) -> None:
    a = load_checkpoint(full_dir / "last.pt")
    b = load_checkpoint(cut_dir / "last.pt")
    assert a["epoch"] == b["epoch"] == epochs - 1, where
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"{where}: {k} differs from the uninterrupted run"
    for k in ("top1", "many", "medium", "few", "nll", "ece"):
        assert resumed[k] == full[k], f"{where}: {k} {resumed[k]} vs {full[k]}"
    rows = read_log(cut_dir)
    assert [r["epoch"] for r in rows] == list(range(epochs)), f"{where}: log epochs {[r['epoch'] for r in rows]}"
    ref = read_log(full_dir)
    for r, q in zip(rows, ref):
        assert r["train_loss"] == q["train_loss"], f"{where}: epoch {r['epoch']} train loss differs"
    assert not list(cut_dir.glob(".*.tmp")), f"{where}: stale temporary files left"
    assert not (cut_dir / "log.jsonl").read_text().count("\n\n")


# ------------------------------------------------------------------------------------------------
# kill -9 at a random point, resume, compare with an uninterrupted run
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def list_reference(tmp_path_factory):
    """An uninterrupted run on the tiny list-file set with two DataLoader workers."""
    tmp = tmp_path_factory.mktemp("listref")
    keys = write_list_set(tmp / "data")
    run_dir, metrics = train(load_config(None, list_overrides(keys, tmp / "runs", "full")))
    return keys, tmp, run_dir, metrics


@pytest.mark.parametrize("mode", ["step", "log"])
def test_kill9_and_resume_is_bit_identical_on_list_files_with_workers(list_reference, mode):
    keys, tmp, full_dir, full = list_reference
    name = f"cut-{mode}"
    total = LIST_EPOCHS * 3 if mode == "step" else LIST_EPOCHS
    n = _RNG.randint(1, total)  # step 1..3: killed before the first checkpoint (resume without one)
    where = f"kill -9 at {mode} {n}"
    run_killed(mode, n, list_overrides(keys, tmp / "runs", name))
    cut_dir = tmp / "runs" / name
    assert not (cut_dir / "metrics.json").exists(), where
    # the lock died with the child (its DataLoader workers do not keep it): resume at once
    _, resumed = train({}, resume=cut_dir)
    assert_same_run(full_dir, cut_dir, full, resumed, LIST_EPOCHS, where)


def test_kill9_during_checkpoint_write_on_in_memory_data(tmp_path):
    full_dir, full = train(load_config(None, synthetic_overrides(tmp_path, "full")))
    n = _RNG.randint(1, SYN_EPOCHS)
    where = f"kill -9 during checkpoint write {n}"
    run_killed("save", n, synthetic_overrides(tmp_path, "cut"))
    cut_dir = tmp_path / "cut"
    assert list(cut_dir.glob(".last.pt.*.tmp")), f"{where}: the kill left no temporary file to clean up"
    if n > 1:
        assert load_checkpoint(cut_dir / "last.pt")["epoch"] == n - 2, where  # the previous one is intact
    else:
        assert not (cut_dir / "last.pt").exists()
    _, resumed = train({}, resume=cut_dir)
    assert_same_run(full_dir, cut_dir, full, resumed, SYN_EPOCHS, where)


def test_workers_and_no_workers_augment_identically(list_reference):
    """Per-sample seeding: the augmentation does not depend on the worker layout."""
    keys, tmp, full_dir, full = list_reference
    _, m0 = train(load_config(None, list_overrides(keys, tmp / "runs", "w0", workers=0)))
    assert all(torch.equal(load_checkpoint(full_dir / "last.pt")["model"][k], v)
               for k, v in load_checkpoint(tmp / "runs" / "w0" / "last.pt")["model"].items())
    assert m0["top1"] == full["top1"]


# ------------------------------------------------------------------------------------------------
# the log always matches the checkpoint
# ------------------------------------------------------------------------------------------------
def _interrupt_after(n_epochs: int):
    orig = trainer_mod.train_one_epoch
    count = {"n": 0}

    def interrupt(*a, **k):
        count["n"] += 1
        if count["n"] > n_epochs:
            raise KeyboardInterrupt
        return orig(*a, **k)

    return orig, interrupt


def test_half_written_log_line_and_resume(tmp_path, monkeypatch):
    full_dir, full = train(load_config(None, synthetic_overrides(tmp_path, "full")))
    orig, interrupt = _interrupt_after(1)
    monkeypatch.setattr(trainer_mod, "train_one_epoch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(None, synthetic_overrides(tmp_path, "cut")))
    monkeypatch.setattr(trainer_mod, "train_one_epoch", orig)
    cut = tmp_path / "cut"
    with open(cut / "log.jsonl", "a") as f:
        f.write('{"epoch": 1, "stage": 1, "lr": 0.0')  # a kill during the write of epoch 1's row
    _, resumed = train({}, resume=cut)
    assert_same_run(full_dir, cut, full, resumed, SYN_EPOCHS, "half line")


def test_full_disk_before_the_first_checkpoint_then_resume(tmp_path, monkeypatch):
    """ENOSPC on the first save: a clear error; the resumed run logs every epoch exactly once."""
    full_dir, full = train(load_config(None, synthetic_overrides(tmp_path, "full")))

    def full_disk(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", full_disk)
    with pytest.raises(CheckpointError) as err:
        train(load_config(None, synthetic_overrides(tmp_path, "cut")))
    cut = tmp_path / "cut"
    msg = str(err.value)
    assert str(cut / "last.pt") in msg and "No space left on device" in msg and "no checkpoint had been written" in msg
    assert [r["epoch"] for r in read_log(cut)] == [0]  # the epoch was logged, its checkpoint not written
    assert not list(cut.glob(".*.tmp")) and not (cut / "last.pt").exists()
    monkeypatch.undo()
    _, resumed = train({}, resume=cut)
    assert_same_run(full_dir, cut, full, resumed, SYN_EPOCHS, "full disk at the first save")


@pytest.mark.parametrize("failure", ["enospc", "torch_writer"])
def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    real_save = torch.save
    calls = {"n": 0}

    def second_save_fails(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            with open(f, "wb") as fh:
                fh.write(b"partial")
            if failure == "enospc":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing "
                               "file data/3: file write failed")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt_mod.torch, "save", second_save_fails)
    with pytest.raises(CheckpointError) as err:
        train(load_config(None, synthetic_overrides(tmp_path, "disk")))
    run = tmp_path / "disk"
    msg = str(err.value)
    assert f"cannot write checkpoint {run / 'last.pt'}" in msg and "previous checkpoint" in msg and "intact" in msg
    assert "inline_container" not in msg
    monkeypatch.undo()
    ck = load_checkpoint(run / "last.pt")
    assert ck["epoch"] == 0 and not list(run.glob(".*.tmp"))


def test_unwritable_run_folder_errors_name_the_path(tmp_path, monkeypatch, capsys):
    # output_dir under a regular file (read-only folders cannot be made for root)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc = cli.main(["train", *TINY, f"output_dir={blocker / 'runs'}", "name=r"])
    err = capsys.readouterr().err
    assert rc == 2 and f"cannot create run folder {blocker / 'runs' / 'r'}" in err and "Traceback" not in err
    assert err.count("\n") == 1
    # a folder that refuses writes (EACCES), whoever runs the test
    real_mkstemp = ckpt_mod.tempfile.mkstemp

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(ckpt_mod.tempfile, "mkstemp", denied)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*ro.*last\.pt: Permission denied"):
        train(tiny_config(tmp_path, None, "name=ro"))
    monkeypatch.setattr(ckpt_mod.tempfile, "mkstemp", real_mkstemp)


@pytest.mark.skipif(os.geteuid() == 0, reason="chmod does not stop root")
def test_read_only_output_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match="cannot create run folder"):
            train(tiny_config(ro, None, "name=x"))
    finally:
        ro.chmod(0o700)


def test_checkpoint_later_than_log_and_no_log(tmp_path):
    run_dir, _ = train(tiny_config(tmp_path, None, "optim.epochs=2", "name=two"))
    rows = (run_dir / "log.jsonl").read_text().splitlines()
    (run_dir / "log.jsonl").write_text(rows[0] + "\n")
    with pytest.raises(CheckpointError, match=r"from epoch 1 but the log .* ends at epoch 0"):
        train({}, resume=run_dir)
    (run_dir / "log.jsonl").unlink()
    with pytest.raises(CheckpointError, match=r"from epoch 1 but the log .* has no epoch"):
        train({}, resume=run_dir)


def test_stale_temporary_files_are_removed_on_the_next_start(tmp_path):
    run_dir, _ = train(tiny_config(tmp_path, None, "optim.epochs=2", "name=t"))
    for junk in (".last.pt.abc123.tmp", "metrics.json.tmp"):
        (run_dir / junk).write_bytes(b"junk")
    train({}, resume=run_dir)
    assert not (run_dir / ".last.pt.abc123.tmp").exists() and not (run_dir / "metrics.json.tmp").exists()


# ------------------------------------------------------------------------------------------------
# one process per run folder
# ------------------------------------------------------------------------------------------------
def _wait_for(p: subprocess.Popen, text: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    line = ""
    while time.time() < deadline:
        line = p.stdout.readline()
        if text in line:
            return
        if p.poll() is not None:
            break
    raise AssertionError(f"child never printed {text!r} (rc {p.poll()}): {p.stderr.read()[-2000:]}")


def test_second_process_on_a_run_folder_is_refused(tmp_path, capsys):
    overrides = [*TINY, "optim.epochs=2", f"output_dir={tmp_path}", "name=busy"]
    holder = child("hold", 2, overrides)
    try:
        _wait_for(holder, "HOLDING")
        run_dir = tmp_path / "busy"
        # --resume of a running run
        with pytest.raises(CheckpointError, match=rf"in use by process {holder.pid}\b"):
            train({}, resume=run_dir)
        # the same name again (a sweep started twice, or a race in new_run_dir)
        with pytest.raises(CheckpointError, match=rf"in use by process {holder.pid}\b"):
            train(load_config(None, overrides))
        with pytest.raises(CheckpointError, match=rf"in use by process {holder.pid}\b"):
            new_run_dir(tmp_path, "busy")
        rc = cli.main(["train", "--resume", str(run_dir)])
        err = capsys.readouterr().err
        assert rc == 2 and f"in use by process {holder.pid}" in err and err.count("\n") == 1
        assert "Traceback" not in err
        assert (run_dir / LOCK_NAME).read_text().strip() == str(holder.pid)
    finally:
        holder.kill()
        holder.communicate()
    # the lock goes with the killed process: the run resumes, every epoch logged once
    train({}, resume=tmp_path / "busy")
    assert [r["epoch"] for r in read_log(tmp_path / "busy")] == [0, 1]


def test_two_processes_racing_for_one_name(tmp_path):
    overrides = [*TINY, "optim.epochs=2", f"output_dir={tmp_path}", "name=race"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "longtail", "train", *overrides]
    procs = [subprocess.Popen(cmd, cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    rcs = sorted(p.returncode for p in procs)
    assert rcs == [0, 2], [o[1][-1500:] for o in outs]
    loser = next(o[1] for p, o in zip(procs, outs) if p.returncode == 2)
    # the loser either meets the lock ("is in use by process N", or, if it looks before the winner
    # has written its PID, "is in use by another process") or a folder that already holds a run
    assert ("is in use by" in loser or "already exists" in loser) and "Traceback" not in loser
    assert [r["epoch"] for r in read_log(tmp_path / "race")] == [0, 1]


def test_lock_holder_waits_briefly_for_the_pid(tmp_path):
    path = tmp_path / "lock"
    path.write_text("")
    fd = os.open(path, os.O_RDWR)
    try:
        assert _lock_holder(fd, tries=3) == "another process (its PID is not recorded yet)"
        writer = threading.Timer(0.03, lambda: path.write_text("4321\n"))
        writer.start()
        assert _lock_holder(fd) == "process 4321"  # written 30 ms after the look began
        writer.join()
    finally:
        os.close(fd)


def test_lock_is_reentrant_and_released(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    lock_run_dir(d)
    lock_run_dir(d)  # the same process may take it again
    assert (d / LOCK_NAME).read_text().strip() == str(os.getpid())
    code = f"from longtail.engine.runlog import lock_run_dir; lock_run_dir({str(d)!r})"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO))
    assert r.returncode != 0 and f"in use by process {os.getpid()}" in r.stderr
    release_run_dir(d)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO))
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------------------------------------
# divergence: never save a non-finite state, say exactly what was kept
# ------------------------------------------------------------------------------------------------
def test_nonfinite_bn_buffer_is_never_saved(tmp_path, monkeypatch):
    orig = trainer_mod.train_one_epoch
    count = {"n": 0}

    def poison_bn_in_epoch_1(step, *a, **k):
        out = orig(step, *a, **k)
        count["n"] += 1
        if count["n"] == 2:  # epoch 1 ends with a finite loss but an infinite BN running variance
            bn = next(m for m in step.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_var[0] = float("inf")
        return out

    monkeypatch.setattr(trainer_mod, "train_one_epoch", poison_bn_in_epoch_1)
    cfg = tiny_config(tmp_path, None, "optim.epochs=3", "name=bn")
    with pytest.raises(DivergenceError) as err:
        train(cfg)
    run = tmp_path / "bn"
    msg = str(err.value)
    assert "epoch 1" in msg and "running_var" in msg and "not saved" in msg
    assert "checkpoint of epoch 0" in msg and str(run / "last.pt") in msg
    ck = load_checkpoint(run / "last.pt")
    assert ck["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert [r["epoch"] for r in read_log(run)] == [0]


def test_divergence_in_the_first_epoch_says_nothing_was_written(tmp_path):
    cfg = tiny_config(tmp_path, None, "optim.lr=1e6", "optim.epochs=2", "name=boom")
    assert cfg["optim"]["lr"] == 1e6
    with pytest.raises(DivergenceError, match="no checkpoint was written"):
        train(cfg)
    assert not (tmp_path / "boom" / "last.pt").exists()


def test_large_lr_never_leaves_a_nonfinite_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path, None, "optim.lr=300", "optim.epochs=3", "name=lr300")
    try:
        train(cfg)
        message = None
    except DivergenceError as err:
        message = str(err)
    path = tmp_path / "lr300" / "last.pt"
    if path.exists():
        ck = load_checkpoint(path)
        assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
        assert all(torch.isfinite(t).all() for st in ck["optimizer"]["state"].values() for t in st.values()
                   if isinstance(t, torch.Tensor) and t.is_floating_point())
        if message is not None:
            assert f"checkpoint of epoch {ck['epoch']}" in message
    else:
        assert message is not None and "no checkpoint was written" in message


# ------------------------------------------------------------------------------------------------
# configs: clear errors, validated on every load
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, culprit", [
    ("optim.milestones=[5,20]", "optim.milestones"),   # with optim.epochs=1 (TINY)
    ("eval.every=0", "eval.every"),
    ("mixup.alpha=-0.5", "mixup.alpha"),
    ("optim.warmup_epochs=-1", "optim.warmup_epochs"),
    ("name=../../x", "name"),
    ("name=a/b", "name"),
    ("device=gpu", "device"),
    ("optim.lr=-0.1", "optim.lr"),
    ("data.shot_thresholds=[20,100]", "data.shot_thresholds"),
    ("data.shot_thresholds=[100]", "data.shot_thresholds"),
    ("data.shot_thresholds=[100,20,5]", "data.shot_thresholds"),
    ("seed=-1", "'seed'"),
])
def test_bad_values_are_one_line_errors_naming_the_key(tmp_path, capsys, override, culprit):
    rc = cli.main(["train", *TINY, f"output_dir={tmp_path / 'out'}", override])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("longtail: error: ") and err.count("\n") == 1 and culprit in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "x").exists()


def test_milestones_equal_to_epochs_mean_never_and_are_allowed():
    cfg = load_config(None, ["optim.epochs=10", "optim.milestones=[5,10]"])
    assert cfg["optim"]["milestones"] == [5, 10]


def test_override_parser_reads_yaml12_floats():
    assert parse_override("optim.weight_decay=5e-4") == ("optim.weight_decay", 5e-4)
    assert parse_override("optim.lr=1e6") == ("optim.lr", 1e6)
    assert parse_override("x=[1e-3, 2E+2]") == ("x", [1e-3, 200.0])
    assert parse_override('name="1e6"') == ("name", "1e6")  # quoted stays a string
    assert load_config(None, ["optim.weight_decay=5e-4"])["optim"]["weight_decay"] == 5e-4


def test_saved_config_round_trips_float_like_strings(tmp_path):
    run_dir, _ = train(tiny_config(tmp_path, None, 'name="1e6"'))
    assert load_saved_config(run_dir / "config.yaml")["name"] == "1e6"


@pytest.mark.parametrize("edit, culprit", [
    (("  lr: 0.05", "  lr: fast"), "optim.lr"),
    (("  epochs: 2", "  epochs: -3"), "optim.epochs"),
    (("seed: 0", "seed: 0\nspeed: 3"), "speed"),
    (("  shot_thresholds:\n  - 100\n  - 20", "  shot_thresholds:\n  - 20\n  - 100"), "data.shot_thresholds"),
])
def test_invalid_saved_config_is_a_clear_error_on_resume_and_eval(tmp_path, capsys, edit, culprit):
    run_dir, _ = train(tiny_config(tmp_path, None, "optim.epochs=2", "name=e"))
    text = (run_dir / "config.yaml").read_text()
    assert edit[0] in text
    (run_dir / "config.yaml").write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(ConfigError, match=rf"{culprit}.*config\.yaml|config\.yaml.*{culprit}"):
        train({}, resume=run_dir)
    with pytest.raises(ConfigError, match=culprit):
        evaluate_run(run_dir)
    for argv in (["train", "--resume", str(run_dir)], ["eval", str(run_dir)]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert culprit in err and err.count("\n") == 1 and "Traceback" not in err


def test_saved_config_missing_or_broken_blocks(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("seed: 0\n")
    with pytest.raises(ConfigError, match=r"config\.yaml lacks the block\(s\) data, model, loss, optim"):
        load_saved_config(path)
    path.write_text("data: {}\nmodel: {}\nloss: {}\noptim: null\n")
    with pytest.raises(ConfigError, match=r"'optim' in saved config .*config\.yaml must be a mapping"):
        load_saved_config(path)


def test_milestones_in_nominal_epochs_are_checked_against_them():
    cfg = load_config(None, ["optim.nominal_epochs=200", "optim.epochs=5", "optim.milestones=[100,150]"])
    assert cfg["optim"]["milestones"] == [100, 150]
    with pytest.raises(ConfigError, match=r"optim\.milestones.*optim\.nominal_epochs=200"):
        load_config(None, ["optim.nominal_epochs=200", "optim.milestones=[100,250]"])


@pytest.mark.parametrize("content, why", [(b"", "empty"), (os.urandom(4096), "not a readable PyTorch"),
                                          (b"PK\x03\x04" + os.urandom(100), "not a readable PyTorch")],
                         ids=["zero-bytes", "random-bytes", "truncated-zip"])
def test_empty_or_random_checkpoint_is_not_a_longtail_checkpoint(tmp_path, capsys, content, why):
    run_dir, _ = train(tiny_config(tmp_path, None, "optim.epochs=2", "name=c"))
    (run_dir / "last.pt").write_bytes(content)
    for call in (lambda: train({}, resume=run_dir), lambda: evaluate_run(run_dir)):
        with pytest.raises(CheckpointError, match=rf"last\.pt is not a longtail checkpoint.*{why}"):
            call()
    assert cli.main(["eval", str(run_dir)]) == 2
    assert "not a longtail checkpoint" in capsys.readouterr().err


def test_eval_out_must_be_a_file(tmp_path, capsys):
    run_dir, _ = train(tiny_config(tmp_path, None, "name=o"))
    folder = tmp_path / "results"
    folder.mkdir()
    assert cli.main(["eval", str(run_dir), "--out", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and str(folder / "eval.json") in err and err.count("\n") == 1
    assert cli.main(["eval", str(run_dir), "--out", str(folder / "deeper" / "m.json")]) == 0
    assert json.loads((folder / "deeper" / "m.json").read_text())["split"] == "test"


# ------------------------------------------------------------------------------------------------
# data: labels, missing files, image sizes -- all before a run folder exists
# ------------------------------------------------------------------------------------------------
def test_negative_label_is_an_error_even_with_remapping(tmp_path):
    root = tmp_path / "d"
    write_list_set(root)
    lst = tmp_path / "neg.txt"
    lst.write_text("train/c0/0.png 10\ntrain/c1/0.png -1\ntrain/c2/0.png 30\n")
    for remap in (True, False):
        with pytest.raises(DataError, match=r"neg\.txt:2: label -1 is negative"):
            ListFileDataset(lst, root, remap_labels=remap)
    with pytest.raises(DataError, match=r"neg\.txt:2: label -1 is negative"):
        ListFileDataset(lst, root, remap_labels={10: 0, -1: 1, 30: 2})


def test_missing_image_is_found_before_the_run_folder(tmp_path, capsys):
    root = tmp_path / "d"
    keys = write_list_set(root)
    (root / "test/c1/1.png").unlink()
    rc = cli.main(["train", *TINY, *keys, f"output_dir={tmp_path / 'runs'}", "name=m"])
    err = capsys.readouterr().err
    assert rc == 2 and "1 of 6 listed images not found" in err and str(root / "test/c1/1.png") in err
    assert "test.txt" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_images_smaller_than_the_crop(tmp_path, capsys):
    root = tmp_path / "d"
    keys = write_list_set(root, size=16)
    rc = cli.main(["train", *TINY, *keys, f"output_dir={tmp_path / 'runs'}", "name=s"])
    err = capsys.readouterr().err
    assert rc == 2 and "16x16, smaller than the 24x24" in err and "train.txt:1" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_mixed_image_sizes_in_an_evaluation_list(tmp_path, capsys):
    root = tmp_path / "d"
    keys = write_list_set(root, test_sizes=[32, 32, 40])
    rc = cli.main(["train", *TINY, *keys, f"output_dir={tmp_path / 'runs'}", "name=s"])
    err = capsys.readouterr().err
    assert rc == 2 and "images of different sizes" in err and "32x32" in err and "40x40" in err
    assert err.count("\n") == 1 and not (tmp_path / "runs").exists()


def test_worker_errors_keep_their_one_line_message():
    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            raise DataError(f"cannot decode image /x/{i}.jpg (listed at l.txt:{i + 1})")

    with pytest.raises(DataError) as err:
        list(torch.utils.data.DataLoader(Broken(), num_workers=1))
    assert str(err.value).startswith("cannot decode image /x/0.jpg (listed at l.txt:1)")
    assert "Traceback" not in str(err.value)
