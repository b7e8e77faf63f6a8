"""Data operations the control plane's controllers run in a worker thread: load, watch (OnEvent),
cron schedules, migrate, process and clean. Each is a plain function returning an OperationResult or
raising OperationError with a one-line reason."""

from __future__ import annotations

from .clean import run_clean
from .cron import CronError, next_fire
from .load import run_load
from .migrate import Endpoint, run_migrate
from .process import ProcessSpec, make_processor_from_func, process_key, run_process
from .result import Log, OperationError, OperationResult
from .watch import SourceWatcher

__all__ = [
    "CronError", "Endpoint", "Log", "OperationError", "OperationResult", "ProcessSpec", "SourceWatcher",
    "make_processor_from_func", "next_fire", "process_key", "run_clean", "run_load", "run_migrate",
    "run_process",
]
