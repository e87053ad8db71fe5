"""``longtail reproduce``: the table registry, the planned commands and one tiny real run."""
from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys

import pytest

from longtail.config import load_config, recipe_path
from longtail.errors import ConfigError
from longtail.reproduce import comparability, format_list, main, plan, same_run, summarize_plan
from longtail.thesis_tables import TABLES, get_table

# Published CIFAR-10-LT top-1 (%) as printed in each thesis table (Tables 3.2 / 3.4 print the
# error; 100 - error here). Written out by hand from the thesis text.
EXPECTED = {
    "3.2": {"CE": {100: 70.36, 50: 75.22},
            "LDAM-DRW": {100: 77.03, 50: 81.03},
            "KPS (with GA)": {100: 81.23, 50: 84.59}},
    "3.4": {"KPS w/o GA and DRW": {100: 80.15, 50: 83.60},
            "KPS-DRW": {100: 80.91, 50: 83.89},
            "KPS-GA": {100: 81.23, 50: 84.59}},
    "4.2": {"CE": {100: 71.07, 50: 75.31},
            "LDAM-DRW": {100: 77.03, 50: 81.03},
            "LA": {100: 80.92, 50: None},
            "FBL": {100: 82.46, 50: 84.30}},
    "4.4": {"Linear decrease": {100: 75.97}, "Linear increase": {100: 81.67}, "Sine increase": {100: 81.22},
            "Cosine increase": {100: 80.79}, "Parabolic increase": {100: 82.46}},
    "5.2": {"CE": {200: 65.68, 100: 70.70, 50: 74.81},
            "CE + mixup": {200: 65.84, 100: 72.96, 50: 79.48},
            "LDAM-DRW": {200: 73.52, 100: 77.03, 50: 81.03},
            "CE + mixup + cRT": {200: 73.06, 100: 79.15, 50: 84.21},
            "GCL (CBEN + cRT)": {200: 79.03, 100: 82.68, 50: 85.46}},
    "5.4": {"Cosine": {100: 79.21}, "Power difference (exp. 1/3)": {100: 80.80},
            "Power difference (exp. 1/4)": {100: 82.31}, "Logarithm difference": {100: 82.68}},
    "5.5": {"Instance balance + cRT": {100: 80.41}, "Class balance + cRT": {100: 82.43},
            "Effective number + cRT": {100: 82.47}, "CBEN + cRT": {100: 82.68}},
    "5.6": {"w/o re-training": {100: 80.52}, "CBEN + LWS": {100: 82.25},
            "CBEN + tau-normalization": {100: 82.16}, "CBEN + cRT": {100: 82.68}},
    # the key rows (issue: measured, not promised): the issue's numbers, each from its chapter's table
    "key": {"CE": {100: 70.70}, "CE, fp32 (amp=none)": {100: 70.70}, "CE + mixup": {100: 72.96},
            "CE + mixup + cRT": {100: 79.15}, "LDAM-DRW": {100: 77.03}, "KPS with GA (batch 64)": {100: 81.23},
            "FBL": {100: 82.46}, "FBL, fp32 (amp=none)": {100: 82.46}, "FBL, batch 128 (Table 4.1)": {100: 82.46},
            "FBL, A = 30 (batch 128)": {100: 82.46}, "GCL stage 1 only": {100: 80.52}, "GCL + CBEN + cRT": {100: 82.68},
            "GCL + CBEN + cRT, classifier lr 0.008": {100: 82.68},
            "GCL stage 1 only, authors' code schedule": {100: 80.52},
            "GCL + CBEN + cRT, authors' code schedule": {100: 82.68}},
    # outside the thesis: He et al. 2016, Table 6, ResNet-32 on CIFAR-10 (7.51 % error)
    "ref": {"CE, ResNet-32, He et al. 2016 schedule": {1: 92.49}},
}

