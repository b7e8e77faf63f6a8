"""Per-model inference statistics with Triton's field names (the V2 statistics extension)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Duration:
    """A count and the total nanoseconds spent (Triton's ``StatisticDuration``)."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    """Counters for one model version; updated on the event loop only, so no locking."""

    name: str
    version: str
    last_inference: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStats] = field(default_factory=dict)

    def record_success(self, rows: int, batch_rows: int, counted: bool, input_ns: int, queue_ns: int,
                       infer_ns: int, output_ns: int) -> None:
        """One successful request of ``rows`` rows that ran in a model execution of ``batch_rows``
        rows; ``counted`` is false for the other requests merged into an execution already counted."""
        self.last_inference = int(time.time() * 1000)
        self.inference_count += rows
        self.success.add(input_ns + queue_ns + infer_ns + output_ns)
        self.queue.add(queue_ns)
        self.compute_input.add(input_ns)
        self.compute_infer.add(infer_ns)
        self.compute_output.add(output_ns)
        if counted:
            self.execution_count += 1
            batch = self.batches.setdefault(batch_rows, BatchStats())
            batch.compute_input.add(input_ns)
            batch.compute_infer.add(infer_ns)
            batch.compute_output.add(output_ns)

    def record_failure(self, ns: int) -> None:
        self.last_inference = int(time.time() * 1000)
        self.fail.add(ns)

    def to_dict(self) -> dict[str, Any]:
        """The statistics extension's JSON for this model."""
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.to_dict(),
                "fail": self.fail.to_dict(),
                "queue": self.queue.to_dict(),
                "compute_input": self.compute_input.to_dict(),
                "compute_infer": self.compute_infer.to_dict(),
                "compute_output": self.compute_output.to_dict(),
                "cache_hit": Duration().to_dict(),
                "cache_miss": Duration().to_dict(),
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": batch.compute_input.to_dict(),
                    "compute_infer": batch.compute_infer.to_dict(),
                    "compute_output": batch.compute_output.to_dict(),
                }
                for size, batch in sorted(self.batches.items())
            ],
            "memory_usage": [],
        }


def _add_durations(target: dict[str, Any], source: dict[str, Any]) -> None:
    for key, value in source.items():
        if isinstance(value, dict) and "count" in value:
            slot = target.setdefault(key, {"count": 0, "ns": 0})
            slot["count"] += value["count"]
            slot["ns"] += value["ns"]


def merge_model_stats(groups: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Sum the statistics of the same models reported by several worker processes."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for group in groups:
        for stats in group:
            key = (stats["name"], stats["version"])
            if key not in merged:
                merged[key] = {**stats, "inference_stats": {}, "batch_stats": [], "inference_count": 0,
                               "execution_count": 0, "last_inference": 0}
            total = merged[key]
            total["inference_count"] += stats["inference_count"]
            total["execution_count"] += stats["execution_count"]
            total["last_inference"] = max(total["last_inference"], stats["last_inference"])
            _add_durations(total["inference_stats"], stats["inference_stats"])
            batches = {entry["batch_size"]: entry for entry in total["batch_stats"]}
            for entry in stats["batch_stats"]:
                slot = batches.setdefault(entry["batch_size"], {"batch_size": entry["batch_size"]})
                _add_durations(slot, entry)
            total["batch_stats"] = sorted(batches.values(), key=lambda entry: entry["batch_size"])
    return list(merged.values())
