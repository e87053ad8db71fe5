"""Tests of longtail.engine.metrics against values computed by hand."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longtail.engine.metrics import Accumulator, compute_metrics, metrics_from_logits, shot_group

# Training counts crossing both thresholds: 500 > 100 (many), exactly 100 (medium),
# exactly 20 (medium), 5 < 20 (few).
COUNTS = [500, 100, 20, 5]

# Confusion: true class -> predictions of its test samples.
#   class 0: [0, 0, 0, 1]   3/4 correct
#   class 1: [1, 2]         1/2
#   class 2: [2, 0, 3, 0]   1/4
#   class 3: [3, 0]         1/2
TARGET = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3]
PRED = [0, 0, 0, 1, 1, 2, 2, 0, 3, 0, 3, 0]


def test_shot_group_thresholds_are_strict():
    assert shot_group(101) == "many"
    assert shot_group(100) == "medium"
    assert shot_group(20) == "medium"
    assert shot_group(19) == "few"
    assert shot_group(50, many=40, few=10) == "many"


def test_crafted_confusion_matrix():
    n = len(TARGET)
    top5_hit = [True] * 9 + [False] * 3
    nll = np.arange(n, dtype=np.float64) / 10.0
    m = compute_metrics(PRED, TARGET, None, nll, top5_hit, COUNTS, 4)

    assert m["num_samples"] == 12
    assert m["top1"] == pytest.approx(100 * 6 / 12)
    assert m["top5"] == pytest.approx(100 * 9 / 12)
    # Per-class accuracies 75, 50, 25, 50; groups by training count.
    assert [c["accuracy"] for c in m["per_class"]] == pytest.approx([75.0, 50.0, 25.0, 50.0])
    assert [c["test_count"] for c in m["per_class"]] == [4, 2, 4, 2]
    assert [c["train_count"] for c in m["per_class"]] == COUNTS
    assert [c["class"] for c in m["per_class"]] == [0, 1, 2, 3]
    assert [c["group"] for c in m["per_class"]] == ["many", "medium", "medium", "few"]
    assert m["group_sizes"] == {"many": 1, "medium": 2, "few": 1}
    assert m["shot_thresholds"] == {"many": 100, "few": 20}
    assert m["many"] == pytest.approx(75.0)
    # Mean of per-class accuracies (50 + 25) / 2, not the sample accuracy 2/6 = 33.3.
    assert m["medium"] == pytest.approx(37.5)
    assert m["few"] == pytest.approx(50.0)

    # Macro-F1 by hand. Predicted counts: class 0: 6, 1: 2, 2: 2, 3: 2.
    precision = [3 / 6, 1 / 2, 1 / 2, 1 / 2]
    recall = [3 / 4, 1 / 2, 1 / 4, 1 / 2]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall)]
    assert f1 == pytest.approx([0.6, 0.5, 1 / 3, 0.5])
    assert m["macro_f1"] == pytest.approx(100 * sum(f1) / 4)
    assert m["g_mean"] == pytest.approx(100 * (0.75 * 0.5 * 0.25 * 0.5) ** 0.25)
    assert m["nll"] == pytest.approx(nll.mean())
    assert m["ece"] is None  # no confidences given
    json.dumps(m, allow_nan=False)  # JSON-serializable


def test_zero_recall_makes_g_mean_zero_and_f1_skips_absent_classes():
    # 5 classes; class 4 appears neither in targets nor in predictions; class 2 is never right.
    target = [0, 0, 1, 2]
    pred = [0, 1, 1, 0]
    m = compute_metrics(pred, target, None, None, None, [200, 50, 10, 10, 10])
    assert m["g_mean"] == 0.0
    # Class 0: P=1/2 R=1/2 F1=1/2; class 1: P=1/2 R=1 F1=2/3; class 2: P=0 R=0 F1=0 (undefined -> 0).
    # Class 3 and 4 are absent from targets and predictions -> skipped.
    assert m["macro_f1"] == pytest.approx(100 * (0.5 + 2 / 3 + 0.0) / 3)
    assert m["few"] == pytest.approx(0.0)  # classes 2, 3, 4 are few; only class 2 has test samples
    assert m["per_class"][3]["accuracy"] is None
    assert m["per_class"][3]["test_count"] == 0
    assert m["top5"] is None and m["nll"] is None


def test_empty_group_is_none():
    m = compute_metrics([0, 1], [0, 1], None, None, None, [300, 200])
    assert m["many"] == 100.0
    assert m["medium"] is None and m["few"] is None
    assert m["group_sizes"] == {"many": 2, "medium": 0, "few": 0}


def test_ece_by_hand_with_bin_edges():
    # 15 bins of width 1/15, half-open (lo, hi]:
    #   0.20 = 3/15 is an edge -> bin (2/15, 3/15]   (alone; correct)
    #   0.25            -> bin (3/15, 4/15]          (alone; wrong)
    #   0.90            -> bin (13/15, 14/15]        (alone; correct)
    #   0.95 and 1.00   -> bin (14/15, 1]            (one correct, one wrong)
    conf = [0.2, 0.25, 0.9, 0.95, 1.0]
    target = [0, 0, 0, 0, 0]
    pred = [0, 1, 0, 1, 0]
    expected = (abs(1 - 0.2) * 1 + abs(0 - 0.25) * 1 + abs(1 - 0.9) * 1 + abs(0.5 - 0.975) * 2) / 5
    assert expected == pytest.approx(0.42)
    m = compute_metrics(pred, target, conf, None, None, [10, 10])
    assert m["ece"] == pytest.approx(100 * expected)
    # With [lo, hi) bins, 0.2 would share the 0.25 bin and the ECE would be 32%, not 42%.
    assert m["ece"] != pytest.approx(32.0)


def _reference_ece(conf, correct, n_bins=15):
    """Straightforward (lo, hi] loop, independent of the implementation."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            total += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return 100 * total


