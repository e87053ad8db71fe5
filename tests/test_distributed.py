"""torchrun data parallelism on the CPU (Gloo): two processes train one run."""
import json
import os
import subprocess
import sys

import pytest

from helpers_engine import TINY
from longtail.engine.distributed import DistInfo, per_rank_batch
from longtail.errors import ConfigError


def test_per_rank_batch():
    assert per_rank_batch(128, DistInfo(0, 4, 0)) == 32
    with pytest.raises(ConfigError, match="divisible"):
        per_rank_batch(30, DistInfo(0, 4, 0))


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "longtail",
           "train", *TINY, "optim.epochs=2", f"output_dir={tmp_path}", "name=ddp", "device=cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "ddp"
    m = json.loads((run / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["epoch"] == 1
    rows = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]  # one log, written by rank 0 only
    assert r.stdout.count("run folder:") == 2  # both ranks finish and agree on the folder
