"""Atomic checkpoints, loaded with ``weights_only=True``.

A checkpoint is a dict of tensors, state dicts and plain Python values only, so it loads with
``torch.load(..., weights_only=True)``. It is written to a temporary file in the same folder and
renamed into place, so an interrupted write never destroys the previous checkpoint; a write that
fails (read-only folder, full disk) raises CheckpointError and leaves the previous one intact.
Only a finite state is ever saved: :func:`nonfinite_state` finds non-finite parameters, buffers
(e.g. BatchNorm running variances) and optimizer state before the save.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import CheckpointError
from ..models.state import state_mismatch
from .runlog import os_reason


def _save_failure(path: Path, err: BaseException) -> str:
    if isinstance(err, OSError):
        reason = os_reason(err)
    else:  # torch's writer reports a failed write as a RuntimeError from inline_container.cc
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "]" in text and text.startswith("[enforce fail"):
            text = text.split("]", 1)[1].strip(" .")
        reason = text
        try:
            free = shutil.disk_usage(path.parent).free
            if free < 64 << 20:
                reason += f" ({free / 2**20:.1f} MiB free on that disk: it is full)"
        except OSError:
            pass
    kept = (f"the previous checkpoint {path} is intact" if path.is_file()
            else "no checkpoint had been written there yet")
    return f"cannot write checkpoint {path}: {reason}; {kept}"


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` via a temporary file and ``os.replace``.

    Raises:
        CheckpointError: The write failed (the message names the file, the reason and whether
            the previous checkpoint is intact); the temporary file is removed.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise CheckpointError(_save_failure(path, err)) from None
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise CheckpointError(_save_failure(path, err)) from None
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint on the CPU with ``weights_only=True``; errors name the file.

    Raises:
        CheckpointError: The file is missing, or is not a longtail checkpoint (empty, not a
            PyTorch file, holding arbitrary objects, or lacking ``model`` / ``epoch``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is not a longtail checkpoint: the file is empty (0 bytes)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated, random bytes, or holding arbitrary objects
        text = str(err)
        if "Unsupported global" in text:
            why = "it holds objects other than tensors and plain values (refused by weights_only=True)"
        elif "Weights only load failed" in text or "invalid load key" in text or "central directory" in text:
            why = "not a readable PyTorch checkpoint file (truncated, overwritten or another format)"
        else:
            first = (text.strip().splitlines() or [type(err).__name__])[0][:200]
            why = f"not a readable PyTorch checkpoint file ({type(err).__name__}: {first})"
        raise CheckpointError(f"{path} is not a longtail checkpoint: {why}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path} is not a longtail checkpoint (no 'model' state dict)")
    epoch = ckpt.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise CheckpointError(f"{path} is not a longtail checkpoint (no 'epoch' number, got {epoch!r})")
    return ckpt


def nonfinite_state(model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None) -> list[str]:
    """Names of the model's parameters and buffers (and optimizer state tensors) holding NaN or
    infinity; empty when the state is finite. One host synchronization."""
    named: list[tuple[str, torch.Tensor]] = []
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() or t.is_complex():
            named.append((name, t.detach()))
    if optimizer is not None:
        ids = {id(p): n for n, p in model.named_parameters()}
        for p, st in optimizer.state.items():
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and v.is_floating_point():
                    named.append((f"optimizer.{k}[{ids.get(id(p), '?')}]", v.detach()))
    if not named:
        return []
    dev = named[0][1].device
    flags = torch.stack([torch.isfinite(t).all().to(dev) for _, t in named]).cpu()
    return [n for (n, _), ok in zip(named, flags.tolist()) if not ok]


def kept_message(run_dir: Path, last_saved: Optional[int]) -> str:
    """What a stopped run left behind: the checkpoint of epoch ``last_saved`` or nothing."""
    ckpt = Path(run_dir) / "last.pt"
    if last_saved is not None and ckpt.is_file():
        return f"the checkpoint of epoch {last_saved}, the last with a finite state, is kept in {ckpt}"
    return (f"no checkpoint was written (no epoch ended with a finite state); {run_dir} holds the config "
            f"and the log only")


def check_finite_state(model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer], *, epoch: int,
                       stage: int, lr: float, run_dir: Path, last_saved: Optional[int], info=None) -> None:
    """Raise DivergenceError when the model or optimizer state is not finite (never saved).

    With a process group (``info`` enabled) every rank raises together.
    """
    from ..errors import DivergenceError
    from . import distributed as dist

    bad = nonfinite_state(model, optimizer)
    if info is not None and info.enabled:
        flag = torch.tensor(float(bool(bad)), device=next(model.parameters()).device)
        if float(dist.mean_across(flag, info)) > 0 and not bad:
            bad = ["(on another process)"]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DivergenceError(
            f"training diverged in epoch {epoch} (stage {stage}, lr {lr:g}): non-finite values in {shown}; "
            f"this state was not saved and {kept_message(run_dir, last_saved)}"
        )


def load_model_state(model: torch.nn.Module, state: dict, where: Path) -> None:
    """Load a model state dict strictly; a mismatch raises CheckpointError naming the keys."""
    problems = state_mismatch(model.state_dict(), state)
    if problems:
        raise CheckpointError(f"checkpoint {where} does not fit this model: {problems}")
    model.load_state_dict(state)
