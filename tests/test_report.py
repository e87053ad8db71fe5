"""Tests of longtail.report on fake run folders."""
import csv
import io
import json
import math

import pytest
import yaml

from longtail.errors import DataError
from longtail.report import format_table, load_runs, summarize


def _config(seed, loss="ce", name=None, beta=None):
    cfg = {
        "name": name or f"{loss}-cifar10_lt-seed{seed}",
        "output_dir": "runs",
        "seed": seed,
        "data": {"name": "cifar10_lt", "imbalance_ratio": 100},
        "loss": {"name": loss, "params": {} if beta is None else {"beta": beta}},
    }
    return cfg


def _write_run(folder, seed, top1, many, medium, few, recipe, config, **extra):
    folder.mkdir(parents=True)
    metrics = {
        "top1": top1, "top5": 90.0, "many": many, "medium": medium, "few": few,
        "per_class": [], "macro_f1": 1.0, "g_mean": 1.0, "ece": 1.0, "nll": 1.0,
        "shot_thresholds": {"many": 100, "few": 20}, "epoch": 200, "checkpoint": "last",
        "split": "test", "seed": seed, "wall_time_s": 1.5, "versions": {"torch": "2.4"},
        "git_commit": None, "recipe": recipe,
    }
    metrics.update(extra)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


@pytest.fixture
def runs_dir(tmp_path):
    root = tmp_path / "runs"
    _write_run(root / "ce-seed0", 0, 70.0, 90.0, 60.0, 40.0, "ce", _config(0))
    _write_run(root / "ce-seed1", 1, 72.0, 91.0, 64.0, 43.0, "ce", _config(1))
    _write_run(root / "ldam-seed0", 0, 77.0, 80.0, 75.0, 70.0, "ldam-drw", _config(0, "ldam"))
    _write_run(root / "ldam-seed1", 1, 78.0, 82.0, 76.0, 75.0, "ldam-drw", _config(1, "ldam"))
    # a crashed run (no metrics.json) and an unrelated folder: skipped when scanning
    (root / "crashed").mkdir()
    (root / "crashed" / "config.yaml").write_text(yaml.safe_dump(_config(2)))
    (root / "tb").mkdir()
    return root


def test_load_runs_recursive(runs_dir):
    runs = load_runs([runs_dir])
    assert [r["path"].rsplit("/", 1)[-1] for r in runs] == ["ce-seed0", "ce-seed1", "ldam-seed0", "ldam-seed1"]
    assert runs[0]["metrics"]["top1"] == 70.0
    assert runs[0]["config"]["loss"]["name"] == "ce"
    # a run folder, a metrics.json file and duplicates
    again = load_runs([runs_dir / "ce-seed0", runs_dir / "ce-seed0" / "metrics.json", str(runs_dir / "ce-seed1")])
    assert len(again) == 2


def test_summarize_mean_std(runs_dir):
    rows = summarize(load_runs(runs_dir))
    assert [r["method"] for r in rows] == ["ce", "ldam-drw"]
    ce, ldam = rows
    assert ce["seeds"] == 2 and sorted(ce["seed_list"]) == [0, 1]
    assert ce["top1"] == pytest.approx(71.0)
    assert ce["top1_std"] == pytest.approx(math.sqrt(2))  # sample std of 70, 72 (ddof=1)
    assert ce["many"] == pytest.approx(90.5)
    assert ce["many_std"] == pytest.approx(math.sqrt(0.5))
    assert ce["medium"] == pytest.approx(62.0)
    assert ce["medium_std"] == pytest.approx(math.sqrt(8))
    assert ce["few"] == pytest.approx(41.5)
    assert ldam["top1"] == pytest.approx(77.5)
    assert ldam["few_std"] == pytest.approx(math.sqrt(12.5))


