"""The run folder: resolved config, per-epoch metrics, checkpoints, final metrics.

Layout of ``output_dir/name/``::

    config.yaml      resolved config (what was run)
    log.jsonl        one JSON object per epoch (train loss, lr, seconds, eval metrics)
    last.pt          checkpoint of the latest finished epoch (atomic, every epoch)
    metrics.json     final-epoch evaluation + provenance (seed, versions, git commit, wall time)
    tb/              TensorBoard scalars (when the tensorboard package is installed)
    .lock            exclusive ``fcntl`` lock of the process writing the folder (its PID inside)

One process writes a run folder: :func:`lock_run_dir` takes an exclusive lock on ``.lock`` for
the life of the process (released by :func:`release_run_dir`, or when the process ends, even by
``kill -9``); a second process gets a CheckpointError naming the holder's PID. On resume,
:func:`sync_log` rewrites ``log.jsonl`` to hold exactly the epochs the checkpoint covers.
"""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import platform
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError

LOCK_NAME = ".lock"
_HELD: dict[str, int] = {}  # resolved run folder -> file descriptor holding its lock


def os_reason(err: OSError) -> str:
    """``No space left on device (ENOSPC)``: an OSError's reason without the traceback."""
    code = errno.errorcode.get(err.errno or 0)
    text = err.strerror or str(err)
    return f"{text} ({code})" if code else text


def _close_locks_in_child() -> None:
    # A forked child (a DataLoader worker) must not keep the parent's locks alive after the parent
    # is killed: drop its copies of the lock descriptors (the parent keeps the lock).
    for fd in _HELD.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_locks_in_child)


def _lock_holder(fd: int, tries: int = 20) -> str:
    # The holder writes its PID right after taking the lock; a racing process can look in between,
    # so wait a moment (at most about 0.2 s) for the PID to appear before giving up on naming it.
    text = ""
    for attempt in range(tries):
        try:
            text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        except OSError:
            text = ""
        if text.isdigit():
            return f"process {text}"
        if attempt + 1 < tries:
            time.sleep(0.01)
    return "another process (its PID is not recorded yet)"