def _batched(logits, target, sizes, **kw):
    acc = Accumulator(**kw)
    start = 0
    for s in sizes:
        acc.update(logits[start:start + s], target[start:start + s])
        start += s
    assert start == len(target)
    return acc


def test_accumulator_matches_manual_computation():
    g = torch.Generator().manual_seed(0)
    n, c = 64, 7
    logits = torch.randn(n, c, generator=g) * 3
    target = torch.randint(0, c, (n,), generator=g)
    counts = [300, 150, 100, 60, 20, 10, 3]
    m = _batched(logits, target, [20, 1, 43]).compute(counts)

    pred = logits.argmax(1)
    correct = (pred == target).numpy()
    assert m["top1"] == pytest.approx(100 * correct.mean())
    rank = (logits > logits.gather(1, target[:, None])).sum(1)  # classes scoring above the target
    assert m["top5"] == pytest.approx(100 * (rank < 5).float().mean().item())
    assert m["nll"] == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-5)
    assert m["nll"] == pytest.approx(-F.log_softmax(logits, 1)[torch.arange(n), target].mean().item(), rel=1e-5)
    conf = F.softmax(logits, 1).max(1).values.double().numpy()
    assert m["ece"] == pytest.approx(_reference_ece(conf, correct), abs=1e-6)
    per_class = [100 * correct[target.numpy() == k].mean() for k in range(c)]
    assert [e["accuracy"] for e in m["per_class"]] == pytest.approx(per_class)
    assert m["many"] == pytest.approx(np.mean(per_class[:2]))
    assert m["medium"] == pytest.approx(np.mean(per_class[2:5]))
    assert m["few"] == pytest.approx(np.mean(per_class[5:]))


def test_accumulator_batches_equal_one_shot():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(50, 12, generator=g)
    target = torch.randint(0, 12, (50,), generator=g)
    counts = list(range(200, 0, -16))[:12]
    one = metrics_from_logits(logits, target, counts)
    many = _batched(logits, target, [7, 0, 13, 30]).compute(counts)
    assert many.keys() == one.keys()
    for k in one:
        if isinstance(one[k], float):
            assert many[k] == pytest.approx(one[k], rel=1e-6), k
        else:
            assert many[k] == one[k], k


def test_top5_crafted_and_fewer_than_five_classes():
    # C = 7: target ranked 5th -> top-5 hit; ranked 6th -> miss; ranked 1st -> hit.
    logits = torch.tensor([
        [6.0, 5, 4, 3, 2, 1, 0],
        [6.0, 5, 4, 3, 2, 1, 0],
        [6.0, 5, 4, 3, 2, 1, 0],
    ])
    target = torch.tensor([4, 5, 0])
    m = metrics_from_logits(logits, target, [1] * 7)
    assert m["top5"] == pytest.approx(200 / 3)
    assert m["top1"] == pytest.approx(100 / 3)

    # C = 3 < 5: top-5 is top-3, i.e. always a hit.
    logits = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    m = metrics_from_logits(logits, torch.tensor([0, 2]), [5, 5, 5])
    assert m["top5"] == 100.0
    assert m["top1"] == 0.0


def test_ties_keep_top1_within_top5():
    logits = torch.zeros(3, 8)
    m = metrics_from_logits(logits, torch.tensor([0, 0, 0]), [1] * 8)
    assert m["top1"] == 100.0  # argmax of a tie is the first class
    assert m["top5"] == 100.0
    assert m["nll"] == pytest.approx(math.log(8))
    assert m["ece"] == pytest.approx(100 * (1 - 1 / 8))


