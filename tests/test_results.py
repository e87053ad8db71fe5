"""``longtail results``: collecting run files and generating the results page from them."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from longtail.config import save_config
from longtail.errors import DataError
from longtail.results import collect, find_runs, format_page, key_rows_summary, load_sources, row_configs, same_computation
from longtail.results import main as results_main
from longtail.report import load_runs
from longtail.thesis_tables import KEY_TABLE, TABLES


def _write_run(folder: Path, cfg: dict, metrics: dict, checkpoint: bool = False) -> Path:
    folder.mkdir(parents=True)
    save_config(cfg, folder / "config.yaml")
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "log.jsonl").write_text(json.dumps({"epoch": 0, "train_loss": 1.0}) + "\n")
    if checkpoint:
        (folder / "last.pt").write_bytes(b"not small")
    return folder


def _metrics(seed: int, top1: float, stage: int = 1, wall: float = 100.0, **extra) -> dict:
    return {"top1": top1, "many": top1 + 10, "medium": top1, "few": top1 - 10, "seed": seed, "stage": stage,
            "wall_time_s": wall, "machine": "test CPU, 2 cores", "precision": "bf16 autocast", **extra}


def _with(cfg: dict, dotted: str, value) -> dict:
    cfg = json.loads(json.dumps(cfg))
    node = cfg
    *path, last = dotted.split(".")
    for k in path:
        node = node[k]
    node[last] = value
    return cfg


def test_same_computation_ignores_location_and_precision_but_not_the_recipe():
    t = TABLES["5.2"]
    cfg, _ = row_configs(t, t.row("CE"), 100, 0)
    moved = _with(_with(_with(cfg, "data.root", "/elsewhere"), "amp", "bf16"), "eval.every", 10)
    assert same_computation(cfg, moved, 1)
    assert not same_computation(cfg, _with(cfg, "optim.lr", 0.2), 1)
    assert not same_computation(cfg, _with(cfg, "data.imbalance_ratio", 50), 1)
    # a stage-1 run's stage2 block does not decide its identity; a stage-2 run's does
    assert same_computation(cfg, _with(cfg, "stage2.lr", 0.5), 1)
    assert not same_computation(cfg, _with(cfg, "stage2.lr", 0.5), 2)
    # a stage-2 method that trains nothing: its lr, epochs, sampler do not count; its method, tau and bn do
    t56 = TABLES["5.6"]
    _, none = row_configs(t56, t56.row("w/o re-training"), 100, 0)
    assert same_computation(none, _with(_with(none, "stage2.lr", 0.5), "stage2.sampler.name", "instance"), 2)
    assert not same_computation(none, _with(none, "stage2.method", "crt"), 2)
    assert not same_computation(none, _with(none, "stage2.bn", "reestimate"), 2)
    _, tau = row_configs(t56, t56.row("CBEN + tau-normalization"), 100, 0)
    assert same_computation(tau, _with(tau, "stage2.epochs", 3), 2)
    assert not same_computation(tau, _with(tau, "stage2.tau", 0.5), 2)
    _, crt = row_configs(t56, t56.row("CBEN + cRT"), 100, 0)
    assert not same_computation(crt, _with(crt, "stage2.lr", 0.5), 2)


def test_a_row_that_sets_the_precision_takes_only_runs_in_it_and_others_prefer_their_own(tmp_path):
    """``amp`` does not decide a match, except for a row that sets it ("CE, fp32 (amp=none)"); where
    a bf16 and an fp32 run of one seed both match the CE row, the recipe's own ``amp: auto`` is shown,
    whichever folder sorts first."""
    t52 = TABLES["5.2"]
    cfg, _ = row_configs(t52, t52.row("CE"), 100, 0)
    assert cfg["amp"] == "auto"
    fp32 = _with(cfg, "amp", "none")
    ce, ce32 = KEY_TABLE.row("CE"), KEY_TABLE.row("CE, fp32 (amp=none)")
    runs = tmp_path / "runs"
    _write_run(runs / "a-ce-fp32-seed0", fp32, _metrics(0, 67.0, precision="fp32"))  # sorts first
    _write_run(runs / "b-ce-seed0", cfg, _metrics(0, 65.0))
    loaded = load_runs(runs)
    assert [r["path"] for r in loaded] == sorted(r["path"] for r in loaded)
    assert [m[0]["metrics"]["top1"] for m in find_runs(loaded, KEY_TABLE, ce, 100)] == [65.0]
    assert [m[0]["metrics"]["top1"] for m in find_runs(loaded, KEY_TABLE, ce32, 100)] == [67.0]
    # without a float32 run the fp32 row is empty; without a bf16 run CE shows the fp32 one (labelled)
    bf16_only = [r for r in loaded if r["config"]["amp"] == "auto"]
    assert find_runs(bf16_only, KEY_TABLE, ce32, 100) == []
    fp32_only = [r for r in loaded if r["config"]["amp"] == "none"]
    assert [m[0]["metrics"]["precision"] for m in find_runs(fp32_only, KEY_TABLE, ce, 100)] == ["fp32"]
    # a row's own precision decides a match; another key the row does not set still does not
    assert not same_computation(fp32, cfg, 1, ("amp",)) and same_computation(fp32, cfg, 1)
    assert same_computation(fp32, _with(fp32, "eval.every", 7), 1, ("amp",))


def test_probes_are_listed_with_their_commands_but_never_matched_to_a_row(tmp_path):
    """A run under a ``*-probes`` folder (here the CE recipe on a re-encoded copy of the data, which
    ``data.root`` alone cannot tell apart) is not a seed of the CE row; the page lists it apart."""
    t52 = TABLES["5.2"]
    src = tmp_path / "results" / "machine"
    for seed, top1 in ((0, 65.0), (1, 66.0)):
        cfg, _ = row_configs(t52, t52.row("CE"), 100, seed)
        _write_run(src / "rho100" / f"ce-seed{seed}", cfg, _metrics(seed, top1, argv=["train", f"seed={seed}"]))
    cfg, _ = row_configs(t52, t52.row("CE"), 100, 0)
    _write_run(src / "rho100" / "copy-probes" / "q50" / "ce-seed0", _with(cfg, "data.root", "/q50"),
               _metrics(0, 50.0, argv=["train", "data.root=/q50"]))
    sources = load_sources(tmp_path / "results")
    probes = load_sources(tmp_path / "results", probes=True)
    assert [Path(r["path"]).parent.name for r in sources["machine"]] == ["rho100", "rho100"]
    assert [Path(r["path"]).parent.name for r in probes["machine"]] == ["q50"]
    e = {e["row"].label: e for e in key_rows_summary(sources)}["CE"]
    assert (e["seeds"], e["top1"]) == (2, 65.5)
    # without the probe filter the probe would replace seed 0 of the row or join it
    unfiltered = load_runs(src)
    assert len(unfiltered) == 3 and sum(len(find_runs([r], KEY_TABLE, KEY_TABLE.row("CE"), 100)) for r in unfiltered) == 3
    page = format_page(sources, probes=probes)
    assert "Sources: `results/machine/` (2 runs)." in page
    listed = page.split("## Run files")[1]
    assert listed.index("`results/machine/`:") < listed.index("`results/machine/`, probes (not matched to rows):")
    assert "top-1 50.00" in listed.split("probes (not matched to rows):")[1]
    assert "top-1 50.00" not in listed.split("probes (not matched to rows):")[0]
    assert load_sources(tmp_path / "nothing", probes=True) == {}


def test_key_rows_mean_std_diff_and_two_stage_wall_time(tmp_path):
    src = tmp_path / "results" / "cpu"
    t52, t56 = TABLES["5.2"], TABLES["5.6"]
    ce = t52.row("CE")
    for seed, top1 in ((0, 69.5), (1, 71.3)):
        cfg, _ = row_configs(t52, ce, 100, seed)
        _write_run(src / "rho100" / f"ce-seed{seed}", _with(cfg, "data.root", f"/data{seed}"), _metrics(seed, top1))
    # CE with another lr: not the published recipe, must not be counted
    cfg, _ = row_configs(t52, ce, 100, 2)
    _write_run(src / "rho100" / "ce-lr-seed2", _with(cfg, "optim.lr", 0.3), _metrics(2, 10.0))
    # GCL: one stage-1 run and two stage-2 runs (recipe lr, and the lr-0.008 variant)
    crt = t56.row("CBEN + cRT")
    cfg1, cfg2 = row_configs(t56, crt, 100, 0)
    s1 = _write_run(src / "rho100" / "gcl-seed0", cfg1, _metrics(0, 80.0, wall=4000.0, precision=None))
    _write_run(src / "rho100" / "gcl-seed0-crt", cfg2,
               _metrics(0, 82.0, stage=2, wall=300.0, stage1_run=f"/somewhere/{s1.name}"))
    _, cfg2b = row_configs(t56, crt, 100, 0, ("stage2.lr=0.008",))
    _write_run(src / "rho100" / "gcl-seed0-crt-lr008", cfg2b, _metrics(0, 81.0, stage=2, wall=200.0))

    sources = load_sources(tmp_path / "results")
    summary = {e["row"].label: e for e in key_rows_summary(sources)}
    e = summary["CE"]
    assert e["seeds"] == 2 and e["seed_list"] == [0, 1]
    assert e["top1"] == pytest.approx((69.5 + 71.3) / 2)
    assert e["top1_std"] == pytest.approx(statistics.stdev([69.5, 71.3]))
    assert e["diff"] == pytest.approx((69.5 + 71.3) / 2 - 70.70)
    assert e["many"] == pytest.approx((79.5 + 81.3) / 2)
    e = summary["GCL + CBEN + cRT"]
    assert (e["seeds"], e["top1"], e["wall_time_s"]) == (1, 82.0, 4300.0)
    assert e["diff"] == pytest.approx(82.0 - 82.68)
    e = summary["GCL + CBEN + cRT, classifier lr 0.008"]
    assert (e["seeds"], e["top1"], e["wall_time_s"]) == (1, 81.0, 4200.0)
    assert summary["LDAM-DRW"]["source"] is None and summary["GCL stage 1 only"]["source"] is None
    # the stage-1 run recorded no precision: the stage-2 run's is shown
    assert summary["GCL + CBEN + cRT"]["precisions"] == ["bf16 autocast"]

    page = format_page(sources, notes="## Findings\n\nGCL misses because of X.\n")
    assert "| CE | 70.70 | 70.40 ± 1.27 | -0.30 |" in page
    assert "| GCL + CBEN + cRT | 82.68 | 82.00 | -0.68 |" in page
    assert "| LDAM-DRW | 77.03 | not yet run |" in page
    assert "## Findings" in page and "GCL misses because of X." in page
    assert "| CE | 100 | 70.70 | 70.40 ± 1.27 | -0.30 |" in page  # Table 5.2 section
    assert "10.00" not in page.split("## Run files")[0]  # the lr-0.3 run is in no table


def test_find_runs_one_stage_row_needs_the_table_overrides(tmp_path):
    # KPS-GA of Table 3.2 trains at batch 64 (Table 3.1): a batch-128 run is another experiment
    t = TABLES["3.2"]
    row = t.row("KPS (with GA)")
    cfg, _ = row_configs(t, row, 100, 0)
    assert cfg["data"]["batch_size"] == 64
    _write_run(tmp_path / "r" / "kps64", cfg, _metrics(0, 80.0))
    _write_run(tmp_path / "r" / "kps128", _with(cfg, "data.batch_size", 128), _metrics(0, 70.0))
    from longtail.report import load_runs

    (m, parent), = find_runs(load_runs(tmp_path / "r"), t, row, 100)
    assert Path(m["path"]).name == "kps64" and parent is None


def test_collect_copies_only_small_files_and_never_overwrites(tmp_path):
    t = TABLES["5.2"]
    cfg, _ = row_configs(t, t.row("CE"), 100, 0)
    runs = tmp_path / "runs"
    _write_run(runs / "rho100" / "ce-seed0", cfg, _metrics(0, 70.0), checkpoint=True)
    unfinished = runs / "rho100" / "ce-seed1"
    unfinished.mkdir(parents=True)
    save_config(cfg, unfinished / "config.yaml")
    dest = tmp_path / "results" / "cpu"
    out = collect(runs, dest)
    assert out == [dest / "rho100" / "ce-seed0"]
    assert sorted(p.name for p in out[0].iterdir()) == ["config.yaml", "log.jsonl", "metrics.json"]
    assert not (dest / "rho100" / "ce-seed1").exists()
    assert collect(runs, dest) == out  # idempotent
    # a later evaluation of the final model (longtail eval --out RUN/eval-test.json) travels with it
    (runs / "rho100" / "ce-seed0" / "eval-test.json").write_text(json.dumps({"top1": 70.0}))
    (runs / "rho100" / "ce-seed0" / "eval-val.json").write_text("{}")
    collect(runs, dest)
    assert sorted(p.name for p in out[0].iterdir()) == ["config.yaml", "eval-test.json", "log.jsonl", "metrics.json"]
    (runs / "rho100" / "ce-seed0" / "metrics.json").write_text(json.dumps(_metrics(0, 99.0)))
    with pytest.raises(DataError, match="already exists with different content"):
        collect(runs, dest)
    assert json.loads((dest / "rho100" / "ce-seed0" / "metrics.json").read_text())["top1"] == 70.0
    with pytest.raises(DataError, match="no finished run"):
        collect(unfinished, dest)


def test_cli_page_writes_the_file_and_every_key_row(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "notes.md").write_text("Nothing measured yet.\n")
    out = tmp_path / "docs" / "results.md"
    r = subprocess.run([sys.executable, "-m", "longtail", "results", "page", "--results", str(tmp_path / "results"),
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    for kr in KEY_TABLE.rows:
        assert f"| {kr.label} |" in text
    assert "Nothing measured yet." in text
    # each row's command: stage 2 with its own overrides, or with the recipe's block and nothing after it
    commands = {line.split(" | ")[0][2:]: line.rsplit("`", 2)[1] for line in text.splitlines() if line.endswith("` |")}
    assert commands["CE + mixup + cRT"].endswith("seed=0 name=RUN && longtail retrain RUNS/RUN")
    assert commands["CE + mixup"].endswith("&& longtail retrain RUNS/RUN stage2.method=none")
    assert commands["GCL + CBEN + cRT, classifier lr 0.008"].endswith("RUNS/RUN stage2.method=crt stage2.lr=0.008")
    assert "&&" not in commands["CE"]


def test_committed_page_is_generated_from_committed_runs(tmp_path):
    """docs/results.md is exactly what ``longtail results page`` writes from results/."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "results.md"
    assert results_main(["page", "--results", str(root / "results"), "--out", str(out)]) == 0
    assert (root / "docs" / "results.md").read_text() == out.read_text(), \
        "run `longtail results page` and commit docs/results.md"


