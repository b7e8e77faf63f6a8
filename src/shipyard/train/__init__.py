"""Training: TrainJob runtimes, the local launcher, and helpers for training code.

Training code uses the helpers: ``from shipyard import train; train.report({"loss": 0.1}, step=3)``.
"""

from shipyard.train.helpers import (
    checkpoint_dir,
    checkpoint_step,
    latest_checkpoint,
    load_checkpoint,
    rank,
    report,
    save_checkpoint,
    stop_requested,
    world_size,
)

__all__ = ["checkpoint_dir", "checkpoint_step", "latest_checkpoint", "load_checkpoint", "rank", "report",
           "save_checkpoint", "stop_requested", "world_size"]