# The thesis's headline numbers (Tables 3.2, 4.2, 5.2 and the GCL ablations), per (table, row), as
# the project's methods reference summarises them.
HEADLINE_NUMBERS = {
    ("5.2", "CE"): {200: 65.68, 100: 70.70, 50: 74.81},
    ("5.2", "CE + mixup"): {200: 65.84, 100: 72.96, 50: 79.48},
    ("5.2", "LDAM-DRW"): {200: 73.52, 100: 77.03, 50: 81.03},
    ("3.2", "LDAM-DRW"): {100: 77.03, 50: 81.03},
    ("4.2", "LDAM-DRW"): {100: 77.03, 50: 81.03},
    ("5.2", "CE + mixup + cRT"): {200: 73.06, 100: 79.15, 50: 84.21},
    ("3.2", "KPS (with GA)"): {100: 81.23, 50: 84.59},
    ("3.4", "KPS-GA"): {100: 81.23},
    ("4.2", "FBL"): {100: 82.46, 50: 84.30},
    ("5.2", "GCL (CBEN + cRT)"): {200: 79.03, 100: 82.68, 50: 85.46},
    ("3.4", "KPS w/o GA and DRW"): {100: 80.15},
    ("3.4", "KPS-DRW"): {100: 80.91},
    ("4.4", "Linear decrease"): {100: 75.97},
    ("4.4", "Linear increase"): {100: 81.67},
    ("4.4", "Sine increase"): {100: 81.22},
    ("4.4", "Cosine increase"): {100: 80.79},
    ("4.4", "Parabolic increase"): {100: 82.46},
    ("5.4", "Logarithm difference"): {100: 82.68},
    ("5.6", "w/o re-training"): {100: 80.52},
    ("5.6", "CBEN + LWS"): {100: 82.25},
    ("5.6", "CBEN + tau-normalization"): {100: 82.16},
    ("5.6", "CBEN + cRT"): {100: 82.68},
    ("5.5", "Instance balance + cRT"): {100: 80.41},
    ("5.5", "Class balance + cRT"): {100: 82.43},
    ("5.5", "Effective number + cRT"): {100: 82.47},
    ("5.5", "CBEN + cRT"): {100: 82.68},
}

SYN = ["data.name=synthetic", "optim.epochs=1", "stage2.epochs=1", "data.params.n_max=100",
       "data.params.test_per_class=10", "data.params.image_size=16", "tensorboard=false"]


def _row_cells(md):
    """The rows of a written table's markdown tables: method label -> its cells."""
    return {ln.split("|")[1].strip(): [c.strip() for c in ln.strip().strip("|").split("|")]
            for ln in md.splitlines() if ln.startswith("| ") and "|---" not in ln and not ln.startswith("| method")}


def _args(table, out, overrides=(), seeds=(0,), rho=None, dry_run=False, jobs=1):
    return argparse.Namespace(table=table, overrides=list(overrides), seeds=list(seeds), rho=rho, out=str(out),
                              jobs=jobs, dry_run=dry_run)


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------
def test_registry_has_the_tables_and_rows():
    assert set(TABLES) == set(EXPECTED)
    for tid, rows in EXPECTED.items():
        assert [r.label for r in TABLES[tid].rows] == list(rows), tid


@pytest.mark.parametrize("tid", sorted(EXPECTED))
def test_published_numbers_match_the_thesis(tid):
    for row in TABLES[tid].rows:
        assert dict(row.published) == EXPECTED[tid][row.label], (tid, row.label)


def test_published_numbers_match_the_headline_summary():
    for (tid, label), numbers in HEADLINE_NUMBERS.items():
        pub = TABLES[tid].row(label).published
        for rho, value in numbers.items():
            assert pub[rho] == value, (tid, label, rho)
    # The chapter-specific CE baselines are the thesis tables' own (the headline summary lists Table 5.2's).
    assert TABLES["3.2"].row("CE").published == {100: 70.36, 50: 75.22}
    assert TABLES["4.2"].row("CE").published == {100: 71.07, 50: 75.31}


def test_rhos_are_the_reported_ones():
    assert TABLES["5.2"].rhos == [200, 100, 50]
    assert TABLES["3.2"].rhos == [100, 50]
    assert TABLES["3.4"].rhos == [100, 50]
    assert TABLES["4.2"].rhos == [100, 50]
    for tid in ("4.4", "5.4", "5.5", "5.6"):
        assert TABLES[tid].rhos == [100]
    assert TABLES["ref"].rhos == [1]


def test_reference_row_trains_he_et_al_schedule_on_all_of_cifar10(tmp_path):
    """He et al. 2016, sec. 4.2: lr 0.1, /10 at 32k and 48k iterations, 64k in all, at 391 steps per
    epoch (50,000 images, batch 128); weight decay 1e-4; no warm-up."""
    from longtail.data.lt import long_tail_counts
    from longtail.engine.schedule import lr_at

    table = TABLES["ref"]
    (row,) = table.rows
    plan_ = plan(table, [0], None, ["data.root=unused"], tmp_path)
    assert plan_.rhos == [1]
    cfg = load_config(row.recipe, list(row.overrides) + ["data.imbalance_ratio=1"])
    assert cfg["loss"]["name"] == "ce" and cfg["sampler"]["name"] == "instance" and cfg["mixup"]["alpha"] == 0
    assert cfg["data"]["batch_size"] == 128 and cfg["model"]["backbone"] == "resnet32"
    steps = math.ceil(50000 / 128)
    assert cfg["optim"]["epochs"] == round(64000 / steps)
    assert cfg["optim"]["weight_decay"] == 1e-4
    for k, iters in enumerate((32000, 48000)):  # each lr step at the epoch its iteration falls in
        assert cfg["optim"]["milestones"][k] == math.ceil(iters / steps)
    lrs = [lr_at(e, cfg["optim"]) for e in range(cfg["optim"]["epochs"])]
    assert lrs[0] == 0.1 and lrs[81] == 0.1
    assert lrs[82] == pytest.approx(0.01) and lrs[122] == pytest.approx(0.01)
    assert lrs[123] == pytest.approx(0.001) and lrs[-1] == pytest.approx(0.001)
    assert long_tail_counts(5000, 10, 1) == [5000] * 10


