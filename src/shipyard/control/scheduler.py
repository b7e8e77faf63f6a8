"""The machine's resources: its inventory, TrainJob admission, and the ledger replicas hold shares in.

Inventory: CPU cores this process may use (``os.sched_getaffinity``), memory from ``/proc/meminfo``
and GPUs. Any of them can be declared instead (``SHIPYARD_CPUS``, ``SHIPYARD_MEMORY`` in bytes,
``SHIPYARD_GPUS=0,1`` or ``SHIPYARD_GPU_COUNT``); GPUs are otherwise counted with ``nvidia-smi``
when it is installed. Each GPU's memory (for fractional sharing) is declared with
``SHIPYARD_GPU_MEMORY`` (bytes or a quantity such as ``16Gi``; one value for every GPU or a
comma-separated list, one per GPU) or read from NVML (``pynvml``) or ``nvidia-smi``.

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
from typing import Callable, Hashable

from shipyard.quantity import QuantityError, format_bytes, parse_quantity

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
    """What the machine offers: cpu cores, memory bytes, GPU count, the GPUs' ids and (when known)
    each GPU's memory in bytes."""

    total: dict[str, float] = field(default_factory=dict)
    gpu_ids: list[str] = field(default_factory=list)
    gpu_memory: dict[str, float] = field(default_factory=dict)

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
    declared = "SHIPYARD_GPUS" in env or _number(env, "SHIPYARD_GPU_COUNT") is not None
    return Inventory({
        "cpu": cpus if cpus is not None else float(len(os.sched_getaffinity(0))),
        "memory": memory if memory is not None else float(_meminfo_bytes()),
        "gpu": float(len(gpu_ids)),
    }, gpu_ids, _gpu_memory(env, gpu_ids, detect=not declared))


def _gpu_memory(env: dict[str, str], gpu_ids: list[str], detect: bool) -> dict[str, float]:
    """Bytes of memory per GPU id: ``SHIPYARD_GPU_MEMORY`` (one value for all, or one per GPU), else
    NVML or nvidia-smi for detected GPUs; {} when unknown."""
    declared = env.get("SHIPYARD_GPU_MEMORY", "").strip()
    if declared:
        values = [item.strip() for item in declared.split(",") if item.strip()]
        try:
            sizes = [parse_quantity(value, "SHIPYARD_GPU_MEMORY") for value in values]
        except QuantityError as exc:
            raise ValueError(f"SHIPYARD_GPU_MEMORY={declared!r}: {exc.message}") from None
        if len(sizes) == 1:
            sizes = sizes * len(gpu_ids)
        if len(sizes) != len(gpu_ids):
            raise ValueError(f"SHIPYARD_GPU_MEMORY={declared!r} gives {len(values)} sizes but the machine has "
                             f"{len(gpu_ids)} GPU(s) ({', '.join(gpu_ids) or 'none'}); give one size for all or one "
                             "per GPU")
        return dict(zip(gpu_ids, sizes))
    if not detect or not gpu_ids:
        return {}
    sizes = _nvml_memory() or _nvidia_smi_memory()
    return dict(zip(gpu_ids, sizes)) if len(sizes) == len(gpu_ids) else {}


def _nvml_memory() -> list[float]:
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
    except Exception:  # not installed, or no driver
        return []
    try:
        return [float(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).total)
                for index in range(pynvml.nvmlDeviceGetCount())]
    except Exception:
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _nvidia_smi_memory() -> list[float]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        found = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True, timeout=10)
        return [float(line) * 2**20 for line in found.stdout.split()] if found.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return []


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


# -- the ledger of what replicas (and TrainJobs) hold --------------------------------------------------
@dataclass(frozen=True)
class ReplicaNeeds:
    """What one replica asks for: cpu cores, memory bytes, whole GPUs, and ``gpu_memory`` bytes on each
    of its GPUs when it shares them (then ``gpu`` is how many GPUs it spreads over, at least 1)."""

    cpu: float = 0.0
    memory: float = 0.0
    gpu: int = 0
    gpu_memory: float = 0.0

    def describe(self) -> str:
        parts = [f"cpu {self.cpu:g}"] if self.cpu else []
        if self.memory:
            parts.append(f"memory {format_bytes(self.memory)}")
        if self.gpu_memory:
            parts.append(f"{format_bytes(self.gpu_memory)} on {max(self.gpu, 1)} shared GPU(s)")
        elif self.gpu:
            parts.append(f"nvidia.com/gpu {self.gpu}")
        return ", ".join(parts) or "nothing"


@dataclass(frozen=True)
class Holding:
    """A replica's share of the machine: its cpu and memory, its GPU ids, and the bytes it takes on each
    of them when it shares them (0: it has them to itself)."""

    needs: ReplicaNeeds
    devices: tuple[str, ...] = ()

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(self.devices)


JobShares = Callable[[], list[tuple[dict[str, float], list[str]]]]


