"""Helpers for training code: progress and metrics, checkpoints, rank, and a graceful stop.

They read what the launcher puts in every training process's environment
(``SHIPYARD_REPORT_FILE``, ``SHIPYARD_CHECKPOINT_DIR``, ``RANK``/``WORLD_SIZE`` or the framework's
own variables) and work outside Shipyard too: then reports go nowhere and checkpoints go to
``./checkpoints``. Importing this module loads nothing heavy (torch only when it is imported already).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

CHECKPOINT_PREFIX = "checkpoint-"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)(\.[a-z]+)?$")
_stop = {"armed": False, "requested": False}


def _env_int(*names: str, default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


def rank() -> int:
    """This process's global rank (``RANK``, else ``JAX_PROCESS_ID`` or ``DMLC_TASK_ID``; 0 outside a job)."""
    return _env_int("RANK", "JAX_PROCESS_ID", "DMLC_TASK_ID", default=0)


def world_size() -> int:
    """How many training processes the job has (1 outside a job)."""
    return _env_int("WORLD_SIZE", "JAX_NUM_PROCESSES", "DMLC_NUM_WORKER", default=1)


def report(metrics: Mapping[str, float] | None = None, step: int | None = None,
           progress: float | None = None) -> bool:
    """Append one line of progress/metrics to the job's report file (rank 0 only; others are ignored).

    ``metrics`` maps names to numbers, ``step`` is a whole number >= 0, ``progress`` a percentage
    0..100. The control plane shows them in ``status.trainerStatus``. Returns whether a line was written.
    """
    entry: dict[str, Any] = {"time": time.time(), "step": None, "progress": None, "metrics": {}}
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step: expected a whole number >= 0, got {step!r}")
        entry["step"] = step
    if progress is not None:
        if isinstance(progress, bool) or not isinstance(progress, (int, float)) or not 0 <= progress <= 100:
            raise ValueError(f"progress: expected a percentage between 0 and 100, got {progress!r}")
        entry["progress"] = float(progress)
    for name, value in (metrics or {}).items():
        number = _number(value)
        if not isinstance(name, str) or not name or number is None:
            raise ValueError(f"metrics[{name!r}]: expected a finite number keyed by a name, got {value!r}")
        entry["metrics"][name] = number
    path = os.environ.get("SHIPYARD_REPORT_FILE")
    if rank() != 0 or not path:
        return False
    line = (json.dumps(entry) + "\n").encode()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # One write on an O_APPEND descriptor: a reader never sees half a line from us.
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)
    return True


def _number(value: Any) -> float | None:
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


# -- checkpoints -----------------------------------------------------------------------------------
def checkpoint_dir() -> Path:
    """``SHIPYARD_CHECKPOINT_DIR`` (the job's ``checkpoints/``), else ``./checkpoints``."""
    return Path(os.environ.get("SHIPYARD_CHECKPOINT_DIR") or "checkpoints")


def _checkpoints(folder: Path) -> list[tuple[int, Path]]:
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = _CHECKPOINT.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(state: Any, step: int, keep: int = 3) -> Path | None:
    """Save ``state`` as the checkpoint of ``step`` (rank 0 only) and keep the last ``keep``.

    A torch object (state dict, module...) is written with ``torch.save`` when torch is imported
    (``.pt``), ``bytes`` as they are (``.bin``), a path by copying the file or folder (its
    suffix kept), anything else with pickle (``.pkl``). It is written under a temporary name,
    then renamed, so a crash never leaves half a checkpoint. Returns its path (None on other ranks).
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step: expected a whole number >= 0, got {step!r}")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep: expected a whole number >= 1, got {keep!r}")
    if rank() != 0:
        return None
    folder = checkpoint_dir()
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{CHECKPOINT_PREFIX}{step:08d}"
    temporary = Path(tempfile.mkdtemp(prefix=f".{stem}.", dir=folder))
    try:
        if isinstance(state, (str, os.PathLike)):
            source = Path(state)
            if not source.exists():
                raise FileNotFoundError(f"state: {source} does not exist")
            suffix = "" if source.is_dir() else source.suffix
            written = temporary / "data"
            (shutil.copytree if source.is_dir() else shutil.copyfile)(source, written)
        elif isinstance(state, (bytes, bytearray, memoryview)):
            suffix, written = ".bin", temporary / "data"
            written.write_bytes(bytes(state))
        elif "torch" in sys.modules:
            suffix, written = ".pt", temporary / "data"
            sys.modules["torch"].save(state, written)
        else:
            suffix, written = ".pkl", temporary / "data"
            with open(written, "wb") as handle:
                pickle.dump(state, handle)
        target = folder / f"{stem}{suffix}"
        for _, old in _checkpoints(folder):  # a checkpoint of the same step saved again replaces it
            if old.name.startswith(stem):
                _remove(old)
        os.replace(written, target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    for _, old in _checkpoints(folder)[:-keep]:
        _remove(old)
    return target


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def latest_checkpoint() -> Path | None:
    """The checkpoint with the highest step in :func:`checkpoint_dir`, or None."""
    found = _checkpoints(checkpoint_dir())
    return found[-1][1] if found else None


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint was saved at, from its name (``checkpoint-00000042.pt`` -> 42)."""
    match = _CHECKPOINT.match(Path(path).name)
    if not match:
        raise ValueError(f"path: {path} is not a checkpoint saved by save_checkpoint")
    return int(match.group(1))


def load_checkpoint(path: Path | None = None) -> Any:
    """The state saved in ``path`` (default: the latest checkpoint), or None when there is none.

    ``.pt`` loads with torch (on the CPU), ``.pkl`` with pickle, ``.bin`` as bytes; a copied
    file or folder is returned as its path."""
    path = Path(path) if path is not None else latest_checkpoint()
    if path is None:
        return None
    if path.suffix == ".pt":
        import torch

        return torch.load(path, map_location="cpu", weights_only=False)  # our own file, may hold any object
    if path.suffix == ".pkl":
        with open(path, "rb") as handle:
            return pickle.load(handle)
    if path.suffix == ".bin":
        return path.read_bytes()
    return path


# -- stopping --------------------------------------------------------------------------------------
def stop_requested() -> bool:
    """Whether the job was asked to stop (SIGTERM: suspend, delete, deadline, node failure).

    The first call installs a SIGTERM handler in place of the default (which ends the process at
    once), so call it early, e.g. before the training loop; then check it each step, save a
    checkpoint and return when it is True. The launcher SIGKILLs what has not stopped after its grace.
    """
    if not _stop["armed"]:
        _stop["armed"] = True
        signal.signal(signal.SIGTERM, _on_sigterm)
    return _stop["requested"]


def _on_sigterm(_signum: int, _frame: object) -> None:
    _stop["requested"] = True
