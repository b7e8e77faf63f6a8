"""Which queued TrainJobs may start now: the machine's inventory, priorities and gang admission.

Inventory: CPU cores this process may use (``os.sched_getaffinity``), memory from ``/proc/meminfo``
and GPUs. Any of them can be declared instead (``SHIPYARD_CPUS``, ``SHIPYARD_MEMORY`` in bytes,
``SHIPYARD_GPUS=0,1`` or ``SHIPYARD_GPU_COUNT``); GPUs are otherwise counted with ``nvidia-smi``
when it is installed.

The admission rule (``admit``):

1. Jobs are considered by priority (annotation ``trainer.shipyard.io/priority``, higher first),
   then first come, first served (the order they were queued).
2. Gang admission: a job starts only when ALL its processes fit, i.e. ``numNodes x resourcesPerNode``
   fits what the running jobs leave free; nothing is reserved piecemeal.
3. Skip-ahead (backfill) never delays a higher-priority job: once a job of priority P does not
   fit, jobs of the same priority P behind it may still start if they fit now (a small job is
   not held up by a big one of equal rank), but no job of a lower priority starts until every
   waiting job of priority P or higher has started. A job that needs more than the whole machine
   can never start, so it is not waited for (the controller fails it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

RESOURCES = ("cpu", "memory", "gpu")


@dataclass(frozen=True)
class Demand:
    """What one queued job needs in total (all its nodes), and its place in the queue."""

    key: tuple[str, str]  # (namespace, name)
    priority: int
    queued_at: float  # the order jobs of the same priority are admitted in
    needs: dict[str, float]


@dataclass
class Inventory:
    """What the machine offers: cpu cores, memory bytes, GPU count, and the GPUs' ids."""

    total: dict[str, float] = field(default_factory=dict)
    gpu_ids: list[str] = field(default_factory=list)

    def fits_machine(self, needs: dict[str, float]) -> bool:
        """Could this ever run, on an idle machine?"""
        return fits(needs, self.total)

    def free(self, used: list[dict[str, float]]) -> dict[str, float]:
        """What is left after the running jobs' shares."""
        left = dict(self.total)
        for share in used:
            for resource, amount in share.items():
                left[resource] = left.get(resource, 0.0) - amount
        return left


def detect_inventory(env: dict[str, str] | None = None) -> Inventory:
    """The machine's cpu/memory/gpu, with the ``SHIPYARD_*`` declarations taking precedence."""
    env = dict(os.environ) if env is None else env
    cpus = _number(env, "SHIPYARD_CPUS")
    memory = _number(env, "SHIPYARD_MEMORY")
    gpu_ids = _gpu_ids(env)
    return Inventory({
        "cpu": cpus if cpus is not None else float(len(os.sched_getaffinity(0))),
        "memory": memory if memory is not None else float(_meminfo_bytes()),
        "gpu": float(len(gpu_ids)),
    }, gpu_ids)


def _number(env: dict[str, str], name: str) -> float | None:
    value = env.get(name)
    if value is None or not value.strip():
        return None
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number") from None
    if number < 0:
        raise ValueError(f"{name}={value!r} must not be negative")
    return number


def _meminfo_bytes() -> int:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _gpu_ids(env: dict[str, str]) -> list[str]:
    """GPU ids as CUDA_VISIBLE_DEVICES names them: declared (``SHIPYARD_GPUS=0,1`` or
    ``SHIPYARD_GPU_COUNT=2``, so GPU scheduling is testable without GPUs), else nvidia-smi's."""
    declared = env.get("SHIPYARD_GPUS")
    if declared is not None:
        return [item.strip() for item in declared.split(",") if item.strip()]
    count = _number(env, "SHIPYARD_GPU_COUNT")
    if count is not None:
        return [str(index) for index in range(int(count))]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        found = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if found.returncode != 0:
        return []
    return [str(index) for index, line in enumerate(l for l in found.stdout.splitlines() if l.startswith("GPU "))]


def assign_devices(free_ids: list[str], num_nodes: int, per_node: int) -> list[list[str]] | None:
    """Give each node ``per_node`` of the free GPU ids (lowest first), or None when they do not fit."""
    if num_nodes * per_node > len(free_ids):
        return None
    return [free_ids[node * per_node:(node + 1) * per_node] for node in range(num_nodes)]


def fits(needs: dict[str, float], free: dict[str, float]) -> bool:
    """Does every resource asked for fit what is free? (A tiny slack absorbs float rounding.)"""
    return all(amount <= free.get(resource, 0.0) + 1e-9 for resource, amount in needs.items() if amount > 0)


def job_needs(num_nodes: int, per_node: dict[str, float]) -> dict[str, float]:
    """A gang's total: ``num_nodes`` x the resources of one node."""
    return {resource: num_nodes * float(per_node.get(resource, 0.0)) for resource in RESOURCES}


def queue_order(queued: list[Demand]) -> list[Demand]:
    """Higher priority first, then first queued first."""
    return sorted(queued, key=lambda demand: (-demand.priority, demand.queued_at, demand.key))


def admit(queued: list[Demand], inventory: Inventory, running: list[dict[str, float]]) -> list[Demand]:
    """The queued jobs that start now, by the rule in this module's docstring (queue order)."""
    free = inventory.free(running)
    admitted: list[Demand] = []
    blocked_priority: int | None = None
    for demand in queue_order(queued):
        if not inventory.fits_machine(demand.needs):
            continue  # can never run: it must not hold up the queue
        if blocked_priority is not None and demand.priority < blocked_priority:
            break  # a higher-priority job is waiting for room; lower ones must not take it
        if fits(demand.needs, free):
            admitted.append(demand)
            free = {resource: free.get(resource, 0.0) - demand.needs.get(resource, 0.0)
                    for resource in set(free) | set(demand.needs)}
        elif blocked_priority is None:
            blocked_priority = demand.priority
    return admitted
