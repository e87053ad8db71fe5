"""The analysis figures: per-class error, feature-norm curves, t-SNE (longtail.analysis)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from longtail.analysis import (  # noqa: E402
    feature_norm_curves,
    frequency_groups,
    per_class_errors,
    plot_feature_norms,
    plot_per_class_error,
    plot_tsne,
    rank_groups,
    run_features,
    shot_names,
)
from longtail.analysis.__main__ import main as analysis_main  # noqa: E402
from longtail.errors import DataError  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
CIFAR10_LT_100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


def fake_run(folder: Path, counts, accuracies, norms=None, recipe="fake") -> Path:
    """A run folder with a hand-written metrics.json and (optionally) a log.jsonl of feature norms."""
    folder.mkdir(parents=True)
    per = [{"class": c, "train_count": n, "test_count": 10, "accuracy": a, "group": "few"}
           for c, (n, a) in enumerate(zip(counts, accuracies))]
    metrics = {"top1": float(np.mean([a for a in accuracies if a is not None])), "per_class": per, "recipe": recipe,
               "stage": 1}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    if norms is not None:
        rows = []
        for e, n in enumerate(norms):
            rows.append({"epoch": e, "stage": 1, "train_loss": 1.0})
            if n is not None:
                rows[-1]["test.top1"] = 10.0
                rows[-1]["test.feature_norm"] = n
        (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


# ---------------------------------------------------------------------------------------------
# Head / tail from counts
# ---------------------------------------------------------------------------------------------
def test_shot_names_follow_the_thesis_on_cifar10_lt():
    assert shot_names(CIFAR10_LT_100) == ["Head1", "Head2", "Head3", "Mid1", "Mid2", "Mid3", "Mid4",
                                          "Tail1", "Tail2", "Tail3"]


def test_groups_come_from_counts_not_class_order():
    counts = [50, 5000, 83, 2997, 139, 1796, 232, 1077, 387, 645]  # shuffled CIFAR-10-LT counts
    g = rank_groups(counts)
    assert [c for c in range(10) if g[c] == "head"] == [1, 3, 5]
    assert [c for c in range(10) if g[c] == "tail"] == [0, 2, 4]
    assert shot_names(counts)[1] == "Head1" and shot_names(counts)[0] == "Tail3"
    groups = frequency_groups(list(range(100, 0, -1)), 10)
    assert len(groups) == 10 and groups[0] == list(range(10)) and groups[-1] == list(range(90, 100))


# ---------------------------------------------------------------------------------------------
# (a) per-class error
# ---------------------------------------------------------------------------------------------
def test_per_class_errors_and_png(tmp_path):
    counts = [10, 100, 5, 50]
    a = fake_run(tmp_path / "a", counts, [60.0, 90.0, 20.0, None])
    b = fake_run(tmp_path / "b", counts, [70.0, 80.0, 40.0, 50.0])
    d = per_class_errors([a, b], labels=["CE", "KPS"])
    assert [m[0] for m in d["classes"]] == [1, 3, 0, 2]  # head to tail by count
    assert d["counts"] == [100, 50, 10, 5]
    np.testing.assert_allclose(d["errors"]["CE"], [10.0, np.nan, 40.0, 80.0])
    np.testing.assert_allclose(d["errors"]["KPS"], [20.0, 50.0, 30.0, 60.0])
    out = plot_per_class_error([a, b], tmp_path / "figs" / "per_class.png", labels=["CE", "KPS"],
                               note="hand-made metrics")
    assert _is_png(out)


def test_per_class_groups_for_many_classes(tmp_path):
    counts = list(range(200, 100, -1))  # 100 classes
    acc = [float(i % 100) for i in range(100)]
    run = fake_run(tmp_path / "c100", counts, acc)
    d = per_class_errors([run])
    assert len(d["ticks"]) == 10 and d["classes"][0] == list(range(10))
    assert d["errors"][d["labels"][0]][0] == pytest.approx(100 - np.mean(acc[:10]))
    assert _is_png(plot_per_class_error([run], tmp_path / "g.png"))


def test_per_class_rejects_runs_of_different_datasets(tmp_path):
    a = fake_run(tmp_path / "a", [10, 5], [1.0, 2.0])
    b = fake_run(tmp_path / "b", [10, 6], [1.0, 2.0])
    with pytest.raises(DataError, match="training counts differ"):
        per_class_errors([a, b])


# ---------------------------------------------------------------------------------------------
# (b) feature norms
# ---------------------------------------------------------------------------------------------
def test_feature_norm_curves_head_and_tail_from_a_crafted_log(tmp_path):
    counts = [10, 100, 5, 50]
    norms = [[1.0, 2.0, 3.0, 4.0], None, [1.5, 2.5, 3.5, 4.5], [2.0, 3.0, 5.0, 6.0]]  # epoch 1 not evaluated
    run = fake_run(tmp_path / "r", counts, [1, 2, 3, 4], norms)
    c = feature_norm_curves(run, head=2, tail=2)
    assert c["epochs"] == [0, 2, 3]
    assert c["head"] == [1, 3] and c["tail"] == [2, 0]  # most frequent first / least frequent first
    np.testing.assert_allclose(c["head_mean"], [(2 + 4) / 2, (2.5 + 4.5) / 2, (3 + 6) / 2])
    np.testing.assert_allclose(c["tail_mean"], [(3 + 1) / 2, (3.5 + 1.5) / 2, (5 + 2) / 2])
    np.testing.assert_allclose(c["final"], [2.0, 3.0, 5.0, 6.0])
    assert c["norms"].shape == (3, 4)
    # counts given explicitly win over metrics.json
    c2 = feature_norm_curves(run, head=1, tail=1, class_counts=[1, 2, 3, 4])
    assert c2["head"] == [3] and c2["tail"] == [0]


def test_feature_norms_missing_is_an_error(tmp_path):
    run = fake_run(tmp_path / "r", [2, 1], [1, 2], norms=[None, None])
    with pytest.raises(DataError, match="feature_norms=true"):
        feature_norm_curves(run)


def test_feature_norm_png(tmp_path):
    counts = [100, 50, 10, 5]
    ce = fake_run(tmp_path / "ce", counts, [1, 2, 3, 4], [[3, 3, 2, 1], [4, 4, 2.5, 1.2], [5, 4.5, 3, 1.5]])
    fbl = fake_run(tmp_path / "fbl", counts, [1, 2, 3, 4], [[3, 3, 2, 1], [4, 4, 3.5, 3], [5, 5, 5, 5]])
    out = plot_feature_norms([ce, fbl], tmp_path / "fn.png", labels=["CE", "FBL"], note="hand-made log")
    assert _is_png(out)


# ---------------------------------------------------------------------------------------------
# (c) t-SNE
# ---------------------------------------------------------------------------------------------
def test_tsne_png_from_given_features(tmp_path):
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    counts = [60, 30, 10, 3]
    targets = np.repeat(np.arange(4), 15)
    feats = rng.normal(size=(60, 8)) + targets[:, None] * 3.0
    f = {"features": feats, "targets": targets, "class_counts": counts, "class_names": None}
    out = plot_tsne(["a", "b"], tmp_path / "t.png", labels=["CE", "GCL"], features=[f, f])
    assert _is_png(out)


@pytest.mark.slow
def test_tsne_of_a_real_tiny_run(tmp_path):
    pytest.importorskip("sklearn")
    from longtail.config import load_config
    from longtail.engine.trainer import train

    cfg = load_config(None, ["data.params.n_max=60", "data.imbalance_ratio=10", "data.params.test_per_class=10",
                             "data.params.image_size=16", "optim.epochs=1", "tensorboard=false", "quiet=true",
                             f"output_dir={tmp_path}", "name=tiny", "eval.feature_norms=true"])
    run_dir, _ = train(cfg)
    f = run_features(run_dir, max_points=50, device="cpu")
    assert f["features"].shape[0] == 50 and f["features"].ndim == 2
    assert len(f["class_counts"]) == 10 and f["targets"].min() >= 0
    out = plot_tsne([run_dir], tmp_path / "tsne.png", max_points=50, device="cpu", note="synthetic, 1 epoch")
    assert _is_png(out)
    # the command line draws all three figures of this run
    rc = analysis_main([str(run_dir), "--out", str(tmp_path / "cli"), "--name", "tiny", "--tsne-points", "40",
                        "--device", "cpu"])
    assert rc == 0
    for name in ("tiny_per_class_error.png", "tiny_feature_norms.png", "tiny_tsne.png"):
        assert _is_png(tmp_path / "cli" / name)


def test_cli_skips_what_the_runs_lack(tmp_path, capsys):
    run = fake_run(tmp_path / "r", [3, 2, 1], [1.0, 2.0, 3.0])
    assert analysis_main([str(run), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "feature_norm: skipped" in out and "tsne: skipped" in out
    assert _is_png(tmp_path / "o" / "runs_per_class_error.png")
    assert analysis_main([str(run), "--out", str(tmp_path / "o"), "--figures", "feature_norm"]) == 2
    assert analysis_main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
