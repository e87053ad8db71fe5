"""The training loop, stage 2, resume and the run folder, on tiny synthetic data."""
import json
import math

import pytest
import torch

from helpers_engine import tiny_config
from longtail.config import list_recipes, load_config
from longtail.engine import trainer as trainer_mod
from longtail.engine.checkpoint import load_checkpoint
from longtail.engine.schedule import lr_at
from longtail.engine.stage2 import retrain
from longtail.engine.trainer import train
from longtail.errors import CheckpointError, ConfigError, DivergenceError
from longtail.losses import LOSSES
from longtail.losses.base import LongTailLoss


# ---------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------
def test_lr_multistep_with_warmup_matches_reference_code():
    optim = load_config("cifar10_lt/ce")["optim"]
    # LDAM-DRW code: epoch (1-based) <= 5: lr * epoch / 5; > 180: lr * 1e-4; > 160: lr * 1e-2
    for e0 in range(200):
        e1 = e0 + 1
        want = 0.1 * e1 / 5 if e1 <= 5 else 0.1 * (1e-4 if e1 > 180 else 1e-2 if e1 > 160 else 1)
        assert lr_at(e0, optim) == pytest.approx(want, rel=1e-12), e0


def test_lr_cosine():
    optim = {"lr": 0.2, "warmup_epochs": 0, "schedule": "cosine", "epochs": 10, "min_lr": 0.0}
    got = [lr_at(e, optim) for e in range(10)]
    want = [0.1 * (1 + math.cos(math.pi * e / 10)) for e in range(10)]
    assert got == pytest.approx(want)
    assert lr_at(0, {**optim, "warmup_epochs": 2, "epochs": 12}) == pytest.approx(0.1)


class _Recorder(LongTailLoss):
    """CE that records every set_progress call."""

    calls: list = []

    def set_progress(self, epoch, total_epochs):
        type(self).calls.append((epoch, total_epochs))

    def forward(self, logits, target, features=None):
        return torch.nn.functional.cross_entropy(logits.float(), target)


def test_loop_calls_schedule_hooks_and_logs_lr(tmp_path):
    if "_recorder" not in LOSSES:
        LOSSES.register("_recorder")(_Recorder)
    _Recorder.calls = []
    cfg = tiny_config(tmp_path, None, "loss.name=_recorder", "optim.epochs=4", "optim.warmup_epochs=2",
                      "optim.milestones=[3]", "optim.milestone_factors=[0.1]", "optim.lr=0.2")
    run_dir, _ = train(cfg)
    assert _Recorder.calls == [(0, 4), (1, 4), (2, 4), (3, 4)]
    rows = [json.loads(l) for l in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.2, 0.2, 0.02])


def test_kps_ga_and_drw_switch_inside_training(tmp_path):
    cfg = tiny_config(tmp_path, "cifar10_lt/kps_ga", "optim.epochs=3", "loss.params.ga_epoch=2",
                      "loss.params.drw_epoch=1")
    seen = []
    orig = trainer_mod.train_one_epoch

    def spy(step, loader, device, desc="", quiet=False):
        loss = step.loss_fn
        seen.append((float(loss.ga_active), loss.drw.weight.clone()))
        return orig(step, loader, device, desc, quiet)

    trainer_mod.train_one_epoch = spy
    try:
        train(cfg)
    finally:
        trainer_mod.train_one_epoch = orig
    assert [s[0] for s in seen] == [0.0, 0.0, 1.0]
    assert torch.equal(seen[0][1], torch.ones_like(seen[0][1]))
    assert not torch.equal(seen[1][1], torch.ones_like(seen[1][1]))


# ---------------------------------------------------------------------------------------------
# every recipe runs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", list_recipes())
def test_every_recipe_runs_a_few_iterations(tmp_path, recipe):
    extra = ["model.pretrained=null", "data.num_workers=0", "data.eval_batch_size=32"]
    if not recipe.startswith("cifar"):
        # ResNet-50/152 on tiny batches: 64x64 images (layer4 at 2x2) and a small lr keep BatchNorm sane
        extra += ["data.batch_size=16", "data.params.test_per_class=1", "data.params.n_max=2", "data.imbalance_ratio=1",
                  "data.params.image_size=64", "optim.lr=0.001", "stage2.lr=0.001"]
    cfg = tiny_config(tmp_path, recipe, *extra)
    assert cfg["model"]["backbone"] == load_config(recipe)["model"]["backbone"]
    run_dir, metrics = train(cfg)
    assert 0.0 <= metrics["top1"] <= 100.0
    if recipe.endswith(("/gcl", "_crt")):  # the recipes that carry a stage-2 setting
        s2_dir, m2 = retrain(run_dir, ["stage2.epochs=1", "stage2.batch_size=16"])
        assert (s2_dir / "metrics.json").exists() and m2["stage"] == 2