@pytest.mark.parametrize("tid", sorted(EXPECTED))
def test_every_recipe_exists_and_every_config_resolves(tid):
    table = TABLES[tid]
    for row in table.rows:
        assert recipe_path(row.recipe).is_file()
        cfg = load_config(row.recipe, list(table.overrides) + list(row.overrides) + ["data.imbalance_ratio=100"])
        assert cfg["data"]["name"] == "cifar10_lt" and cfg["model"]["backbone"] == "resnet32"
        if row.two_stage:
            cfg2 = load_config(base=cfg, overrides=list(row.stage2))
            assert cfg2["stage2"]["method"] in ("crt", "lws", "tau_norm", "none")


def test_two_stage_rows():
    for tid in ("5.4", "5.5", "5.6"):
        assert all(r.two_stage for r in TABLES[tid].rows)
    assert all(r.recipe == "cifar10_lt/gcl" for t in ("5.5", "5.6") for r in TABLES[t].rows)
    # CE + mixup is the stage-1 run of CE + mixup + cRT, evaluated without re-training
    assert [r.two_stage for r in TABLES["5.2"].rows] == [False, True, False, True, True]
    mixup, mixup_crt = TABLES["5.2"].row("CE + mixup"), TABLES["5.2"].row("CE + mixup + cRT")
    assert mixup.recipe == mixup_crt.recipe and mixup.stage2 == ("stage2.method=none",)
    methods = [load_config(base=load_config("cifar10_lt/gcl"), overrides=list(r.stage2))["stage2"]["method"]
               for r in TABLES["5.6"].rows]
    assert methods == ["none", "lws", "tau_norm", "crt"]
    samplers = [load_config(base=load_config("cifar10_lt/gcl"), overrides=list(r.stage2))["stage2"]["sampler"]["name"]
                for r in TABLES["5.5"].rows]
    assert samplers == ["instance", "class_balanced", "effective_number", "cben"]
    # KPS chapter: batch 64 (Table 3.1)
    for tid in ("3.2", "3.4"):
        assert "data.batch_size=64" in TABLES[tid].overrides


def test_get_table_and_list(capsys):
    assert get_table("table_5.6") is TABLES["5.6"]
    with pytest.raises(ConfigError, match="unknown table"):
        get_table("9.9")
    text = format_list()
    for tid in TABLES:
        assert f"Table {tid}:" in text
    assert main(_args("list", "unused")) == 0
    assert "Table 5.5:" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Planning and dry runs
# ---------------------------------------------------------------------------------------------
def test_stage1_runs_are_shared_within_and_across_tables(tmp_path):
    p56 = plan(TABLES["5.6"], [0, 1], None, SYN, tmp_path)
    s1 = [j for j in p56.jobs if j.stage == 1]
    s2 = [j for j in p56.jobs if j.stage == 2]
    assert len(s1) == 2 and len(s2) == 8  # one stage-1 run per seed, four re-trainings each
    assert {j.depends for j in s2} == {j.run_dir for j in s1}
    assert all(d.parent.name == "synthetic-rho100" for d in [j.run_dir for j in p56.jobs])
    p55 = plan(TABLES["5.5"], [0, 1], None, SYN, tmp_path)
    assert [j.run_dir for j in p55.jobs if j.stage == 1] == [j.run_dir for j in s1]
    # CBEN + cRT is the same stage-2 run in Tables 5.5 and 5.6 (and the GCL row of 5.2 / log row of 5.4)
    assert p55.cells[(100, 3)] == p56.cells[(100, 3)]
    p52 = plan(TABLES["5.2"], [0, 1], [100], SYN, tmp_path)
    assert p52.cells[(100, 4)] == p56.cells[(100, 3)]
    p54 = plan(TABLES["5.4"], [0, 1], None, SYN, tmp_path)
    assert p54.cells[(100, 3)] == p56.cells[(100, 3)]
    # a different stage-2 schedule re-uses the same stage-1 runs
    p56b = plan(TABLES["5.6"], [0, 1], None, [o for o in SYN if not o.startswith("stage2")] + ["stage2.epochs=2"],
                tmp_path)
    assert [j.run_dir for j in p56b.jobs if j.stage == 1] == [j.run_dir for j in s1]
    assert p56b.cells[(100, 3)] != p56.cells[(100, 3)]


