"""Real data end to end through data.name=folder: scikit-learn's handwritten digits (shipped inside
the package, no download), made long-tailed and written out as PNG files, then the README's
commands: train, retrain, eval, predict, export (ONNX run in onnxruntime)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longtail.cli import main

NAMES = ["0-zero", "1-one", "2-two", "3-three", "4-four", "5-five", "6-six", "7-seven", "8-eight", "9-nine"]
# (class names are the folder names, sorted, so the digit leads)


def write_digits(root: Path, n_max: int = 150, rho: float = 15.0) -> list:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.RandomState(0)
    counts = [int(n_max * (1 / rho) ** (c / 9)) for c in range(10)]
    for c, n in enumerate(counts):
        idx = rng.permutation(np.flatnonzero(digits.target == c))[:n]
        (root / NAMES[c]).mkdir(parents=True)
        for i in idx:  # 8x8 grey levels 0..16 -> 8-bit greyscale PNG (mode L: converted to RGB, counted)
            Image.fromarray((digits.images[i] * 255 / 16).round().astype(np.uint8), "L").save(
                root / NAMES[c] / f"{i:04d}.png")
    return counts


def _run_folder(out: str) -> Path:
    return Path([l for l in out.splitlines() if l.startswith("run folder: ")][-1].split(": ", 1)[1])


@pytest.mark.slow
def test_digits_folder_end_to_end(tmp_path, monkeypatch, capsys):
    pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LONGTAIL_CACHE", str(tmp_path / "cache"))
    counts = write_digits(tmp_path / "digits")
    assert counts[0] == 150 and counts[-1] == 10

    # stage 1, as in the README (shortened)
    # (the digits' own 8x8 size instead of the default upscaling to 32, and 4 epochs, keep the CPU test short)
    assert main(["train", "folder/gcl", "data.root=digits", "optim.epochs=4", "data.params.image_size=8",
                 "data.batch_size=32", "data.num_workers=0", "quiet=true"]) == 0
    cap = capsys.readouterr()
    run = _run_folder(cap.out)
    assert run == Path("runs/folder-gcl-folder-seed0")
    assert "| many (>" in cap.out and "| few (<" in cap.out and "| medium" in cap.out
    assert "held out" in cap.err and "converted to RGB" in cap.err
    m1 = json.loads((run / "metrics.json").read_text())
    assert m1["data"]["class_names"] == NAMES and m1["data"]["holdout"]["test_counts"] == [10] * 7 + [9, 6, 5]
    assert m1["data"]["in_memory"] and m1["data"]["converted_modes"] == {"L": sum(counts)}
    assert m1["shot_thresholds"] == {"many": m1["data"]["auto_shot_thresholds"]["many"],
                                     "few": m1["data"]["auto_shot_thresholds"]["few"]}
    assert all(g for g in m1["group_sizes"].values())  # three non-empty groups on this small set
    assert m1["per_class"][9]["name"] == "9-nine"
    assert 0.0 <= m1["top1"] <= 100.0 and m1["data"]["preprocess"]["image_size"] == 8

    # stage 2 (CBEN + fine-tuned classifier), eval with saved logits
    assert main(["retrain", str(run), "stage2.epochs=2", "quiet=true"]) == 0
    run2 = _run_folder(capsys.readouterr().out)
    assert run2.name == "folder-gcl-folder-seed0-stage2-crt"
    assert main(["eval", str(run2), "--save-logits"]) == 0
    assert "| few (<" in capsys.readouterr().out and (run2 / "outputs-test.npz").is_file()

    # predict new images (the held-out images of two classes) with class names
    assert main(["predict", str(run), "digits/9-nine", "--topk", "3", "--out", "pred.json"]) == 0
    out = capsys.readouterr().out
    assert "stage-2" in out and "digits/9-nine/" in out
    rows = json.loads(Path("pred.json").read_text())
    assert len(rows) == counts[9] and all(r["top"][0]["class"] in NAMES for r in rows)

    # export, and run the ONNX file
    ort = pytest.importorskip("onnxruntime")
    assert main(["export", str(run), "--format", "onnx"]) == 0
    onnx_path = run2 / "model.onnx"
    meta = json.loads(Path(str(onnx_path) + ".json").read_text())
    from longtail.predict import collect_images, load_run, preprocess_image
    import torch

    files = collect_images(["digits/3-three"])[:8]
    x = torch.stack([preprocess_image(f, meta["input"]["preprocess"]) for f in files])
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        ref = load_run(run).module(x).numpy()
    assert np.abs(got - ref).max() < 1e-4
    assert (got.argmax(1) == ref.argmax(1)).all() and meta["class_names"] == NAMES