# ---------------------------------------------------------------------------------------------
# run folder, stage 2, resume
# ---------------------------------------------------------------------------------------------
def test_run_folder_is_complete(tmp_path):
    run_dir, metrics = train(tiny_config(tmp_path, None, "optim.epochs=2", "name=demo"))
    assert run_dir == tmp_path / "demo"
    for f in ("config.yaml", "log.jsonl", "last.pt", "metrics.json"):
        assert (run_dir / f).is_file(), f
    saved = json.loads((run_dir / "metrics.json").read_text())
    for k in ("top1", "top5", "many", "medium", "few", "per_class", "macro_f1", "g_mean", "ece", "nll", "seed",
              "versions", "git_commit", "wall_time_s", "shot_thresholds", "checkpoint", "epoch"):
        assert k in saved, k
    assert saved["checkpoint"] == "last" and saved["epoch"] == 1
    assert len(saved["per_class"]) == 10 and saved["per_class"][0]["train_count"] == 8
    assert load_config(None, []).keys() == __import__("yaml").safe_load((run_dir / "config.yaml").read_text()).keys()
    ckpt = load_checkpoint(run_dir / "last.pt")
    assert ckpt["epoch"] == 1


def _backbone(state):
    return {k: v for k, v in state.items() if k.startswith("backbone.")}


@pytest.mark.parametrize("method, extra", [
    ("crt", ["stage2.reinit=true"]),
    ("crt", ["stage2.reinit=false", "stage2.sampler.name=cben"]),
    ("lws", []),
    ("tau_norm", []),
    ("none", []),
])
def test_stage2_leaves_backbone_bit_identical(tmp_path, method, extra):
    run_dir, _ = train(tiny_config(tmp_path, None, "optim.epochs=2", "name=s1"))
    s1 = load_checkpoint(run_dir / "last.pt")["model"]
    s2_dir, m = retrain(run_dir, [f"stage2.method={method}", "stage2.epochs=2", "name=s2", *extra])
    assert m["stage"] == 2 and m["stage2_method"] == method
    if method in ("crt", "lws"):
        s2 = load_checkpoint(s2_dir / "last.pt")["model"]
        b1, b2 = _backbone(s1), _backbone(s2)
        assert b1.keys() == b2.keys() and all(torch.equal(b1[k], b2[k]) for k in b1)  # BN stats included
        head_changed = any(not torch.equal(s1[k], s2[k]) for k in s1 if k.startswith("head.") and k in s2)
        assert head_changed or method == "lws"
    if method == "tau_norm":
        assert m["tau_selected_on"] == "test" and len(m["tau_sweep"]) == len(load_config()["stage2"]["tau_grid"])


def test_stage2_gcl_recipe_on_cosine_head(tmp_path):
    """GCL stage 2 (Algorithm 5.1): the stage-1 cosine head is fine-tuned, not re-initialized, with
    the stage-2 GCL loss (m = 0.1, s = 20, focal gamma = 1) and the CBEN sampler; the backbone,
    BatchNorm statistics included, is bit-identical to stage 1."""
    run_dir, _ = train(tiny_config(tmp_path, "cifar10_lt/gcl", "name=g"))
    s2_dir, m = retrain(run_dir, ["stage2.epochs=1", "stage2.batch_size=16"])
    assert m["stage"] == 2 and m["stage2_method"] == "crt"
    s2 = __import__("yaml").safe_load((s2_dir / "config.yaml").read_text())["stage2"]
    assert s2["reinit"] is False and s2["bn"] == "frozen" and s2["sampler"]["name"] == "cben"
    assert s2["loss"]["name"] == "gcl"
    assert {k: s2["loss"]["params"][k] for k in ("s", "m", "gamma")} == {"s": 20.0, "m": 0.1, "gamma": 1.0}
    s1_state = load_checkpoint(run_dir / "last.pt")["model"]
    s2_state = load_checkpoint(s2_dir / "last.pt")["model"]
    b1, b2 = _backbone(s1_state), _backbone(s2_state)
    assert b1 and b1.keys() == b2.keys() and all(torch.equal(b1[k], b2[k]) for k in b1)
    heads = sorted(k for k in s1_state if k.startswith("head."))
    assert heads and heads == sorted(k for k in s2_state if k.startswith("head."))
    assert "head.bias" not in heads  # cosine head: no bias
    w1 = torch.cat([s1_state[k].flatten().float() for k in heads])
    w2 = torch.cat([s2_state[k].flatten().float() for k in heads])
    change = (w2 - w1).norm() / w1.norm()
    assert 0 < change < 0.1, change  # trained a little from the stage-1 head (a re-init moves it by ~1)


