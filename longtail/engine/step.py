"""One optimization step, eager or captured whole in a CUDA graph.

``TrainStep(model, loss_fn, optimizer, ...)`` is called with a batch ``(x, y)`` already on the
device and returns the batch loss as a 0-dim device tensor (no host synchronization). Three ways
to run the same computation, chosen by config:

* eager (always available; CPU and GPU);
* ``compile``: the model wrapped in ``torch.compile``;
* ``cuda_graph``: after a few eager warm-up steps (real training steps on real batches), the
  whole step -- forward, loss, backward and the fused SGD update -- is captured in a CUDA graph
  and replayed; a batch of another shape (the last, smaller batch of an epoch) runs eagerly, so
  no sample is dropped or padded. Everything that changes between steps is a device tensor:
  the learning rate (a tensor ``lr`` of the fused SGD), the loss's schedule buffers, the mixup
  coefficients (drawn per epoch on the device, indexed by a device step counter) and the random
  numbers of the loss (CUDA-graph-safe Philox generators).

Mixup (Zhang et al. 2018) is applied here, to every loss, as ``lam * L(y_a) + (1 - lam) * L(y_b)``
(:class:`~longtail.losses.mixup.MixupSchedule`, :func:`~longtail.losses.mixup.mixup_loss`).
"""
from __future__ import annotations

import warnings
from contextlib import nullcontext
from typing import Optional

import torch
from torch import Tensor, nn

from ..losses.mixup import MixupSchedule, mixup_loss

__all__ = ["MixupSchedule", "TrainStep"]


class TrainStep:
    """Forward, loss, backward and optimizer update for one batch.

    Args:
        model: Returns ``ModelOutput(logits, features)``.
        loss_fn: A :class:`~longtail.losses.LongTailLoss`.
        optimizer: The optimizer (fused SGD with a tensor lr for graph capture).
        amp_dtype: ``torch.bfloat16`` / ``torch.float16`` for autocast, or None.
        mixup: A :class:`MixupSchedule` or None.
        cuda_graph: Capture the step in a CUDA graph (CUDA only).
        warmup_steps: Eager steps before the capture.
    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer, *,
                 amp_dtype: Optional[torch.dtype] = None, mixup: Optional[MixupSchedule] = None,
                 cuda_graph: bool = False, warmup_steps: int = 3) -> None:
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.amp_dtype = amp_dtype
        self.mixup = mixup
        self.scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
        self.cuda_graph = bool(cuda_graph) and self.scaler is None
        self.warmup_steps = warmup_steps
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.static: dict[str, Tensor] = {}
        self.graph_shape: Optional[tuple] = None
        self.warmup_shape: Optional[tuple] = None
        self.eager_steps = 0
        self.graph_failed: Optional[str] = None

    def _autocast(self, device: torch.device):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.amp_dtype)

    def _loss(self, x: Tensor, y: Tensor) -> Tensor:
        if self.mixup is not None:
            x, ya, yb, lam = self.mixup.mix(x, y)
        with self._autocast(x.device):
            out = self.model(x)
        feats = out.features if getattr(self.loss_fn, "needs_features", False) else None
        if self.mixup is not None:
            return mixup_loss(self.loss_fn, out.logits, ya, yb, lam, features=feats)
        return self.loss_fn(out.logits, y, feats)

    def eager(self, x: Tensor, y: Tensor) -> Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._loss(x, y)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return loss.detach()

    def _capture(self, x: Tensor, y: Tensor) -> None:
        self.static = {"x": x.clone(), "y": y.clone()}
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = self._loss(self.static["x"], self.static["y"])
            loss.backward()
            self.optimizer.step()
        self.static["loss"] = loss.detach()
        self.graph = graph
        self.graph_shape = (tuple(x.shape), tuple(y.shape))

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        if not (self.cuda_graph and x.is_cuda) or self.graph_failed:
            return self.eager(x, y)
        shape = (tuple(x.shape), tuple(y.shape))
        if self.graph is not None and shape == self.graph_shape:
            self.static["x"].copy_(x)
            self.static["y"].copy_(y)
            self.graph.replay()
            return self.static["loss"].clone()
        if self.warmup_shape is None:
            self.warmup_shape = shape  # the full batch: the shape worth capturing
        if self.graph is None and self.eager_steps >= self.warmup_steps and shape == self.warmup_shape:
            try:
                # The captured step does not update the weights while capturing; replay it
                # once so that this batch is trained on exactly once.
                self._capture(x, y)
                self.graph.replay()
                return self.static["loss"].clone()
            except Exception as err:  # capture unsupported here: stay eager, say why once
                self.graph_failed = f"{type(err).__name__}: {err}"
                self.graph = None
                warnings.warn(f"CUDA graph capture failed, training eagerly: {self.graph_failed}")
                torch.cuda.synchronize()
                return self.eager(x, y)
        self.eager_steps += 1
        if self.graph is None:
            # Warm-up runs on a side stream, as CUDA-graph capture requires.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss = self.eager(x, y)
            torch.cuda.current_stream().wait_stream(side)
            return loss
        return self.eager(x, y)