def test_format_markdown_and_csv(runs_dir):
    rows = summarize(load_runs(runs_dir))
    md = format_table(rows)
    lines = md.strip().split("\n")
    assert lines[0] == "| method | seeds | top-1 | many | medium | few |"
    assert lines[2] == "| ce | 2 | 71.00 ± 1.41 | 90.50 ± 0.71 | 62.00 ± 2.83 | 41.50 ± 2.12 |"
    assert lines[3] == "| ldam-drw | 2 | 77.50 ± 0.71 | 81.00 ± 1.41 | 75.50 ± 0.71 | 72.50 ± 3.54 |"

    md = format_table(rows, reference={"ce": 70.36, "ldam-drw": {"top1": 77.03}})
    lines = md.strip().split("\n")
    assert lines[0].endswith("| few | reference | diff |")
    assert lines[2].endswith("| 41.50 ± 2.12 | 70.36 | +0.64 |")
    assert lines[3].endswith("| 77.03 | +0.47 |")
    md = format_table(rows, reference={"ce": 72.0})
    assert md.strip().split("\n")[2].endswith("| 72.00 | -1.00 |")
    assert md.strip().split("\n")[3].endswith("|  |  |")  # no reference for ldam-drw

    table = list(csv.reader(io.StringIO(format_table(rows, fmt="csv", reference={"ce": 70.0}))))
    assert table[0] == ["method", "seeds", "top1", "top1_std", "many", "many_std", "medium", "medium_std",
                        "few", "few_std", "reference", "diff"]
    assert table[1] == ["ce", "2", "71.00", "1.41", "90.50", "0.71", "62.00", "2.83", "41.50", "2.12",
                        "70.00", "+1.00"]
    assert table[2][-2:] == ["", ""]
    with pytest.raises(ValueError):
        format_table(rows, fmt="latex")


def test_single_seed_and_none_metrics(tmp_path):
    _write_run(tmp_path / "a", 0, 50.0, 60.0, None, 10.0, "ce", _config(0))
    rows = summarize(load_runs(tmp_path))
    assert rows[0]["seeds"] == 1
    assert rows[0]["top1"] == 50.0 and rows[0]["top1_std"] is None
    assert rows[0]["medium"] is None
    assert format_table(rows).strip().split("\n")[2] == "| ce | 1 | 50.00 | 60.00 |  | 10.00 |"


def test_configs_differing_beyond_seed_are_separate(tmp_path):
    _write_run(tmp_path / "a0", 0, 50.0, 1.0, 1.0, 1.0, "cb", _config(0, "cb", beta=0.99))
    _write_run(tmp_path / "a1", 1, 52.0, 1.0, 1.0, 1.0, "cb", _config(1, "cb", beta=0.99))
    _write_run(tmp_path / "b0", 0, 60.0, 1.0, 1.0, 1.0, "cb", _config(0, "cb", beta=0.9999))
    # stage-2 run of the same config: its own group
    _write_run(tmp_path / "a0" / "stage2", 0, 55.0, 1.0, 1.0, 1.0, "cb",
               dict(_config(0, "cb", beta=0.99), stage2={"method": "crt"}), stage=2)
    rows = summarize(load_runs(tmp_path))
    by_method = {r["method"]: r for r in rows}
    assert set(by_method) == {
        "cb (loss.params.beta=0.99)", "cb (loss.params.beta=0.9999)", "cb [stage 2: crt]"}
    assert by_method["cb (loss.params.beta=0.99)"]["seeds"] == 2
    assert by_method["cb (loss.params.beta=0.99)"]["top1"] == pytest.approx(51.0)
    assert by_method["cb (loss.params.beta=0.9999)"]["seeds"] == 1
    assert by_method["cb [stage 2: crt]"]["top1"] == 55.0


def test_label_from_name_without_recipe(tmp_path):
    _write_run(tmp_path / "x0", 0, 50.0, 1.0, 1.0, 1.0, None, _config(0, name="mine-seed0"))
    _write_run(tmp_path / "x1", 1, 54.0, 1.0, 1.0, 1.0, None, _config(1, name="mine-seed1"))
    rows = summarize(load_runs(tmp_path))
    assert len(rows) == 1 and rows[0]["method"] == "mine" and rows[0]["top1"] == 52.0


def test_missing_and_corrupt_metrics(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(_config(0)))
    with pytest.raises(DataError, match=r"run[/\\]metrics\.json"):
        load_runs([run])
    (run / "metrics.json").write_text("{\"top1\": 5")
    with pytest.raises(DataError, match=r"run[/\\]metrics\.json.*corrupt"):
        load_runs([run])
    with pytest.raises(DataError, match=r"run[/\\]metrics\.json"):
        load_runs([tmp_path])  # corrupt files are errors when scanning too
    (run / "metrics.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="metrics.json"):
        load_runs([run])
    (run / "metrics.json").write_text(json.dumps({"top5": 3.0}))
    with pytest.raises(DataError, match="top1"):
        load_runs([run])
    with pytest.raises(DataError, match="nope"):
        load_runs([tmp_path / "nope"])
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match="empty"):
        load_runs([empty])