def lock_run_dir(run_dir: Path) -> None:
    """Take the exclusive lock of a run folder for the life of this process.

    Re-entrant within one process. Removes temporary files a killed process left behind
    (``.last.pt.*.tmp``, ``metrics.json.tmp``): once the lock is held, nobody else is writing them.

    Raises:
        CheckpointError: Another process holds the lock (the message names its PID), or the
            folder cannot be written (the message names the folder and the reason).
    """
    run_dir = Path(run_dir)
    if holds_lock(run_dir):
        return
    key = str(run_dir.resolve())
    path = run_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise CheckpointError(f"cannot write in run folder {run_dir}: {os_reason(err)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = _lock_holder(fd)
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise CheckpointError(
                f"run folder {run_dir} is in use by {holder} (lock file {path}); two processes must not "
                f"write one run folder: wait for it to finish, or stop it and resume with --resume {run_dir}"
            ) from None
        raise CheckpointError(f"cannot lock run folder {run_dir}: {os_reason(err)}") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as err:  # a full disk: the lock itself is held, the PID is informational
        if err.errno != errno.ENOSPC:
            os.close(fd)
            raise CheckpointError(f"cannot write in run folder {run_dir}: {os_reason(err)}") from None
    _HELD[key] = fd
    remove_stale_tmp(run_dir)


def release_run_dir(run_dir: Path) -> None:
    """Release this process's lock of ``run_dir`` (no-op when not held)."""
    fd = _HELD.pop(str(Path(run_dir).resolve()), None)
    if fd is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def holds_lock(run_dir: Path) -> bool:
    """True when this process holds the lock of ``run_dir`` (a folder removed and made again since
    it was locked is not held: the stale lock is dropped)."""
    key = str(Path(run_dir).resolve())
    fd = _HELD.get(key)
    if fd is None:
        return False
    try:
        a, b = os.fstat(fd), os.stat(Path(run_dir) / LOCK_NAME)
        if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
            return True
    except OSError:
        pass
    release_run_dir(run_dir)
    return False


def remove_stale_tmp(run_dir: Path) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes; returns what was removed."""
    removed = []
    for p in Path(run_dir).iterdir():
        n = p.name
        stale = (n.startswith(".") and n.endswith(".tmp")) or n in ("metrics.json.tmp", "log.jsonl.tmp")
        if stale and p.is_file():
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def software_versions() -> dict:
    import torchvision

    import longtail

    out = {
        "longtail": longtail.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    return out


def machine_line() -> str:
    """One line naming the machine: CPU model and cores, or the GPU; torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((l.split(":", 1)[1].strip() for l in fh if l.startswith("model name")), cpu)
    except OSError:
        pass
    where = f"{cpu}, {os.cpu_count()} cores"
    if torch.cuda.is_available():
        where = f"{torch.cuda.get_device_name()} + {where}"
    return f"{where}; torch {torch.__version__}"


def command_line() -> list[str]:
    """The arguments of this process after ``longtail`` (``["train", "cifar10_lt/gcl", ...]``), for provenance."""
    import sys

    return [str(a) for a in sys.argv[1:]]


def git_commit() -> Optional[str]:
    """The commit of the longtail source tree, with ``-dirty`` when it has changes; None outside git."""
    here = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def default_run_name(cfg: dict, stage: int = 1) -> str:
    recipe = (cfg.get("recipe") or cfg["loss"]["name"]).replace("/", "-")
    base = f"{recipe}-{cfg['data']['name']}-seed{cfg['seed']}"
    return base if stage == 1 else f"{base}-stage2-{cfg['stage2']['method']}"


def new_run_dir(output_dir: str | Path, name: str) -> Path:
    """Create a fresh run folder and lock it (:func:`lock_run_dir`); an existing one is never
    overwritten. Two processes racing for one name: one gets the folder, the other an error.

    Raises:
        ConfigError: ``name`` is not a plain folder name, or the folder already holds a run.
        CheckpointError: The folder cannot be created or written (read-only, under a file, full
            disk), or another process holds it.
    """
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ConfigError(f"config key 'name' must be a plain folder name inside output_dir, got {name!r}")
    run = Path(output_dir) / name
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(f"cannot create run folder {run}: {os_reason(err)}") from None
    held_before = holds_lock(run)
    lock_run_dir(run)
    if any(p.name != LOCK_NAME for p in run.iterdir()):
        if not held_before:
            release_run_dir(run)
        raise ConfigError(
            f"run folder {run} already exists; pick another name (name=...), resume it with "
            f"--resume {run}, or remove it"
        )
    return run


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _write_atomic(path: Path, text: str, what: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename; an OSError becomes a
    CheckpointError naming the file (a previous version of it is left as it was)."""
    tmp = Path(str(path) + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as err:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise CheckpointError(f"cannot write {what}{path}: {os_reason(err)}") from None


#: A JSON array of integers only, as ``json.dumps(indent=...)`` spreads it: one number per line. The
#: newlines make it structural: a string holding "[1,2]" has none (JSON escapes them), so it never matches.
_INT_ARRAY = re.compile(r"\[\n\s*-?\d+(?:,\n\s*-?\d+)*\n\s*\]")


def write_json(obj: Any, path: Path) -> None:
    """Write JSON atomically (NaN/inf become null); an OSError becomes a CheckpointError naming
    the file (a previous version of it is left as it was). Arrays of integers (a confusion
    matrix's rows, milestones) are written on one line each."""
    text = json.dumps(_clean(obj), indent=1)
    text = _INT_ARRAY.sub(lambda m: "[" + ", ".join(re.findall(r"-?\d+", m.group(0))) + "]", text)
    _write_atomic(Path(path), text, "")


def _parse_rows(path: Path) -> list[dict]:
    """The rows of a JSONL log. A half-written last line (a kill during the write) is dropped; an
    unreadable line elsewhere raises CheckpointError naming the line."""
    try:
        lines = path.read_text(errors="replace").split("\n")
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {os_reason(err)}") from None
    numbered = [(i + 1, l) for i, l in enumerate(lines) if l.strip()]
    rows = []
    for k, (lineno, line) in enumerate(numbered):
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError:
            if k == len(numbered) - 1:
                break  # the last line, cut short by an interrupted write
            raise CheckpointError(f"{path}:{lineno}: not a log row (JSON object): {line[:80]!r}") from None
        rows.append(row)
    return rows


def _write_rows(path: Path, rows: list[dict]) -> None:
    _write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows), "the log ")


def sync_log(run_dir: Path, last_epoch: Optional[int]) -> list[dict]:
    """Make ``log.jsonl`` hold exactly the epochs a checkpoint covers, and return those rows.

    ``last_epoch``: the checkpoint's epoch, or None when there is no checkpoint (the log is
    emptied). Rows of later epochs (written before a kill or a failed save), repeated rows and a
    half-written last line are dropped; the file is rewritten atomically.

    Raises:
        CheckpointError: The log lacks an epoch the checkpoint covers (a checkpoint from a later
            epoch than the log: the two do not belong together).
    """
    path = Path(run_dir) / "log.jsonl"
    rows = _parse_rows(path) if path.exists() else []
    keep: dict[int, dict] = {}
    for row in rows:
        e = row.get("epoch")
        if isinstance(e, int) and last_epoch is not None and 0 <= e <= last_epoch:
            keep[e] = row  # a repeated epoch: the later row is the one the checkpoint continued from
    if last_epoch is not None:
        missing = [e for e in range(last_epoch + 1) if e not in keep]
        if missing:
            have = max(keep) if keep else None
            ends = f"ends at epoch {have}" if have is not None else "has no epoch"
            raise CheckpointError(
                f"checkpoint {Path(run_dir) / 'last.pt'} is from epoch {last_epoch} but the log {path} {ends} "
                f"(missing epochs {', '.join(map(str, missing[:8]))}{', ...' if len(missing) > 8 else ''}); the "
                f"checkpoint and the log do not belong together: restore the run's own log or last.pt"
            )
    kept = [keep[e] for e in sorted(keep)]
    if path.exists() or kept:
        _write_rows(path, kept)
    return kept


class EpochLog:
    """Appends one JSON line per epoch and mirrors scalars to TensorBoard when available."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, truncate_after: Optional[int] = None) -> None:
        self.path = Path(run_dir) / "log.jsonl"
        if truncate_after is not None and self.path.exists():
            # On resume keep only the epochs the checkpoint covers.
            rows = _parse_rows(self.path)
            _write_rows(self.path, [r for r in rows if r.get("epoch", -1) < truncate_after])
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tb"))
            except Exception:  # tensorboard not installed: the JSONL log is the record
                self.tb = None

    def write(self, row: dict) -> None:
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(_clean(row)) + "\n")
        except OSError as err:
            raise CheckpointError(f"cannot write the log {self.path}: {os_reason(err)}") from None
        if self.tb is not None:
            step = row.get("epoch", 0)
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch" and v is not None and math.isfinite(v):
                    self.tb.add_scalar(k.replace(".", "/"), v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_log(run_dir: Path) -> list[dict]:
    """The rows of ``run_dir/log.jsonl`` (a half-written last line is left out)."""
    path = Path(run_dir) / "log.jsonl"
    if not path.exists():
        return []
    return _parse_rows(path)
