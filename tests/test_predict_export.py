"""longtail predict / export / eval --save-logits / posthoc on tiny folder runs."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from longtail.cli import main
from longtail.config import load_config
from longtail.engine.stage2 import retrain
from longtail.engine.trainer import train
from longtail.export import export_run
from longtail.predict import collect_images, load_run, predict, preprocess_image

TINY = ["optim.epochs=1", "optim.lr=0.01", "stage2.epochs=1", "data.batch_size=16", "data.eval_batch_size=64", "data.num_workers=0",
        "tensorboard=false", "quiet=true", "eval.every=1"]


def write_split(root: Path, counts: dict, seed: int, size: int = 12) -> None:
    rng = np.random.RandomState(seed)
    for k, (c, n) in enumerate(counts.items()):
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):  # class-dependent colour so that a model can learn something
            a = rng.rand(size, size, 3) * 80
            a[..., k % 3] += 150
            Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(d / f"{c}_{i:02d}.png")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pe")
    data = tmp / "imgs"
    write_split(data / "train", {"apple": 24, "kiwi": 8, "plum": 3}, seed=0)
    write_split(data / "test", {"apple": 4, "kiwi": 4, "plum": 4}, seed=1)
    common = TINY + [f"data.root={data}", f"output_dir={tmp / 'runs'}", f"data.params.cache_dir={tmp / 'cache'}"]
    gcl, _ = train(load_config("folder/gcl", common))
    gcl2, _ = retrain(gcl, ["quiet=true"])
    ce, _ = train(load_config("folder/ce", common))
    lws, _ = retrain(ce, ["stage2.method=lws", "quiet=true"])
    tau, _ = retrain(ce, ["stage2.method=tau_norm", "quiet=true"])
    return {"data": data, "tmp": tmp, "gcl": gcl, "gcl2": gcl2, "ce": ce, "lws": lws, "tau": tau}


def test_predict_cli_prints_names_and_writes_csv_json(runs, capsys):
    out_csv = runs["tmp"] / "pred.csv"
    assert main(["predict", str(runs["gcl"]), str(runs["data"] / "test" / "plum"),
                 str(runs["data"] / "test" / "apple" / "apple_00.png"), "--topk", "2", "--out", str(out_csv)]) == 0
    text = capsys.readouterr().out
    assert "using the stage-2 model of" in text and str(runs["gcl2"]) in text
    lines = [l for l in text.splitlines() if l.endswith(tuple("0123456789")) and ".png:" in l]
    assert len(lines) == 5 and all(any(n in l for n in ("apple", "kiwi", "plum")) for l in lines)
    rows = list(csv.DictReader(open(out_csv)))
    assert len(rows) == 10 and {r["rank"] for r in rows} == {"1", "2"}
    assert all(r["class"] in ("apple", "kiwi", "plum") for r in rows)
    out_json = runs["tmp"] / "pred.json"
    assert main(["predict", str(runs["gcl"]), str(runs["data"] / "test" / "kiwi"), "--out", str(out_json),
                 "--stage1"]) == 0
    data = json.loads(out_json.read_text())
    assert len(data) == 4 and len(data[0]["top"]) == 3  # topk 5 capped at 3 classes
    assert abs(sum(t["probability"] for t in data[0]["top"]) - 1) < 1e-4
    assert "using the stage-2" not in capsys.readouterr().out
    assert main(["predict", str(runs["gcl"]), str(runs["tmp"] / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err


def test_predict_equals_the_evaluation_logits(runs):
    """Predicting from the image files gives the logits the evaluation computed on the split."""
    from longtail.posthoc import save_outputs

    for key in ("gcl2", "lws", "tau"):
        npz = np.load(save_outputs(runs[key], "test"))
        loaded = load_run(runs[key])
        files = collect_images([str(runs["data"] / "test")])
        x = torch.stack([preprocess_image(f, loaded.preprocess) for f in files])
        with torch.no_grad():
            logits = loaded.module(x).numpy()
        assert np.abs(logits - npz["logits"]).max() < 1e-4 * max(1.0, np.abs(logits).max()), key
        assert npz["targets"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
        assert npz["features"].shape[0] == 12
        rows = predict(loaded, files, topk=1)
        assert [r["top"][0]["index"] for r in rows] == logits.argmax(1).tolist()


@pytest.mark.parametrize("key", ["gcl2", "lws", "tau", "ce"])
def test_export_onnx_matches_pytorch(runs, key):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = export_run(runs[key], "onnx", runs["tmp"] / f"{key}.onnx", prefer_stage2=False)
    meta = json.loads(Path(str(path) + ".json").read_text())
    assert meta["class_names"] == ["apple", "kiwi", "plum"] and meta["input"]["shape"][1:] == [3, 32, 32]
    loaded = load_run(runs[key], prefer_stage2=False)
    files = collect_images([str(runs["data"] / "test")])[::2]
    x = torch.stack([preprocess_image(f, loaded.preprocess) for f in files])  # real inputs, batch of 6
    with torch.no_grad():
        ref = loaded.module(x).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": x.numpy()})[0]
    assert got.shape == (6, 3) and np.abs(got - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
    if key == "gcl2":  # cosine head: the scale s is inside the exported logits
        assert np.abs(ref).max() > 1.0 + 1e-3


def test_export_cli_onnx_and_torchscript(runs, capsys):
    out = runs["tmp"] / "m.pt"
    assert main(["export", str(runs["gcl"]), "--format", "torchscript", "--out", str(out)]) == 0
    assert "stage-2" in capsys.readouterr().out
    m = torch.jit.load(str(out))
    loaded = load_run(runs["gcl"])
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m(x), loaded.module(x), atol=1e-5)
    pytest.importorskip("onnx")
    assert main(["export", str(runs["ce"]), "--stage1"]) == 0
    assert (runs["ce"] / "model.onnx").is_file() and (runs["ce"] / "model.onnx.json").is_file()


def test_eval_save_logits_and_posthoc(runs, capsys):
    assert main(["eval", str(runs["ce"]), "--save-logits"]) == 0
    npz = np.load(runs["ce"] / "outputs-test.npz")
    assert set(npz.files) >= {"logits", "features", "targets", "raw_logits", "class_names"}
    capsys.readouterr()
    assert main(["posthoc", str(runs["ce"]), "--method", "logit_adjust", "--stage1"]) == 0
    out = capsys.readouterr().out
    assert "selected on: test" in out and "| many" in out
    m = json.loads((runs["ce"] / "posthoc-logit_adjust.json").read_text())
    assert m["tau_selected_on"] == "test" and len(m["tau_sweep"]) > 3 and "before" in m
    assert {"top1", "many", "medium", "few", "per_class"} <= set(m) and m["per_class"][0]["name"] == "apple"
    assert main(["posthoc", str(runs["ce"]), "--method", "tau_norm", "--tau", "0.5", "--stage1"]) == 0
    m = json.loads((runs["ce"] / "posthoc-tau_norm.json").read_text())
    assert m["tau"] == 0.5 and m["tau_selected_on"] == "fixed"


def test_posthoc_selects_tau_on_val(tmp_path):
    from longtail.posthoc import posthoc

    data = tmp_path / "imgs"
    write_split(data, {"a": 20, "b": 10, "c": 6}, seed=3)
    cfg = load_config("folder/ce", TINY + [f"data.root={data}", f"output_dir={tmp_path / 'runs'}",
                                           f"data.params.cache_dir={tmp_path / 'cache'}",
                                           "data.params.holdout_per_class=2", "data.params.val_per_class=1"])
    run, metrics = train(cfg)
    assert metrics["data"]["holdout"]["val_counts"] == [1, 1, 1]
    m = posthoc(run, "logit_adjust")
    assert m["tau_selected_on"] == "val" and m["split"] == "test"
