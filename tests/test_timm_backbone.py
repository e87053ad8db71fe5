"""model.backbone=timm/<name>: any timm model, no download, optional local weights."""
from __future__ import annotations

import pytest
import torch

from longtail.errors import CheckpointError, ConfigError
from longtail.models import build_model

timm = pytest.importorskip("timm")
NAME = "test_convnext"  # a tiny timm test model (200k parameters)


@pytest.mark.parametrize("head", ["linear", "cosine", "lws"])
def test_timm_backbone_with_longtail_heads(head):
    model = build_model(f"timm/{NAME}", head, 5)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.logits.shape == (2, 5) and out.features.shape == (2, model.feature_dim)


def test_timm_local_weights(tmp_path):
    src = timm.create_model(NAME, pretrained=False, num_classes=7)  # with its own classifier: dropped
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    model = build_model(f"timm/{NAME}", "linear", 3, pretrained=str(path))
    ref = src.state_dict()
    own = model.backbone.net.state_dict()
    assert own and all(torch.equal(v, ref[k]) for k, v in own.items())
    assert any(k not in own for k in ref)  # the source's classifier was dropped
    torch.save({"stem.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="does not fit timm model"):
        build_model(f"timm/{NAME}", "linear", 3, pretrained=str(tmp_path / "bad.pth"))


def test_timm_unknown_name():
    with pytest.raises(ConfigError, match="unknown timm model 'no_such_net'"):
        build_model("timm/no_such_net", "linear", 3)


def test_timm_train_one_epoch(tmp_path):
    from longtail.config import load_config
    from longtail.engine.trainer import train

    cfg = load_config(None, ["data.params.n_max=8", "data.imbalance_ratio=4", "data.params.test_per_class=2",
                             "data.batch_size=16", "data.num_workers=0", "optim.epochs=1", "optim.warmup_epochs=0",
                             "tensorboard=false", "quiet=true", f"output_dir={tmp_path}", "optim.milestones=[]",
                             "optim.milestone_factors=[]",
                             f"model.backbone=timm/{NAME}", "model.head=cosine", "loss.name=ldam"])
    run_dir, metrics = train(cfg)
    assert (run_dir / "last.pt").is_file() and metrics["top1"] is not None