def test_dry_run_prints_the_commands_and_creates_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args("5.6", out, SYN, seeds=[0, 1, 2], dry_run=True)) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("python -m longtail")]
    train = [l for l in lines if l.startswith("python -m longtail train ")]
    retrain = [l for l in lines if l.startswith("python -m longtail retrain ")]
    assert len(train) == 3 and len(retrain) == 12
    assert all("quiet=true" in l for l in lines)
    assert all("stage2.epochs" not in l for l in train)  # stage-2 overrides go to retrain only
    assert all("data.name=synthetic" in l and "data.imbalance_ratio=100" in l for l in train)
    for seed in (0, 1, 2):
        assert sum(f"seed={seed} " in l for l in train) == 1
    stage1_dirs = {re.search(r"retrain (\S+)", l).group(1) for l in retrain}
    assert len(stage1_dirs) == 3
    for method in ("none", "lws", "tau_norm", "crt"):
        assert sum(f"stage2.method={method} " in l for l in retrain) == 3
    assert not out.exists()


def test_table_wide_and_scaled_overrides(tmp_path):
    p = plan(TABLES["3.4"], [0], [100], ["data.name=synthetic", "optim.epochs=8"], tmp_path)
    argv = {j.argv[1]: " ".join(j.argv) for j in p.jobs}
    for recipe, cmd in argv.items():
        assert "data.batch_size=64" in cmd and "optim.milestones=[6,7]" in cmd and "optim.warmup_epochs=0" in cmd
    assert "loss.params.ga_epoch=5" in argv["cifar10_lt/kps_ga"]
    assert "loss.params.drw_epoch=6" in argv["cifar10_lt/kps_drw"]
    assert "ga_epoch" not in argv["cifar10_lt/kps"]
    # an explicit value is kept, not scaled; one epoch still switches GA on in its last epoch
    p = plan(TABLES["3.4"], [0], [100], ["optim.epochs=1", "optim.milestones=[0,1]"], tmp_path)
    cmd = " ".join(next(j.argv for j in p.jobs if j.argv[1] == "cifar10_lt/kps_ga"))
    assert "loss.params.ga_epoch=0" in cmd and cmd.count("optim.milestones") == 1
    # the published schedule is untouched without an epochs override
    p = plan(TABLES["3.4"], [0], [100], [], tmp_path)
    assert all("milestones" not in " ".join(j.argv) for j in p.jobs)


def test_bad_overrides_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="--rho"):
        plan(TABLES["5.6"], [0], None, ["data.imbalance_ratio=50"], tmp_path)
    with pytest.raises(ConfigError, match="--seeds"):
        plan(TABLES["5.6"], [0], None, ["seed=3"], tmp_path)
    with pytest.raises(ConfigError, match="no_such_key"):
        plan(TABLES["5.6"], [0], None, ["optim.no_such_key=1"], tmp_path)


def test_comparability():
    assert comparability("cifar10_lt", ["data.root=/data", "device=cuda:1", "quiet=true"]) == (True, [])
    assert comparability("cifar10_lt", ["optim.epochs=2"]) == (False, ["optim.epochs=2"])
    assert comparability("synthetic", [])[0] is False


def test_resume_states(tmp_path):
    p = plan(TABLES["5.6"], [0], None, SYN, tmp_path)
    s1 = next(j for j in p.jobs if j.stage == 1)
    s2 = [j for j in p.jobs if j.stage == 2]
    s1.run_dir.mkdir(parents=True)
    from longtail.config import load_config, save_config

    save_config(load_config(s1.argv[1], s1.argv[2:]), s1.run_dir / "config.yaml")  # what the run saved
    (s1.run_dir / "last.pt").write_bytes(b"x")
    s2[0].run_dir.mkdir(parents=True)
    (s2[0].run_dir / "config.yaml").write_text("{}\n")
    (s2[1].run_dir).mkdir(parents=True)
    (s2[1].run_dir / "metrics.json").write_text(json.dumps({"top1": 1.0}))
    p = plan(TABLES["5.6"], [0], None, SYN, tmp_path)
    jobs = {j.run_dir: j for j in p.jobs}
    assert jobs[s1.run_dir].state == "resume" and jobs[s1.run_dir].argv == ["train", "--resume", str(s1.run_dir)]
    assert jobs[s2[0].run_dir].state == "restart" and jobs[s2[0].run_dir].command().startswith("rm -r ")
    assert jobs[s2[1].run_dir].state == "done"
    assert jobs[s2[2].run_dir].state == "new"
    # a stage-1 folder holding another experiment's config is left alone and reported
    save_config(load_config(s1.argv[1], s1.argv[2:] + ["optim.lr=0.3"]), s1.run_dir / "config.yaml")
    p = plan(TABLES["5.6"], [0], None, SYN, tmp_path)
    job = next(j for j in p.jobs if j.run_dir == s1.run_dir)
    assert job.state == "conflict" and "another config" in job.note