def test_read_metrics_missing_corrupt_and_not_an_object(tmp_path):
    from longtail.report import read_metrics

    run = tmp_path / "run"
    run.mkdir()
    path = run / "metrics.json"
    with pytest.raises(DataError, match=r"run[/\\]metrics\.json: missing"):
        read_metrics(run)
    assert read_metrics(run, missing_ok=True) is None  # an unfinished run
    path.write_text("{\"top1\": 5")
    for missing_ok in (False, True):  # corrupt is an error either way, naming the file
        with pytest.raises(DataError, match=r"run[/\\]metrics\.json: corrupt JSON at line 1"):
            read_metrics(run, missing_ok=missing_ok)
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match=r"run[/\\]metrics\.json: expected a JSON object, got list"):
        read_metrics(run)
    path.unlink()
    path.mkdir()  # unreadable: a folder where the file should be
    with pytest.raises(DataError, match=r"run[/\\]metrics\.json: cannot read"):
        read_metrics(run, missing_ok=True)
    path.rmdir()
    path.write_text(json.dumps({"top1": 1.5, "seed": 3}))
    assert read_metrics(run) == {"top1": 1.5, "seed": 3}


def test_corrupt_or_missing_config_yaml(tmp_path):
    _write_run(tmp_path / "a", 0, 50.0, 1.0, 1.0, 1.0, "ce", _config(0))
    (tmp_path / "a" / "config.yaml").unlink()
    assert load_runs(tmp_path)[0]["config"] == {}  # tolerated: grouped by metrics.json alone
    (tmp_path / "a" / "config.yaml").write_text("a: [1, 2\n")
    with pytest.raises(DataError, match=r"a[/\\]config\.yaml is not valid YAML"):
        load_runs(tmp_path)
    (tmp_path / "a" / "config.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(DataError, match=r"a[/\\]config\.yaml must hold a mapping"):
        load_runs(tmp_path)
    # the loader of longtail.config: YAML 1.2 floats, as in a recipe
    (tmp_path / "a" / "config.yaml").write_text("optim: {lr: 5e-4}\n")
    assert load_runs(tmp_path)[0]["config"] == {"optim": {"lr": 5e-4}}


def test_aggregate_is_the_one_mean_std(tmp_path):
    from longtail.report import aggregate

    def run(seed, top1, few, wall):
        return {"path": f"r{seed}", "metrics": {"seed": seed, "top1": top1, "few": few, "wall_time_s": wall},
                "config": {}}

    runs = [run(0, 70.0, 10.0, 100.0), run(1, 72.0, None, 50.0)]
    parents = [{"path": "s1", "metrics": {"wall_time_s": 1000.0}, "config": {}}, None]
    a = aggregate(runs, ("top1", "few"), stage1=parents)
    assert (a["seeds"], a["seed_list"], a["runs"]) == (2, [0, 1], ["r0", "r1"])
    assert a["top1"] == 71.0 and a["top1_std"] == pytest.approx(math.sqrt(2))
    assert (a["few"], a["few_std"]) == (None, None)  # missing in one seed: no mean over a subset
    assert a["wall_time_s"] == (1100.0 + 50.0) / 2
    assert aggregate([run(0, float("nan"), 1.0, 0.0)], ("top1",))["top1"] is None
    assert aggregate([], ("top1",)) == {"seeds": 0, "seed_list": [], "runs": [], "top1": None, "top1_std": None,
                                        "wall_time_s": None}
    # summarize rows are the same aggregate per group
    _write_run(tmp_path / "a", 0, 70.0, 1.0, 1.0, 1.0, "ce", _config(0))
    _write_run(tmp_path / "b", 1, 72.0, 1.0, 1.0, 1.0, "ce", _config(1))
    loaded = load_runs(tmp_path)
    assert summarize(loaded) == [{"method": "ce", **aggregate(loaded)}]


def test_terminal_tables_of_one_run():
    from longtail.report import headline, shot_table

    m = {"top1": 81.234, "many": 90.1, "medium": 75.0, "few": None,
         "shot_thresholds": {"many": 100, "few": 20}, "group_sizes": {"many": 3, "medium": 4, "few": 3}}
    assert headline(m) == "top1 81.23 | many 90.10 medium 75.00 few   -  "
    assert shot_table(m).splitlines() == [
        "| group | classes | top-1 % |", "|---|---|---|", "| all | 10 | 81.23 |", "| many (>100) | 3 | 90.10 |",
        "| medium | 4 | 75.00 |", "| few (<20) | 3 | - |"]


def _classes(accs, counts=(500, 50, 5), names=("a", "b", "c")):
    groups = ["many", "medium", "few"]
    return [{"class": i, "name": n, "train_count": k, "test_count": 100, "accuracy": a, "group": g}
            for i, (n, k, a, g) in enumerate(zip(names, counts, accs, groups))]


def test_per_class_table_averages_each_class_over_the_seeds(tmp_path):
    from longtail.report import format_per_class, per_class_rows

    _write_run(tmp_path / "ce-seed0", 0, 50.0, 90.0, 40.0, 20.0, "ce", _config(0), per_class=_classes([90.0, 40.0, 20.0]))
    _write_run(tmp_path / "ce-seed1", 1, 60.0, 94.0, 50.0, 36.0, "ce", _config(1), per_class=_classes([94.0, 50.0, 36.0]))
    _write_run(tmp_path / "fbl-seed0", 0, 70.0, 80.0, 70.0, 60.0, "fbl", _config(0, "fbl"),
               per_class=_classes([80.0, 70.0, 60.0]))
    runs = load_runs(tmp_path)
    rows = summarize(runs)
    classes = per_class_rows(runs, rows)
    assert [c["name"] for c in classes] == ["a", "b", "c"]
    assert [c["train_count"] for c in classes] == [500, 50, 5]
    assert classes[1]["cells"][0] == (pytest.approx(45.0), pytest.approx(math.sqrt(50)))  # 40, 50 (ddof=1)
    assert classes[2]["cells"][1] == (pytest.approx(60.0), None)                          # one seed

    lines = format_per_class(rows, classes).strip().split("\n")
    assert lines[0] == "| class | name | train images | group | ce | fbl |"
    assert lines[2] == "| 0 | a | 500 | many | 92.0 ± 2.8 | 80.0 |"
    assert lines[4] == "| 2 | c | 5 | few | 28.0 ± 11.3 | 60.0 |"
    assert lines[5] == "| mean | | | | 55.0 | 70.0 |"  # the classes' mean: top-1 on a balanced test split
    table = list(csv.reader(io.StringIO(format_per_class(rows, classes, fmt="csv"))))
    assert table[0] == ["class", "name", "train_images", "group", "ce", "ce std", "fbl", "fbl std"]
    assert table[1] == ["0", "a", "500", "many", "92.0", "2.8", "80.0", ""]
    assert table[-1] == ["mean", "", "", "", "55.0", "", "70.0", ""]
    with pytest.raises(ValueError):
        format_per_class(rows, classes, fmt="latex")


def test_per_class_table_blanks_what_the_runs_disagree_on_and_names_bad_runs(tmp_path):
    from longtail.report import per_class_rows

    _write_run(tmp_path / "r100", 0, 50.0, 90.0, 40.0, 20.0, "ce", _config(0), per_class=_classes([90.0, 40.0, 20.0]))
    _write_run(tmp_path / "r10", 0, 60.0, 90.0, 40.0, 20.0, "ce", _config(0, beta=0.5),
               per_class=_classes([91.0, 41.0, 21.0], counts=(500, 158, 50)))
    runs = load_runs(tmp_path)
    classes = per_class_rows(runs, summarize(runs))
    assert [c["train_count"] for c in classes] == [500, None, None]
    assert [c["name"] for c in classes] == ["a", "b", "c"]

    _write_run(tmp_path / "two", 0, 60.0, 90.0, 40.0, 20.0, "fbl", _config(0, "fbl"),
               per_class=_classes([91.0, 41.0], counts=(500, 50)))
    runs = load_runs(tmp_path)
    with pytest.raises(DataError, match=r"two/metrics.json: 2 classes, but .*r10/metrics.json has 3"):
        per_class_rows(runs, summarize(runs))

    empty = tmp_path / "empty"
    _write_run(empty / "run", 0, 60.0, 90.0, 40.0, 20.0, "ce", _config(0))  # per_class: []
    runs = load_runs(empty)
    with pytest.raises(DataError, match=r"run/metrics.json: no per-class accuracies"):
        per_class_rows(runs, summarize(runs))


def test_report_cli_per_class(tmp_path, capsys):
    from longtail.cli import main

    _write_run(tmp_path / "ce-seed0", 0, 50.0, 90.0, 40.0, 20.0, "ce", _config(0), per_class=_classes([90.0, 40.0, 20.0]))
    assert main(["report", str(tmp_path), "--per-class"]) == 0
    out = capsys.readouterr().out.strip().split("\n")
    assert out[0] == "| class | name | train images | group | ce |"
    assert out[3] == "| 1 | b | 50 | medium | 40.0 |"
    assert main(["report", str(tmp_path)]) == 0
    assert "| ce | 1 | 50.00 |" in capsys.readouterr().out
