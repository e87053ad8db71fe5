"""The device-resident and the DataLoader data paths agree: same evaluation images and metrics,
no silently dropped augmentation, the evaluation transform for every split; tau sweep in one pass."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers_engine import tiny_config
from longtail.config import save_config
from longtail.engine import stage2
from longtail.engine.evaluation import evaluate_run
from longtail.engine.metrics import Accumulator
from longtail.engine.build import build
from longtail.engine.loaders import DataLoaderAdapter, eval_batches, make_train_loader
from longtail.engine.loops import evaluate
from longtail.errors import ConfigError
from longtail.data.gpu import GpuLoader
from longtail.models import tau_normalize
from longtail.seeding import seed_everything

SAMPLER = {"name": "instance", "params": {}}


def _run(tmp: Path, *extra: str):
    seed_everything(0)
    return build(tiny_config(tmp, None, "device=cpu", *extra))


def _cat(batches):
    xs, ys = zip(*[(x.contiguous(), y) for x, y in batches])
    return torch.cat(xs), torch.cat(ys)


def test_resident_path_refuses_an_augmentation_it_lacks(tmp_path):
    run = _run(tmp_path, "data.augment=imagenet", "data.gpu_resident=true")
    assert run.bundle.in_memory
    with pytest.raises(ConfigError, match="data.gpu_resident=true.*data.augment=imagenet"):
        make_train_loader(run, SAMPLER, 1, 0)
    with pytest.raises(ConfigError, match="data.gpu_resident"):
        next(iter(eval_batches(run, "test")))


def test_auto_sends_in_memory_imagenet_augment_to_the_dataloader(tmp_path):
    """The resident path used to train such data without RandomResizedCrop and to evaluate it
    without Resize + CenterCrop; now both go through the torchvision transforms."""
    run = _run(tmp_path, "data.augment=imagenet", "data.eval_batch_size=8")
    loader = make_train_loader(run, SAMPLER, 1, 0)
    assert isinstance(loader, DataLoaderAdapter)
    loader.set_epoch(0)
    x, _ = next(iter(loader))
    assert x.shape[-2:] == (224, 224)  # RandomResizedCrop(224)
    xe, _ = next(iter(eval_batches(run, "test")))
    assert xe.shape[-2:] == (224, 224)  # Resize(256) + CenterCrop(224)
    cifar = _run(tmp_path, "data.augment=cifar")
    assert isinstance(make_train_loader(cifar, SAMPLER, 1, 0), GpuLoader)  # the fast path stays for cifar


@pytest.mark.parametrize("split", ["train", "test"])
def test_both_paths_give_the_same_evaluation_images(tmp_path, split):
    resident = _run(tmp_path, "data.gpu_resident=true")
    dataloader = _run(tmp_path, "data.gpu_resident=false")
    xr, yr = _cat(eval_batches(resident, split))
    xd, yd = _cat(eval_batches(dataloader, split))
    assert torch.equal(yr, yd)
    torch.testing.assert_close(xd, xr, rtol=0, atol=1e-5)
    xd2, _ = _cat(eval_batches(dataloader, split))
    assert torch.equal(xd, xd2)  # evaluation is deterministic: no random training transform


def test_both_paths_give_the_same_metrics_on_the_same_weights(tmp_path):
    resident = _run(tmp_path, "data.gpu_resident=true")
    dataloader = _run(tmp_path, "data.gpu_resident=false")
    dataloader.model.load_state_dict(resident.model.state_dict())
    out = []
    for run in (resident, dataloader):
        m, _ = evaluate(run.model, run.loss_fn, eval_batches(run, "test"), run.bundle.class_counts)
        out.append(m)
    assert out[0]["top1"] == out[1]["top1"] and out[0]["per_class"] == out[1]["per_class"]
    assert out[0]["nll"] == pytest.approx(out[1]["nll"], rel=1e-5)


def test_longtail_eval_of_the_train_split_uses_the_evaluation_transform(tmp_path):
    cfg = tiny_config(tmp_path, None, "device=cpu", "model.head=cosine", "loss.name=kps")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(cfg, run_dir / "config.yaml")
    seed_everything(0)
    torch.save({"model": build(cfg).model.state_dict(), "epoch": 0, "stage": 1, "seed": cfg["seed"]}, run_dir / "last.pt")
    keys = ("top1", "nll", "per_class")
    results = [evaluate_run(run_dir, split="train", overrides=[f"data.gpu_resident={r}"]) for r in ("false", "false", "true")]
    first = {k: results[0][k] for k in keys}
    for other in results[1:]:  # the same on a repeat (no random crops) and on the resident path
        assert other["top1"] == first["top1"] and other["per_class"] == first["per_class"]
        assert other["nll"] == pytest.approx(first["nll"], rel=1e-5)


def test_tau_sweep_reads_the_split_once_and_is_unchanged(tmp_path, monkeypatch):
    run = _run(tmp_path)
    calls = []

    def counting(r, split):
        calls.append(split)
        return eval_batches(r, split)

    monkeypatch.setattr(stage2, "eval_batches", counting)
    grid = [0.0, 0.5, 1.0]
    rows = stage2.tau_sweep(run, "test", grid, many=100, few=20)
    assert calls == ["test"]
    # the former two-pass computation: features from one pass, targets from a second
    _, outs = evaluate(run.model, run.loss_fn, eval_batches(run, "test"), run.bundle.class_counts, keep_logits=True)
    targets = torch.cat([y for _, y in eval_batches(run, "test")])
    for tau, row in zip(grid, rows):
        acc = Accumulator()
        with torch.no_grad():
            acc.update(tau_normalize(run.model.head, tau)(outs["features"]), targets)
        m = acc.compute(run.bundle.class_counts, many=100, few=20)
        assert row == {"tau": tau, **{k: m[k] for k in ("top1", "many", "medium", "few")}}


def test_every_training_loader_is_a_loader_drawing_the_same_targets(tmp_path):
    """The loader protocol: the resident loader, the DataLoader adapter and the stage-2 feature
    loader all have ``set_epoch`` / ``len`` / device batches, and over one sampler they draw the
    same samples in the same order, epoch after epoch (so the path never changes what is trained)."""
    from longtail.engine.features import FeatureLoader
    from longtail.engine.loaders import Loader

    sampler = {"name": "cben", "params": {}}
    resident = make_train_loader(_run(tmp_path), sampler, 3, 5, batch_size=16)
    adapter = make_train_loader(_run(tmp_path, "data.gpu_resident=false"), sampler, 3, 5, batch_size=16)
    run = _run(tmp_path)
    targets = torch.as_tensor(run.bundle.train.targets)
    feats = FeatureLoader(torch.arange(len(targets), dtype=torch.float32).unsqueeze(1), targets,
                          make_train_loader(run, sampler, 3, 5, batch_size=16).sampler, 16)
    assert isinstance(resident, GpuLoader) and isinstance(adapter, DataLoaderAdapter)
    drawn = {}
    for epoch in (0, 2):
        for name, loader in (("resident", resident), ("adapter", adapter), ("features", feats)):
            assert isinstance(loader, Loader), name
            seed_everything(epoch)  # fit seeds the epoch before set_epoch
            loader.set_epoch(epoch)
            ys = [y for _, y in loader]
            assert len(ys) == len(loader), name
            drawn[name] = torch.cat(ys)
        assert torch.equal(drawn["resident"], drawn["adapter"]) and torch.equal(drawn["resident"], drawn["features"])
    assert not isinstance(object(), Loader)