def _finish(run_dir, cfg, metrics):
    """A finished run folder as train / retrain leave it: config.yaml and metrics.json."""
    from longtail.config import save_config

    run_dir.mkdir(parents=True)
    save_config(dict(cfg, name=run_dir.name, output_dir=str(run_dir.parent)), run_dir / "config.yaml")
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


def test_same_run_compares_everything_but_the_name():
    cfg = load_config("cifar10_lt/gcl", ["seed=0"])
    assert same_run(cfg, dict(cfg, name="x", output_dir="/elsewhere", quiet=True), 1)
    for key, value in (("seed", 1), ("amp", "none"), ("optim.lr", 0.2)):
        head, _, leaf = key.rpartition(".")
        other = json.loads(json.dumps(cfg))
        (other[head] if head else other)[leaf] = value
        assert not same_run(cfg, other, 1), key
        assert same_run(cfg, other, 1, ignore=(key,)), key
    lr = dict(cfg, stage2=dict(cfg["stage2"], lr=0.5))
    assert same_run(cfg, lr, 1)  # a stage-1 run does not use its stage2 block
    none = dict(cfg, stage2=dict(cfg["stage2"], method="none"))
    assert same_run(none, dict(lr, stage2=dict(lr["stage2"], method="none")), 2)  # nothing trained in stage 2
    crt = dict(cfg, stage2=dict(cfg["stage2"], method="crt"))
    assert not same_run(crt, dict(lr, stage2=dict(lr["stage2"], method="crt")), 2)


def test_finished_runs_under_other_names_are_reused(tmp_path):
    p = plan(TABLES["5.6"], [0], None, SYN, tmp_path)
    s1 = next(j for j in p.jobs if j.stage == 1)
    cfg1 = load_config(s1.argv[1], s1.argv[2:])
    renamed = s1.run_dir.parent / "my-gcl-run"
    _finish(renamed, cfg1, {"top1": 50.0, "stage": 1, "seed": 0})
    # another seed and another precision are other runs, whatever their names
    _finish(s1.run_dir.parent / "a-seed1", dict(cfg1, seed=1), {"top1": 51.0, "stage": 1, "seed": 1})
    _finish(s1.run_dir.parent / "a-fp32", dict(cfg1, amp="none"), {"top1": 52.0, "stage": 1, "seed": 0})
    p = plan(TABLES["5.6"], [0], None, SYN, tmp_path)
    stage1 = [j for j in p.jobs if j.stage == 1]
    assert [(j.run_dir, j.state) for j in stage1] == [(renamed, "done")] and "my-gcl-run" in stage1[0].note
    s2 = [j for j in p.jobs if j.stage == 2]
    assert s2 and all(j.depends == renamed and j.argv[1] == str(renamed) for j in s2)
    assert all(j.run_dir.name.startswith("my-gcl-run-s2-") and j.state == "new" for j in s2)
    # a finished stage 2 of that run, saved before the stage-2 lr default changed: 'none' trains
    # nothing, so it is the same run; a cRT with another lr is not
    none = next(j for j in s2 if j.argv[2:3] == ["stage2.method=none"])
    crt = next(j for j in s2 if j.argv[2:3] == ["stage2.method=crt"])
    for job, name in ((none, "old-none"), (crt, "old-crt")):
        cfg2 = load_config(base=cfg1, overrides=job.argv[2:-3] + ["stage2.lr=0.123"])
        _finish(renamed.parent / name, cfg2, {"top1": 60.0, "stage": 2, "seed": 0, "stage1_run": str(renamed)})
    # the same stage 2 of another stage-1 run is not reused
    cfg2 = load_config(base=cfg1, overrides=crt.argv[2:-3])
    _finish(renamed.parent / "crt-of-a-seed1", cfg2, {"top1": 61.0, "stage": 2, "seed": 0, "stage1_run": "x/a-seed1"})
    jobs = {j.argv[2]: j for j in plan(TABLES["5.6"], [0], None, SYN, tmp_path).jobs if j.stage == 2}
    assert (jobs["stage2.method=none"].run_dir.name, jobs["stage2.method=none"].state) == ("old-none", "done")
    assert (jobs["stage2.method=crt"].run_dir, jobs["stage2.method=crt"].state) == (crt.run_dir, "new")


