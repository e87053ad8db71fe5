"""Integration: CE and GCL (both stages) on the real CIFAR-10-LT subset from ../shared/data.

Small enough for CI on 2 CPU cores: the field's seed-0 selection with n_max = 500 and rho = 100
(1,240 training images; the exact protocol with n_max = 5,000 is tested in test_data_cifar.py),
two epochs, evaluation on the full 10,000-image test set at the end only.
"""
import json

import pytest
import torch

from longtail.config import load_config
from longtail.engine.checkpoint import load_checkpoint
from longtail.engine.stage2 import retrain
from longtail.engine.trainer import train

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def _cfg(recipe, root, out, *extra):
    return load_config(recipe, [f"data.root={root}", "data.params.n_max=500", "optim.epochs=2", "optim.warmup_epochs=1",
                                "eval.every=100", "data.num_workers=0", "quiet=true", "tensorboard=false",
                                f"output_dir={out}", *extra])


def _check_run_folder(run_dir, epochs):
    for f in ("config.yaml", "log.jsonl", "last.pt", "metrics.json"):
        assert (run_dir / f).is_file(), f
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["num_samples"] == 10000
    assert [c["test_count"] for c in m["per_class"]] == [1000] * 10
    assert [c["train_count"] for c in m["per_class"]] == [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]
    rows = [json.loads(l) for l in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(epochs))
    assert all(r["train_loss"] > 0 for r in rows)
    return m


def test_ce_on_real_cifar10_lt(cifar10_root, tmp_path):
    run_dir, metrics = train(_cfg("cifar10_lt/ce", cifar10_root, tmp_path, "name=ce"))
    m = _check_run_folder(run_dir, 2)
    assert m["top1"] == metrics["top1"]
    # two epochs learn something, and what they learn is the head: loss falls, head beats tail
    rows = [json.loads(l) for l in (run_dir / "log.jsonl").read_text().splitlines()]
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    assert m["per_class"][0]["accuracy"] > m["per_class"][9]["accuracy"]


def test_gcl_two_stage_on_real_cifar10_lt(cifar10_root, tmp_path):
    run_dir, _ = train(_cfg("cifar10_lt/gcl", cifar10_root, tmp_path, "name=gcl"))
    _check_run_folder(run_dir, 2)
    s2_dir, m2 = retrain(run_dir, ["stage2.epochs=1", "name=gcl-s2"])
    _check_run_folder(s2_dir, 1)
    assert m2["stage"] == 2 and m2["stage1_run"] == str(run_dir)
    s1 = load_checkpoint(run_dir / "last.pt")["model"]
    s2 = load_checkpoint(s2_dir / "last.pt")["model"]
    assert all(torch.equal(s1[k], s2[k]) for k in s1 if k.startswith("backbone."))
    assert not torch.equal(s1["head.weight"], s2["head.weight"])