def test_cli_collect_without_finished_runs_is_a_one_line_error(tmp_path):
    (tmp_path / "runs" / "half").mkdir(parents=True)
    r = subprocess.run([sys.executable, "-m", "longtail", "results", "collect", str(tmp_path / "runs"), "--into",
                        str(tmp_path / "results" / "x")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"longtail: error: {tmp_path / 'runs'}: no finished run (a folder with metrics.json and config.yaml)"


def test_per_class_tables_of_the_thesis_average_to_its_published_top1():
    """Table 4.5's per-class accuracies (CE and FBL, rho 100 and 50) are transcribed correctly: their
    means are Table 4.2's numbers."""
    rows = [r for r in TABLES["4.2"].rows if r.per_class]
    assert [r.label for r in rows] == ["CE", "FBL"]
    for r in rows:
        assert sorted(r.per_class) == [50, 100]
        for rho, values in r.per_class.items():
            assert len(values) == 10
            assert sum(values) / 10 == pytest.approx(r.published[rho], abs=0.005)


def test_per_class_section_compares_each_key_variant_with_table_4_5(tmp_path):
    from longtail.results import per_class_summary

    src = tmp_path / "results" / "cpu"
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

    def per_class(acc):
        return [{"class": c, "name": names[c], "accuracy": a, "test_count": 1000} for c, a in enumerate(acc)]

    t52, t42 = TABLES["5.2"], TABLES["4.2"]
    ce_acc = [[90.0 + s] * 5 + [40.0 + s] * 5 for s in (0, 2)]
    for seed, acc in enumerate(ce_acc):
        cfg, _ = row_configs(t52, t52.row("CE"), 100, seed)
        _write_run(src / f"ce-seed{seed}", cfg, _metrics(seed, sum(acc) / 10, per_class=per_class(acc)))
    fbl = KEY_TABLE.row("FBL, batch 128 (Table 4.1)")
    cfg, _ = row_configs(KEY_TABLE, fbl, 100, 0)
    _write_run(src / "fbl-b128-seed0", cfg, _metrics(0, 80.0, per_class=per_class([80.0] * 10)))

    entries = per_class_summary(load_sources(tmp_path / "results"))
    assert [(e["reference"].label, e["row"].label, e["seeds"]) for e in entries] == [
        ("CE", "CE", 2), ("FBL", "FBL, batch 128 (Table 4.1)", 1)]
    ce, fb = entries
    published_ce = t42.row("CE").per_class[100]
    assert ce["measured"] == pytest.approx([91.0] * 5 + [41.0] * 5)  # mean over the two seeds
    assert ce["diff"] == pytest.approx([m - p for m, p in zip(ce["measured"], published_ce)])
    assert fb["diff"][0] == pytest.approx(80.0 - 88.1) and fb["diff"][9] == pytest.approx(80.0 - 81.9)
    assert ce["names"] == names

    page = format_page(load_sources(tmp_path / "results"))
    section = page.split("## Per class against the thesis")[1].split("\n## ")[0]
    assert "| **thesis CE** | 91.0 | 98.2 |" in section and "| 71.07 | |" in section
    assert "| CE (cpu) | 91.0 | 91.0 | 91.0 | 91.0 | 91.0 | 41.0 |" in section
    assert "| diff | +0.0 | -7.2 |" in section  # 91.0 - 91.0, 91.0 - 98.2
    assert "| **thesis FBL** | 88.1 |" in section and "FBL, batch 128 (Table 4.1) (cpu) | 80.0 |" in section
    # no run with per-class numbers: no section
    assert "## Per class" not in format_page({})


def test_errors_section_takes_the_confusion_from_metrics_or_a_matching_later_evaluation(tmp_path):
    from longtail.results import EVAL_FILE, run_confusion

    src = tmp_path / "results" / "cpu"
    t52 = TABLES["5.2"]
    conf = [[0] * 10 for _ in range(10)]
    for c in range(10):
        conf[c][c] = 900
        conf[c][(c + 1) % 10] = 100 - c  # class c -> c+1: 100, 99, ..., 91 errors; 955 in all
    per_class = [{"class": c, "name": f"k{c}", "accuracy": 90.0, "test_count": 1000} for c in range(10)]
    cfg, _ = row_configs(t52, t52.row("CE"), 100, 0)
    run = _write_run(src / "ce-seed0", cfg, _metrics(0, 90.0, epoch=199, split="test", per_class=per_class))
    fbl = KEY_TABLE.row("FBL")
    cfg, _ = row_configs(KEY_TABLE, fbl, 100, 1)
    _write_run(src / "fbl-seed1", cfg, _metrics(1, 90.0, per_class=per_class, confusion=conf))

    runs = load_runs(tmp_path / "results")
    ce_run = next(r for r in runs if r["path"].endswith("ce-seed0"))
    assert run_confusion(ce_run) is None  # metrics.json predates the matrix and nothing else is there
    # a later evaluation of another model (another epoch) is ignored, the same model's is used
    evaluation = {"top1": 90.0, "epoch": 150, "stage": 1, "split": "test", "per_class": per_class, "confusion": conf}
    (run / EVAL_FILE).write_text(json.dumps(evaluation))
    assert run_confusion(ce_run) is None
    evaluation["epoch"] = 199
    (run / EVAL_FILE).write_text(json.dumps(evaluation))
    assert run_confusion(ce_run)["confusion"] == conf
    evaluation["top1"] = 89.0
    (run / EVAL_FILE).write_text(json.dumps(evaluation))
    assert run_confusion(ce_run) is None

    evaluation["top1"] = 90.0
    (run / EVAL_FILE).write_text(json.dumps(evaluation))
    page = format_page(load_sources(tmp_path / "results"))
    section = page.split("## Most frequent errors")[1].split("\n## ")[0]
    assert "| CE (cpu) | 0 | 955 | k0 -> k1 100; k1 -> k2 99; k2 -> k3 98; k3 -> k4 97 |" in section
    assert "| FBL (cpu) | 1 | 955 | k0 -> k1 100;" in section
    assert "## Most frequent errors" not in format_page({})