# ---------------------------------------------------------------------------------------------
# One tiny real run
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_table_5_6_on_synthetic_data(tmp_path, capsys):
    out = tmp_path / "rep"
    rc = main(_args("5.6", out, SYN, seeds=[0]))
    md_path = out / "table_5.6.md"
    assert md_path.is_file()
    md = md_path.read_text()
    assert "# Table 5.6:" in capsys.readouterr().out  # the table is printed too
    assert "Not CIFAR-10-LT" in md and "not comparable" in md
    rows = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[0] in EXPECTED["5.6"]:
            rows[cells[0]] = cells
    assert set(rows) == set(EXPECTED["5.6"])
    for label, cells in rows.items():
        assert float(cells[6]) == EXPECTED["5.6"][label][100]  # thesis column
    number = re.compile(r"^\d+\.\d\d$")
    for label in ("w/o re-training", "CBEN + LWS", "CBEN + cRT"):
        assert number.match(rows[label][2]), rows[label]
        assert rows[label][1] == "1" and rows[label][7] == "n/c"
    tau = rows["CBEN + tau-normalization"]
    # tau-normalization needs a linear head; GCL's is cosine: either it ran or it is reported as failed
    assert number.match(tau[2]) or "failed" in tau[1]
    assert rc == (0 if number.match(tau[2]) else 1)
    # one stage-1 run, reused by every row
    s1 = [d for d in (out / "synthetic-rho100").iterdir() if "-s2-" not in d.name]
    assert len(s1) == 1 and (s1[0] / "metrics.json").is_file()
    # resumable: a second call trains nothing that finished
    stamp = (s1[0] / "metrics.json").stat().st_mtime_ns
    p = plan(TABLES["5.6"], [0], None, SYN, out)
    assert sum(j.state != "done" for j in p.jobs) == (0 if rc == 0 else 1)
    assert (s1[0] / "metrics.json").stat().st_mtime_ns == stamp


def test_markdown_of_finished_cifar_runs_shows_differences(tmp_path):
    from longtail.reproduce import format_markdown, summarize_plan

    p = plan(TABLES["5.6"], [0, 1], None, ["data.root=/data"], tmp_path)
    assert p.data_name == "cifar10_lt"
    for i, row in enumerate(TABLES["5.6"].rows):
        for seed, folder in enumerate(p.cells[(100, i)]):
            if row.label == "CBEN + tau-normalization" and seed == 1:
                continue  # one seed missing
            folder.mkdir(parents=True, exist_ok=True)
            m = {"top1": 80.0 + i + seed, "many": 90.0, "medium": 80.0, "few": None, "stage": 2, "wall_time_s": 10.0,
                 "device": "cuda", "versions": {"torch": "2.x", "gpu": "Some GPU"}}
            (folder / "metrics.json").write_text(json.dumps(m))
    md = format_markdown(p, summarize_plan(p), wall_s=12.0)
    assert "Not CIFAR-10-LT" not in md and "not comparable" not in md.lower()
    assert "JPEG" in md and "Some GPU" in md
    lines = _row_cells(md)
    assert lines["w/o re-training"][2] == "80.50 ± 0.71" and lines["w/o re-training"][7] == f"{80.5 - 80.52:+.2f}"
    assert lines["w/o re-training"][5] == "-"  # no few-shot value
    assert lines["CBEN + cRT"][7] == f"{83.5 - 82.68:+.2f}"
    # a seed with no result that did not fail (not trained yet) is "not run", not "failed"
    assert lines["CBEN + tau-normalization"][1] == "1 (1 not run)" and lines["CBEN + tau-normalization"][2] == "82.00"
    # a recipe-changing override makes the numbers "not comparable" even on CIFAR-10-LT
    p2 = plan(TABLES["5.6"], [0, 1], None, ["optim.epochs=3"], tmp_path)
    assert "**Not comparable**" in format_markdown(p2, summarize_plan(p2))


