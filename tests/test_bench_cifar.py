"""CPU smoke test of ``benchmarks/bench_cifar.py`` (every part, tiny synthetic settings)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("bench_cifar", REPO / "benchmarks" / "bench_cifar.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_schedule_overrides_scale_the_recipe():
    bench = _load()
    from longtail.config import load_config

    cfg = load_config("cifar10_lt/ldam_drw")
    assert bench.schedule_overrides(cfg, 200) == []
    over = bench.schedule_overrides(cfg, 20)
    assert over == ["optim.epochs=20", "optim.warmup_epochs=0", "optim.milestones=[16,18]", "loss.params.drw_epoch=16"]
    gcl = load_config("cifar10_lt/gcl")
    assert bench.stage2_epochs(gcl, 200, None) == 30 and bench.stage2_epochs(gcl, 20, None) == 3
    assert bench.stage2_epochs(gcl, 20, 7) == 7


@pytest.mark.slow
def test_bench_cifar_cpu_smoke(tmp_path):
    bench = _load()
    out = tmp_path / "results" / "smoke.json"
    rc = bench.main(["--device", "cpu", "--dataset", "synthetic", "--subset", "100", "--epochs", "1",
                     "--timed-epochs", "1", "--workers", "1", "--conventional-epochs", "1", "--ceiling-repeats", "1",
                     "--out", str(out), "--workdir", str(tmp_path / "work"), "data.params.test_per_class=10"])
    assert rc == 0
    report = json.loads(out.read_text())
    res = report["results"]
    assert not report["errors"]
    assert set(res) == {"conventional", "fast", "e2e", "conventional_e2e", "eval", "concurrency", "stage2", "profile",
                        "ceiling"}
    for key in ("conventional", "fast"):
        d = res[key]
        assert d["timed_epochs"] == 1 and len(d["epoch_seconds"]) == 2 and d["seconds_per_epoch"] > 0
        assert d["images_per_epoch"] == res["conventional"]["images_per_epoch"] > 0  # the same data
        assert d["steps_per_epoch"] == -(-d["images_per_epoch"] // 128)
    assert res["fast"]["config"]["cuda_graph"] is False and res["fast"]["config"]["data.gpu_resident"] is True
    e2e = res["e2e"]
    assert e2e["stage1_rc"] == 0 and e2e["stage2_rc"] == 0 and e2e["stage1_epochs"] == 1 and e2e["stage2_epochs"] == 1
    assert 0 <= e2e["top1"] <= 100 and e2e["wall_s"] > 0
    assert Path(e2e["stage1_log"]).is_file()
    assert 0 <= res["conventional_e2e"]["top1"] <= 100
    # (e) evaluation, the projection of the full 200-epoch recipe (20 evaluations on the CPU: every 10th epoch)
    ev, proj = res["eval"], report["projection"]
    assert len(ev["fast_seconds"]) == 3 and ev["fast_eval_seconds"] == sorted(ev["fast_seconds"])[1]
    assert proj["epochs"] == 200 and proj["fast"]["evaluations"] == 20 and proj["conventional"]["evaluations"] == 200
    assert proj["fast"]["stage1_s"] == pytest.approx(200 * res["fast"]["seconds_per_epoch"] + 20 * ev["fast_eval_seconds"])
    assert proj["conventional"]["stage1_s"] == pytest.approx(
        200 * res["conventional"]["seconds_per_epoch"] + 200 * ev["conventional_eval_seconds"])
    # (f) concurrency: one run per core at one thread each, against one run on every core
    conc = res["concurrency"]
    assert len(conc["concurrent_images_per_second"]) == conc["cores"] == conc["one_run_threads"]
    assert conc["aggregate_images_per_second"] == pytest.approx(sum(conc["concurrent_images_per_second"]))
    assert conc["better"] == ("concurrent" if conc["ratio"] > 1 else "one")
    # (g) stage 2: the recipe's (images, mixup) and the cached-feature variant
    s2 = res["stage2"]
    assert s2["recipe"]["feature_cache"] is False and s2["cached"]["feature_cache"] is True
    assert s2["cached"]["feature_cache_seconds"] > 0 and s2["recipe_stage2_epochs"] == 30
    assert proj["fast"]["stage2_evaluations"] == 15  # every 2nd of 30 epochs on the CPU
    assert proj["fast"]["total_s"] == pytest.approx(proj["fast"]["stage1_s"] + proj["fast"]["stage2_s"])
    # (h) the profile of the run's own step: the convolutions run in the model's forward and in backward
    prof = res["profile"]
    assert prof["steps"] == 10 and sum(prof["share"].values()) == pytest.approx(1.0)
    conv = prof["self_ms_per_step"]["convolution"]
    assert conv["forward"] > 0 and conv["backward"] > 0 and conv["optimizer"] == conv["other"] == 0
    assert prof["self_ms_per_step"]["batch norm"]["backward"] > 0
    assert sum(v["optimizer"] for v in prof["self_ms_per_step"].values()) > 0
    # (i) the step's 31 convolutions (ResNet-32) against the matmul, set against (a)'s step
    ceil = res["ceiling"]
    from longtail.engine.precision import cpu_bf16_supported

    assert sum(layer["count"] for layer in ceil["layers"]) == 31
    assert ceil["dtype"] == ("bfloat16" if cpu_bf16_supported() else "float32")  # the run's amp (auto)
    assert ceil["conventional_ms"] == res["conventional"]["ms_per_step"] and ceil["step_ms"] > 0
    assert ceil["conv_share"] == res["profile"]["share"]["convolution"]  # (h) ran before: the share in the step
    assert ceil["other_ms"] == pytest.approx(ceil["step_ms"] * (1 - ceil["conv_share"]))
    assert ceil["step_ms_at_peak"] == pytest.approx(ceil["other_ms"] + ceil["conv_ms_at_peak"])
    assert all(layer["gemm_gflops"] > 0 for layer in ceil["layers"])
    md = out.with_suffix(".md").read_text()
    assert "(i) The step's convolutions against a dense matmul" in md
    assert "(f) Concurrency" in md and "(g) Stage 2" in md and "(h) Where a training step's time goes" in md and "Projected wall time" in md
    assert report["command"] in md and "(a) conventional" in md and "(c) longtail" in md and "(d) conventional" in md
    assert report["machine"]["torch"] and report["machine"]["cpu_count"]


class _Event:
    def __init__(self, name, us, parent=None):
        self.name, self.self_cpu_time_total, self.cpu_parent = name, us, parent


def test_profile_table_sums_self_time_by_kind_and_phase():
    bench = _load()
    fwd = _Event("longtail::forward", 1.0)
    bwd = _Event("autograd::engine::evaluate_function: ConvolutionBackward0", 2.0)
    opt = _Event("Optimizer.step#SGD.step", 4.0)
    relu, conv_bwd = _Event("aten::relu_", 0.5, fwd), _Event("ConvolutionBackward0", 0.25, bwd)
    events = [fwd, bwd, opt, relu, conv_bwd,
              _Event("aten::mkldnn_convolution", 10.0, fwd), _Event("aten::native_batch_norm", 20.0, fwd),
              _Event("aten::clamp_min_", 40.0, relu), _Event("aten::convolution_backward", 80.0, conv_bwd),
              _Event("aten::threshold_backward", 160.0, bwd), _Event("aten::_foreach_add_", 320.0, opt),
              _Event("aten::addmm", 640.0, fwd), _Event("aten::index", 1280.0),  # augmentation: outside the model
              _Event("cudaLaunchKernel", 5000.0, fwd)]  # not an operator: not counted
    table = bench.profile_table(events)
    assert table["convolution"] == {"forward": 10.0, "backward": 80.0, "optimizer": 0.0, "other": 0.0}
    assert table["batch norm"]["forward"] == 20.0
    assert table["activation"] == {"forward": 40.5, "backward": 160.0, "optimizer": 0.0, "other": 0.0}
    assert table["matmul"]["forward"] == 640.0
    assert table["elementwise / other"] == {"forward": 0.0, "backward": 0.0, "optimizer": 320.0, "other": 1280.0}
    assert sum(sum(v.values()) for v in table.values()) == 10 + 20 + 40.5 + 80 + 160 + 320 + 640 + 1280


def test_concurrency_section_compares_the_machine_with_the_plain_loop():
    """(f) shows each setting's training images/s against (a)'s, and leaves the column out without (a)."""
    bench = _load()
    conc = {"one_run_threads": 2, "one_run_images_per_second": 500.0, "concurrent_runs": 2,
            "concurrent_images_per_second": [290.0, 310.0], "aggregate_images_per_second": 600.0,
            "ratio": 1.2, "better": "concurrent"}
    lines = bench.cpu_sections({"results": {"concurrency": conc, "conventional": {"images_per_second": 250.0}}})
    assert "| setting | images/s (training) | vs (a) |" in lines
    assert "| 1 run x 2 threads | 500 | 2.00x |" in lines
    assert "| 2 runs x 1 thread, at once | 290 + 310 = 600 | 2.40x |" in lines
    alone = bench.cpu_sections({"results": {"concurrency": conc}})
    assert "| 1 run x 2 threads | 500 |" in alone and not any("vs (a)" in ln for ln in alone)


def test_ceiling_section_rows():
    """(i) renders one row per convolution shape, a dash for a pass the stem has not, the step with its
    convolutions as measured in it, alone and at the matmul's speed, and 'none suffices' when the
    step's other work alone is slower than the target step."""
    bench = _load()
    layer = {"label": "3->16, 3x3, 32x32->32x32", "count": 1, "ms": {"forward": 1.0, "weight_grad": 2.0},
             "gflops": 120.0, "of_peak": 0.3, "gemm_gflops": 100.0}
    c = {"dtype": "bfloat16", "channels_last": True, "threads": 2, "repeats": 5, "peak_gflops": 400.0, "layers": [layer],
         "conv_gflop": 52.8, "conv_ms": 160.0, "conv_gflops": 330.0, "conv_ms_at_peak": 132.0, "conv_share": 0.687,
         "step_ms": 300.0, "conv_ms_in_step": 206.1, "conv_gflops_in_step": 256.2, "other_ms": 93.9,
         "step_ms_alone": 253.9, "step_ms_at_peak": 225.9, "conventional_ms": 600.0, "target": 2.3,
         "target_step_ms": 260.9, "target_gflops": 316.6, "speedup": 2.0, "speedup_alone": 2.36, "speedup_at_peak": 2.66}
    lines = bench.ceiling_section(c)
    assert "| 3->16, 3x3, 32x32->32x32 | 1 | 1.00 | - | 2.00 | 120 | 30% | 100 |" in lines
    assert "| its convolutions, their 68.7% of the profile (h) | 206.1 | 256 |" in lines
    assert "| the step with the convolutions as fast as alone | 253.9 | 330 |" in lines
    assert "| the step 2.3x (a) needs, the rest as measured | 260.9 | 317 (79% of the matmul's) |" in lines
    assert any("2.00x as measured; 2.36x with the convolutions in the step as fast as alone; 2.66x" in ln for ln in lines)
    slow = bench.ceiling_section(dict(c, target_gflops=float("inf"), conv_share=None))
    assert "| the step 2.3x (a) needs, the rest as measured | 260.9 | none suffices: the rest alone is slower |" in slow
    assert "| its convolutions, as fast as alone ((h) not run) | 206.1 | 256 |" in slow
    assert bench.ceiling_section(None) == []