class Ledger:
    """One machine, one account: replicas take shares with ``take`` and give them back with ``release``;
    ``jobs()`` says what running TrainJobs hold ((needs, GPU ids) each), so replicas never take it,
    and ``job_inventory()`` is the view the TrainJob controller admits against, so jobs never take
    what replicas hold. A GPU a job or a whole-GPU replica holds is exclusive; replicas asking for
    ``gpu_memory`` share GPUs up to each GPU's declared memory (best fit: the fullest GPU that fits)."""

    def __init__(self, inventory: Inventory, jobs: JobShares | None = None) -> None:
        self.inventory = inventory
        self.jobs: JobShares = jobs or (lambda: [])
        self.holdings: dict[Hashable, Holding] = {}

    # -- what is used ----------------------------------------------------------------------------
    def replica_totals(self) -> dict[str, float]:
        """cpu and memory the replicas hold, and the GPUs they hold or share (each counts as one)."""
        devices = {device for holding in self.holdings.values() for device in holding.devices}
        return {"cpu": sum(h.needs.cpu for h in self.holdings.values()),
                "memory": sum(h.needs.memory for h in self.holdings.values()), "gpu": float(len(devices))}

    def free(self) -> dict[str, float]:
        """cpu and memory nobody holds."""
        used = [needs for needs, _ in self.jobs()] + [self.replica_totals()]
        left = self.inventory.free(used)
        return {"cpu": left.get("cpu", 0.0), "memory": left.get("memory", 0.0)}

    def _gpu_state(self) -> tuple[set[str], dict[str, float]]:
        """(GPUs held exclusively, bytes taken on each shared GPU)."""
        exclusive = {device for _, devices in self.jobs() for device in devices}
        shared: dict[str, float] = {}
        for holding in self.holdings.values():
            for device in holding.devices:
                if holding.needs.gpu_memory:
                    shared[device] = shared.get(device, 0.0) + holding.needs.gpu_memory
                else:
                    exclusive.add(device)
        return exclusive, shared

    # -- taking and giving back --------------------------------------------------------------------
    def take(self, owner: Hashable, needs: ReplicaNeeds) -> Holding | str:
        """Hold ``needs`` for ``owner`` (again: its current holding), or say in words why it does not fit."""
        if owner in self.holdings:
            return self.holdings[owner]
        total, free = self.inventory.total, self.free()
        short = [f"Insufficient {name} (needs {shown(want)}, {shown(max(free[name], 0.0))} of "
                 f"{shown(total.get(name, 0.0))} free)"
                 for name, want, shown in (("cpu", needs.cpu, _cores), ("memory", needs.memory, format_bytes))
                 if want > 0 and want > free[name] + 1e-9]
        devices, why = self._gpus(needs)
        if why:
            short.append(why)
        if short:
            return "; ".join(short)
        holding = self.holdings[owner] = Holding(needs, tuple(devices))
        return holding

    def adopt(self, owner: Hashable, needs: ReplicaNeeds, devices: list[str]) -> Holding:
        """Record what a running replica (adopted after a control-plane restart) holds, fitting or not."""
        holding = self.holdings[owner] = Holding(needs, tuple(devices))
        return holding

    def release(self, owner: Hashable) -> None:
        self.holdings.pop(owner, None)

    def _gpus(self, needs: ReplicaNeeds) -> tuple[list[str], str | None]:
        """GPU ids for ``needs`` (lowest first; shared ones best fit), or the reason there are none."""
        ids = self.inventory.gpu_ids
        exclusive, shared = self._gpu_state()
        if needs.gpu_memory:
            count = max(needs.gpu, 1)
            if not ids:
                return [], "Insufficient nvidia.com/gpu (the machine has no GPU)"
            sizes = self.inventory.gpu_memory
            if not sizes:
                return [], ("no GPU memory is known for sharing GPUs (declare it with SHIPYARD_GPU_MEMORY, e.g. "
                            "16Gi, or install pynvml)")
            room = {d: sizes.get(d, 0.0) - shared.get(d, 0.0) for d in ids if d not in exclusive}
            fitting = sorted((d for d, left in room.items() if left + 1e-6 >= needs.gpu_memory),
                             key=lambda d: (room[d], ids.index(d)))
            if len(fitting) < count:
                best = max(room.values(), default=0.0)
                return [], (f"Insufficient GPU memory (needs {format_bytes(needs.gpu_memory)} on {count} GPU(s); "
                            f"{len(fitting)} GPU(s) have that much free, the most free on one is "
                            f"{format_bytes(max(best, 0.0))})")
            return sorted(fitting[:count], key=ids.index), None
        if not needs.gpu:
            return [], None
        idle = [d for d in ids if d not in exclusive and not shared.get(d)]
        if len(idle) < needs.gpu:
            return [], f"Insufficient nvidia.com/gpu (needs {needs.gpu}, {len(idle)} of {len(ids)} free)"
        return idle[:needs.gpu], None

    # -- the TrainJob controller's view --------------------------------------------------------------
    def job_inventory(self) -> "JobInventory":
        return JobInventory(self)


class JobInventory:
    """The inventory as TrainJob admission sees it: the machine minus what replicas hold (a GPU a
    replica holds or shares is not offered to jobs, which take whole GPUs)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    @property
    def total(self) -> dict[str, float]:
        return self.ledger.inventory.total

    @property
    def gpu_ids(self) -> list[str]:
        held = {device for holding in self.ledger.holdings.values() for device in holding.devices}
        return [device for device in self.ledger.inventory.gpu_ids if device not in held]

    def fits_machine(self, needs: dict[str, float]) -> bool:
        return self.ledger.inventory.fits_machine(needs)

    def free(self, used: list[dict[str, float]]) -> dict[str, float]:
        return self.ledger.inventory.free([*used, self.ledger.replica_totals()])


def _cores(value: float) -> str:
    return f"{value:g}"