def test_key_rows_run_what_their_chapter_tables_run(tmp_path):
    """Each key row trains exactly its source table's run: chapter overrides included, GCL shared."""
    p = plan(TABLES["key"], [0], [100], ["data.root=/d"], tmp_path)
    s1 = [j for j in p.jobs if j.stage == 1]
    # one GCL stage-1 run for the three recipe-schedule GCL rows, one for the two code-schedule rows
    # one CE + mixup stage-1 run for its two rows (as is and re-trained), as in Table 5.2
    assert [j.argv[1] for j in s1] == ["cifar10_lt/ce", "cifar10_lt/ce", "cifar10_lt/ce_mixup_crt", "cifar10_lt/ldam_drw",
                                       "cifar10_lt/kps_ga", "cifar10_lt/fbl", "cifar10_lt/fbl", "cifar10_lt/fbl",
                                       "cifar10_lt/fbl", "cifar10_lt/gcl", "cifar10_lt/gcl"]
    ce, ce32, _, _, kps, fbl, fbl32, fbl128, fbl30, gcl, code = (" ".join(j.argv) for j in s1)
    # CE and FBL in float32 differ from their rows by amp=none alone (and so train in their own folders)
    for bf16, fp32, i in ((ce, ce32, 0), (fbl, fbl32, 5)):
        only_fp32 = [w for w in fp32.split() if w not in bf16.split()]
        assert only_fp32[0] == "amp=none" and [w.split("=")[0] for w in only_fp32] == ["amp", "name"]
        assert "amp=" not in bf16 and s1[i].run_dir != s1[i + 1].run_dir
    assert "data.batch_size=64" in kps and "data.batch_size=64" not in ce
    # FBL at the recipe's batch 64 (the authors' script, section 4.4.1.2) and at Table 4.1's 128
    assert "data.batch_size" not in fbl and "data.batch_size=128" in fbl128
    assert load_config("cifar10_lt/fbl")["data"]["batch_size"] == 64
    # half the stimulus strength, beside the batch-128 row: the two differ by A alone
    assert [w for w in fbl30.split() if w not in fbl128.split()][0] == "loss.params.A=30.0"
    assert load_config("cifar10_lt/fbl")["loss"]["params"]["A"] == 60.0 and "loss.params.A" not in fbl128
    assert "data.batch_size=64" in code and "optim.milestone_factors=[0.1,0.01]" in code
    assert "milestone_factors" not in gcl
    s2 = [j for j in p.jobs if j.stage == 2]
    assert len(s2) == 7 and sum("stage2.lr=0.008" in " ".join(j.argv) for j in s2) == 1
    assert sum(str(s1[10].run_dir) in " ".join(j.argv) for j in s2) == 2  # none (stage 1 only) and cRT
    mixup = [" ".join(j.argv) for j in s2 if str(s1[2].run_dir) in " ".join(j.argv)]
    assert len(mixup) == 2 and sum("stage2.method=none" in a for a in mixup) == 1
    # the same stage-1 folders as the chapter tables' own plans: runs are shared, not re-trained
    p56 = plan(TABLES["5.6"], [0], [100], ["data.root=/d"], tmp_path)
    p32 = plan(TABLES["3.2"], [0], [100], ["data.root=/d"], tmp_path)
    p52 = plan(TABLES["5.2"], [0], [100], ["data.root=/d"], tmp_path)
    assert s1[9].run_dir == p56.jobs[0].run_dir
    assert s1[4].run_dir == next(j.run_dir for j in p32.jobs if j.argv[1] == "cifar10_lt/kps_ga")
    assert [j.run_dir for j in p52.jobs if j.stage == 1 and "mixup" in j.argv[1]] == [s1[2].run_dir]


def test_rows_limits_the_jobs_to_the_selected_rows(tmp_path):
    """--rows trains only what the matching rows need (their stage 1 included); every row keeps its
    cells, so the table reports what has finished for all rows."""
    full = plan(TABLES["key"], [0], [100], ["data.root=/d"], tmp_path)
    by_label = {row.label: ri for ri, row in enumerate(TABLES["key"].rows)}

    def dirs(p):
        return [j.run_dir for j in p.jobs]

    one = plan(TABLES["key"], [0], [100], ["data.root=/d"], tmp_path, rows=["gcl + cben + crt"])  # any case
    ri = by_label["GCL + CBEN + cRT"]
    assert dirs(one) == full.stage1[(100, ri)] + full.cells[(100, ri)]
    assert one.cells == full.cells and one.stage1 == full.stage1
    # a shell-style pattern; the two code-schedule rows share one stage-1 run
    code = plan(TABLES["key"], [0], [100], ["data.root=/d"], tmp_path, rows=["*authors' code schedule"])
    assert [j.stage for j in code.jobs] == [1, 2, 2]
    assert all("optim.milestone_factors=[0.1,0.01]" in " ".join(j.argv) for j in code.jobs[:1])
    assert {j.depends for j in code.jobs[1:]} == {code.jobs[0].run_dir}
    # several patterns: the union, in the full plan's order
    two = plan(TABLES["key"], [0], [100], ["data.root=/d"], tmp_path, rows=["FBL*", "CE"])
    assert dirs(two) == [d for d in dirs(full) if d in set(dirs(two))]
    assert [j.argv[1] for j in two.jobs] == ["cifar10_lt/ce"] + ["cifar10_lt/fbl"] * 4  # batch 64, fp32, batch 128, A = 30
    ldam = summarize_plan(two)[by_label["LDAM-DRW"]]
    assert ldam["failures"] == [] and ldam["missing"] == 1 and ldam["seeds"] == 0