def test_resume_after_interrupt_gives_identical_results(tmp_path):
    cfg = tiny_config(tmp_path, "cifar10_lt/gcl", "optim.epochs=4", "name=full", "seed=3")
    full_dir, full = train(cfg)

    cfg2 = tiny_config(tmp_path, "cifar10_lt/gcl", "optim.epochs=4", "name=cut", "seed=3")
    orig = trainer_mod.train_one_epoch
    count = {"n": 0}

    def interrupt(*a, **k):
        count["n"] += 1
        if count["n"] == 3:
            raise KeyboardInterrupt
        return orig(*a, **k)

    trainer_mod.train_one_epoch = interrupt
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg2)
    finally:
        trainer_mod.train_one_epoch = orig
    cut_dir = tmp_path / "cut"
    assert load_checkpoint(cut_dir / "last.pt")["epoch"] == 1 and not (cut_dir / "metrics.json").exists()
    _, resumed = train({}, resume=cut_dir)
    a = load_checkpoint(full_dir / "last.pt")["model"]
    b = load_checkpoint(cut_dir / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    for k in ("top1", "many", "medium", "few", "nll", "ece"):
        assert resumed[k] == full[k], k
    rows = [json.loads(l) for l in (cut_dir / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def test_unknown_method_and_dataset(tmp_path):
    with pytest.raises(ConfigError, match="unknown loss 'nope'.*gcl"):
        train(tiny_config(tmp_path, None, "loss.name=nope"))
    with pytest.raises(ConfigError, match="nope"):
        train(tiny_config(tmp_path, None, "data.name=nope"))
    with pytest.raises(ConfigError, match="unknown sampler"):
        train(tiny_config(tmp_path, None, "sampler.name=nope"))
    with pytest.raises(ConfigError, match="cosine head"):
        train(tiny_config(tmp_path, None, "loss.name=gcl"))
    with pytest.raises(ConfigError, match="eval.checkpoint 'best'.*final epoch"):
        train(tiny_config(tmp_path, None, "eval.checkpoint=best"))
    assert not any(tmp_path.iterdir())  # no run folder was started for any of these


def test_existing_run_folder_is_never_overwritten(tmp_path):
    run_dir, _ = train(tiny_config(tmp_path, None, "name=keep"))
    before = (run_dir / "metrics.json").read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        train(tiny_config(tmp_path, None, "name=keep"))
    assert (run_dir / "metrics.json").read_bytes() == before


def test_nan_loss_stops_and_keeps_last_good_epoch(tmp_path):
    class _NaNAfterFirst(LongTailLoss):
        epoch = 0

        def set_progress(self, epoch, total):
            self.epoch = epoch

        def forward(self, logits, target, features=None):
            loss = torch.nn.functional.cross_entropy(logits.float(), target)
            return loss * float("nan") if self.epoch >= 1 else loss

    if "_nan" not in LOSSES:
        LOSSES.register("_nan")(_NaNAfterFirst)
    cfg = tiny_config(tmp_path, None, "loss.name=_nan", "optim.epochs=3", "name=nan")
    with pytest.raises(DivergenceError, match=r"epoch 1.*_NaNAfterFirst"):
        train(cfg)
    ckpt = load_checkpoint(tmp_path / "nan" / "last.pt")
    assert ckpt["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert (tmp_path / "nan" / "config.yaml").exists()


def test_stage2_rejects_incompatible_or_unfinished_stage1(tmp_path):
    with pytest.raises(CheckpointError, match="not a longtail run folder"):
        retrain(tmp_path)
    run_dir, _ = train(tiny_config(tmp_path, None, "name=ok"))
    with pytest.raises(CheckpointError, match="model"):
        retrain(run_dir, ["model.head=cosine"])
    with pytest.raises(CheckpointError, match=r"does not fit.*head"):
        retrain(run_dir, ["data.params.num_classes=5", "name=other"])
    # an unfinished stage-1 run
    ckpt = load_checkpoint(run_dir / "last.pt")
    cfgtext = (run_dir / "config.yaml").read_text().replace("epochs: 1\n", "epochs: 3\n", 1)
    (run_dir / "config.yaml").write_text(cfgtext)
    with pytest.raises(CheckpointError, match="stopped after epoch 1 of 3"):
        retrain(run_dir)
    assert ckpt["epoch"] == 0


def test_corrupt_checkpoint_is_named(tmp_path):
    run_dir, _ = train(tiny_config(tmp_path, None, "name=c"))
    (run_dir / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="last.pt"):
        retrain(run_dir)


def test_bad_stage2_settings_leave_no_run_folder(tmp_path):
    run_dir, _ = train(tiny_config(tmp_path, None, "name=s1"))
    before = sorted(p.name for p in tmp_path.iterdir())
    for bad, culprit in [("stage2.sampler.name=nope", "unknown sampler 'nope'"),
                         ("stage2.loss.name=gcl", "cosine head"),
                         ("stage2.loss.params.gammma=1", "gammma"),
                         ("stage2.method=nope", "stage2.method 'nope'")]:
        with pytest.raises(ConfigError, match=culprit):
            retrain(run_dir, [bad])
        assert sorted(p.name for p in tmp_path.iterdir()) == before, bad


def test_write_json_puts_integer_arrays_on_one_line_and_leaves_strings_alone(tmp_path):
    from longtail.engine.runlog import write_json

    obj = {"confusion": [[3, 1], [0, -2]], "argv": ["optim.milestones=[82,123]", "a\n[1,\n2]"],
           "floats": [0.5, 2], "empty": [], "mixed": ["a", 1], "one": [7]}
    path = tmp_path / "m.json"
    write_json(obj, path)
    text = path.read_text()
    assert json.loads(text) == obj
    assert "[3, 1]" in text and "[0, -2]" in text and '"one": [7]' in text
    assert "optim.milestones=[82,123]" in text  # inside a string: untouched
    assert "[\n  0.5" in text  # float arrays keep json's layout