def test_bf16_logits():
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(40, 6, generator=g) * 2).bfloat16()
    target = torch.randint(0, 6, (40,), generator=g)
    counts = [120, 100, 50, 20, 19, 2]
    m = _batched(logits, target, [15, 25]).compute(counts)
    ref = metrics_from_logits(logits.float(), target, counts)
    for k in ("top1", "top5", "many", "medium", "few", "macro_f1", "g_mean", "ece", "nll"):
        assert m[k] == pytest.approx(ref[k], rel=1e-6), k
    assert m["nll"] == pytest.approx(F.cross_entropy(logits.float(), target).item(), rel=1e-5)


def test_keep_logits_and_errors():
    acc = Accumulator(keep_logits=True)
    a, b = torch.randn(3, 4), torch.randn(2, 4).half()
    acc.update(a, torch.tensor([0, 1, 2]))
    acc.update(b, torch.tensor([3, 3]))
    assert len(acc) == 5
    out = acc.logits()
    assert out.dtype == torch.float32 and out.shape == (5, 4)
    assert torch.equal(out[:3], a) and torch.equal(out[3:], b.float())
    assert acc.targets().tolist() == [0, 1, 2, 3, 3]
    with pytest.raises(ValueError, match="classes"):
        acc.update(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="target"):
        acc.update(torch.randn(2, 4), torch.tensor([0, 1, 2]))
    acc.update(torch.randn(1, 4), torch.tensor([7]))  # out of range: reported by compute()
    with pytest.raises(ValueError, match="target"):
        acc.compute([1, 1, 1, 1])
    with pytest.raises(RuntimeError):
        Accumulator().logits()
    with pytest.raises(ValueError):
        Accumulator().compute([1, 1])
    with pytest.raises(ValueError, match="class_counts"):
        compute_metrics([0], [0], None, None, None, [1, 2], num_classes=3)


def test_confusion_matrix_counts_each_true_predicted_pair():
    m = compute_metrics(PRED, TARGET, None, None, None, COUNTS, 4)
    # Written out from the crafted predictions above (rows: true class, columns: prediction).
    assert m["confusion"] == [
        [3, 1, 0, 0],
        [0, 1, 1, 0],
        [2, 0, 1, 1],
        [1, 0, 0, 1],
    ]
    conf = np.asarray(m["confusion"])
    assert conf.sum(axis=1).tolist() == [c["test_count"] for c in m["per_class"]]
    assert (100 * np.diag(conf) / conf.sum(axis=1)).tolist() == pytest.approx([c["accuracy"] for c in m["per_class"]])
    assert json.loads(json.dumps(m))["confusion"] == m["confusion"]  # plain ints, not numpy


def test_confusion_matrix_matches_a_double_loop_and_stops_above_the_class_limit():
    from longtail.engine.metrics import CONFUSION_MAX_CLASSES

    rng = np.random.default_rng(3)
    c = 7
    y, p = rng.integers(0, c, 300), rng.integers(0, c, 300)
    m = compute_metrics(p, y, None, None, None, [10] * c, c)
    expected = [[sum(1 for t, q in zip(y, p) if t == i and q == j) for j in range(c)] for i in range(c)]
    assert m["confusion"] == expected
    big = CONFUSION_MAX_CLASSES + 1
    m = compute_metrics([0, 1], [1, 1], None, None, None, [5] * big, big)
    assert m["confusion"] is None
    assert m["per_class"][1]["accuracy"] == 50.0


def test_top_confusions_lists_the_most_frequent_errors_with_names():
    from longtail.engine.metrics import top_confusions

    m = compute_metrics(PRED, TARGET, None, None, None, COUNTS, 4)
    for entry, name in zip(m["per_class"], ["cat", "dog", "ship", "truck"]):
        entry["name"] = name
    top = top_confusions(m, k=3)
    # Errors: 2 -> 0 twice; then one each for 0 -> 1, 1 -> 2, 2 -> 3, 3 -> 0 (ties by true class).
    assert [(e["true"], e["pred"], e["count"]) for e in top] == [(2, 0, 2), (0, 1, 1), (1, 2, 1)]
    assert top[0]["true_name"] == "ship" and top[0]["pred_name"] == "cat"
    assert top[0]["percent"] == pytest.approx(50.0)  # 2 of class 2's 4 test samples
    assert top[1]["percent"] == pytest.approx(25.0)
    assert len(top_confusions(m, k=100)) == 5  # every non-zero off-diagonal cell, no more
    del m["confusion"]
    with pytest.raises(ValueError, match="no confusion matrix"):
        top_confusions(m)