def test_rows_table_names_its_command_and_leaves_other_rows_not_run(tmp_path, capsys):
    """The table written after ``--rows`` gives the command that reproduces it, --rows included, and
    shows the rows it did not train as without result, not as failed; nothing is trained when the
    selected runs have finished."""
    args = _args("5.6", tmp_path, ["data.root=/d"])
    args.rows = ["CBEN + LWS"]
    p = plan(TABLES["5.6"], [0], None, ["data.root=/d"], tmp_path, rows=args.rows)
    for job in p.jobs:
        job.run_dir.mkdir(parents=True)
        (job.run_dir / "metrics.json").write_text(json.dumps({"top1": 81.0 if job.stage == 2 else 79.0}))
    assert main(args) == 0
    md = (tmp_path / "table_5.6.md").read_text()
    assert f"- Command: `longtail reproduce 5.6 data.root=/d --seeds 0 --rho 100 --out {tmp_path} --rows 'CBEN + LWS'`" in md
    cells = _row_cells(md)
    assert cells["CBEN + LWS"][1:3] == ["1", "81.00"]
    for other in ("w/o re-training", "CBEN + tau-normalization", "CBEN + cRT"):  # each its own stage-2 run
        assert cells[other][1:3] == ["0", "-"], other
    assert "failed" not in md
    assert "Table 5.6: 2 runs, 2 finished already; running 0" in capsys.readouterr().out


def test_rows_that_match_nothing_name_the_pattern_and_the_rows(tmp_path):
    with pytest.raises(ConfigError, match=r"--rows 'KPS alone' matches no row of Table key; its rows: 'CE'; "):
        plan(TABLES["key"], [0], [100], [], tmp_path, rows=["CE", "KPS alone"])
    r = subprocess.run([sys.executable, "-m", "longtail", "reproduce", "key", "--rows", "nope", "--dry-run"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--rows 'nope' matches no row" in r.stderr


def test_cli_rows_dry_run_prints_only_the_selected_commands(tmp_path):
    r = subprocess.run([sys.executable, "-m", "longtail", "reproduce", "5.6", "data.root=/d", "--seeds", "0",
                        "--out", str(tmp_path), "--rows", "CBEN + LWS", "--dry-run"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    commands = [ln for ln in r.stdout.splitlines() if not ln.startswith("#")]
    assert len(commands) == 2 and "train cifar10_lt/gcl" in commands[0] and "stage2.method=lws" in commands[1]
    assert r.stdout.startswith("# Table 5.6: 2 runs (0 finished, reused)")


# ---------------------------------------------------------------------------------------------
# The thesis tables are data; one metrics reader
# ---------------------------------------------------------------------------------------------
def test_thesis_tables_module_holds_only_data():
    """longtail.thesis_tables imports nothing that plans or runs (no engine, jobs, config, torch)."""
    import ast
    import subprocess
    import sys

    import longtail.thesis_tables as tt

    tree = ast.parse(open(tt.__file__).read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
    assert imported == {"__future__", "dataclasses", "typing", ".errors"}
    code = ("import sys, longtail.thesis_tables; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('longtail')))")
    mods = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert mods.strip() == "['longtail', 'longtail.errors', 'longtail.thesis_tables']"
    # every top-level function is a data helper or the registry lookup
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert funcs == {"_kps_table", "_gcl_retrained", "_key_row", "get_table"}


def test_summary_names_a_corrupt_metrics_file(tmp_path):
    from longtail.reproduce import format_markdown, summarize_plan

    p = plan(TABLES["5.6"], [0, 1], None, ["data.root=/data"], tmp_path)
    s1 = p.stage1[(100, 0)]
    for seed, folder in enumerate(p.cells[(100, 3)]):  # CBEN + cRT: seed 1's result is corrupt
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"top1": 82.0, "wall_time_s": 10.0}) if seed == 0 else "{")
        s1[seed].mkdir(parents=True, exist_ok=True)
        (s1[seed] / "metrics.json").write_text(json.dumps({"top1": 80.0, "wall_time_s": 100.0}))
    crt = next(e for e in summarize_plan(p) if e["label"] == "CBEN + cRT")
    bad = p.cells[(100, 3)][1] / "metrics.json"
    assert crt["seeds"] == 1 and crt["top1"] == 82.0 and crt["top1_std"] is None
    assert crt["wall_time_s"] == 110.0  # stage 1 + stage 2
    assert len(crt["failures"]) == 1 and crt["failures"][0].startswith(f"{bad}: corrupt JSON")
    lone = next(e for e in summarize_plan(p) if e["label"] == "w/o re-training")
    assert lone["failures"] == [] and lone["missing"] == 2 and lone["top1"] is None
    assert f"CBEN + cRT (rho 100): 1 run(s) without result: {bad}: corrupt JSON" in format_markdown(p, summarize_plan(p))
