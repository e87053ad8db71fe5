"""Tiny configurations shared by the engine tests."""
from __future__ import annotations

from pathlib import Path

from longtail.config import load_config

TINY = [
    "data.name=synthetic",
    "data.imbalance_ratio=4",
    "data.params.n_max=8",
    "data.params.test_per_class=3",
    "data.batch_size=16",
    "data.eval_batch_size=64",
    "data.num_workers=0",
    "optim.epochs=1",
    "optim.warmup_epochs=0",
    "tensorboard=false",
    "quiet=true",
]


def tiny_config(tmp: Path, recipe: str | None = None, *extra: str) -> dict:
    """A recipe on the synthetic data, shrunk to a few iterations, writing under ``tmp``."""
    return load_config(recipe, [*TINY, f"output_dir={tmp}", *extra])
