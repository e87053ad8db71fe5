"""The command line, end to end in subprocesses (as a user runs it)."""
import json
import subprocess
import sys

import pytest

from helpers_engine import TINY


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "longtail", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_train_eval_retrain_report(tmp_path):
    out = str(tmp_path)
    r = run_cli("train", *TINY, "optim.epochs=2", f"output_dir={out}", "name=a", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "| many (>100) |" in r.stdout and "| few (<20) |" in r.stdout and f"run folder: {out}/a" in r.stdout
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())

    r = run_cli("eval", str(tmp_path / "a"), "--out", str(tmp_path / "eval.json"))
    assert r.returncode == 0, r.stderr
    again = json.loads((tmp_path / "eval.json").read_text())
    assert again["top1"] == m["top1"] and again["per_class"] == m["per_class"]
    # the confusion matrix of the training's final evaluation and of `eval` agree, and carry the
    # per-class accuracies; its largest off-diagonal cell is the first error printed
    assert again["confusion"] == m["confusion"]
    conf = m["confusion"]
    for c, row in enumerate(conf):
        assert sum(row) == m["per_class"][c]["test_count"]
        assert 100 * row[c] / sum(row) == pytest.approx(m["per_class"][c]["accuracy"])
    errors = sorted(((n, i, j) for i, row in enumerate(conf) for j, n in enumerate(row) if i != j and n),
                    key=lambda t: (-t[0], t[1], t[2]))
    assert errors, "a 2-epoch model makes errors"
    n, i, j = errors[0]
    names = [e.get("name", e["class"]) for e in m["per_class"]]
    assert f"  {names[i]} -> {names[j]}: {n} (" in r.stdout.split("most frequent errors")[1]

    r = run_cli("retrain", str(tmp_path / "a"), "stage2.epochs=1", "stage2.method=lws", "--quiet")
    assert r.returncode == 0, r.stderr

    r = run_cli("report", out)
    assert r.returncode == 0, r.stderr
    assert "stage 2: lws" in r.stdout and f"{m['top1']:.2f}" in r.stdout


def test_resume_from_the_command_line(tmp_path):
    r = run_cli("train", *TINY, "optim.epochs=1", f"output_dir={tmp_path}", "name=r")
    assert r.returncode == 0, r.stderr
    r = run_cli("train", "--resume", str(tmp_path / "r"))  # already finished: re-evaluates, same numbers
    assert r.returncode == 0, r.stderr
    # metrics.json names the command that created the run, and the one that resumed it
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["argv"] == ["train", *TINY, "optim.epochs=1", f"output_dir={tmp_path}", "name=r"]
    assert m["resumed_with"] == ["train", "--resume", str(tmp_path / "r")]


@pytest.mark.parametrize("args, culprit", [
    (["train", "optim.lrr=1"], "optim.lrr"),
    (["train", "optim.lr=fast"], "optim.lr"),
    (["train", "loss.name=nope"], "unknown loss 'nope'"),
    (["train", "cifar10_lt/nope"], "unknown recipe 'cifar10_lt/nope'"),
    (["retrain", "/nonexistent/run"], "not a longtail run folder"),
    (["eval", "/nonexistent/run"], "not a longtail run folder"),
])
def test_errors_exit_2_with_a_message_naming_the_culprit(tmp_path, args, culprit):
    r = run_cli(*args, f"output_dir={tmp_path}" if args[0] == "train" else "output_dir=x")
    assert r.returncode == 2
    assert culprit in r.stderr and "Traceback" not in r.stderr


def test_recipes_and_constants():
    r = run_cli("recipes")
    assert r.returncode == 0 and "cifar10_lt/gcl" in r.stdout.split()
    # CIFAR-10 rho=100: KPS radius 1.00 .. 2.18, GA scale 15.0 .. 32.7 (METHODS.md), without the data
    r = run_cli("constants", "cifar10_lt/kps_ga")
    assert r.returncode == 0, r.stderr
    rows = [l.split() for l in r.stdout.splitlines()[2:]]
    assert [int(x[1]) for x in rows] == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert (rows[0][2], rows[-1][2]) == ("2.1772", "1.0000")
    assert (f"{float(rows[0][5]):.1f}", f"{float(rows[-1][5]):.1f}") == ("15.0", "32.7")
    # list-file datasets read their list: a missing one is named
    r = run_cli("constants", "imagenet_lt/kps_ga", "data.root=/nonexistent")
    assert r.returncode == 2 and "/nonexistent" in r.stderr
