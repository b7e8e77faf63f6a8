"""What the autoscaler measures: in-flight requests per revision, process cpu and memory, windowed samples.

- ``ConcurrencyMeter``: the gateway calls ``begin``/``end`` around every request (held requests at the
  activator included); the controller calls ``take`` every tick for the time-weighted average in flight
  and the number of requests that arrived since the previous ``take``.
- ``ProcessUsage``: cpu cores and resident memory of replica processes and their children (psutil).
- ``SampleWindow``: per-tick samples and their time-weighted averages over the last N seconds.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


class ConcurrencyMeter:
    """Time-weighted requests in flight since the last ``take`` (thread-safe; times are any monotonic clock)."""

    def __init__(self, now: float | None = None) -> None:
        self._lock = threading.Lock()
        start = time.monotonic() if now is None else now
        self._in_flight = 0
        self._area = 0.0  # in-flight x seconds since the last take
        self._requests = 0
        self._since = start  # the last take
        self._changed = start  # the last begin / end / take

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _advance(self, now: float) -> None:
        if now > self._changed:
            self._area += self._in_flight * (now - self._changed)
            self._changed = now

    def begin(self, now: float) -> None:
        """A request arrived (counted, and in flight until ``end``)."""
        with self._lock:
            self._advance(now)
            self._in_flight += 1
            self._requests += 1

    def end(self, now: float) -> None:
        """A request finished (answered, failed or given up)."""
        with self._lock:
            self._advance(now)
            self._in_flight = max(0, self._in_flight - 1)

    def take(self, now: float) -> tuple[float, int]:
        """(average in flight, requests arrived) since the previous take; starts the next interval."""
        with self._lock:
            self._advance(now)
            elapsed = now - self._since
            average = self._area / elapsed if elapsed > 0 else float(self._in_flight)
            requests = self._requests
            self._area, self._requests = 0.0, 0
            self._since = self._changed = max(now, self._changed)
            return average, requests


class ProcessUsage:
    """CPU (cores, over the interval since the previous sample) and RSS of processes and their children."""

    def __init__(self) -> None:
        self._cpu: dict[tuple[int, float], float] = {}  # (pid, create_time) -> cpu seconds at the last sample
        self._at: float | None = None  # time.monotonic() of the last sample

    def sample(self, pids: Iterable[int]) -> tuple[float, float]:
        """(cpu cores, rss bytes) summed over ``pids`` and all their descendants; gone processes count 0.

        A process seen for the first time only sets its baseline (0 cores this sample): the cpu a
        replica spends loading its model is not load, as Kubernetes' HPA ignores a pod's cpu until it
        is ready. Pass the ready replicas' pids.
        """
        import psutil

        now = time.monotonic()
        seen: dict[tuple[int, float], float] = {}
        cores = rss = 0.0
        elapsed = now - self._at if self._at is not None else 0.0
        for process in _processes(psutil, pids):
            try:
                with process.oneshot():
                    key = (process.pid, process.create_time())
                    times = process.cpu_times()
                    memory = process.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            used = times.user + times.system
            seen[key] = used
            rss += memory
            if key in self._cpu and elapsed > 0:
                cores += max(0.0, used - self._cpu[key]) / elapsed
        self._cpu, self._at = seen, now
        return cores, rss


def _processes(psutil: Any, pids: Iterable[int]) -> list[Any]:
    found: dict[int, Any] = {}
    for pid in pids:
        try:
            process = psutil.Process(pid)
            children = process.children(recursive=True)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        for item in (process, *children):
            found.setdefault(item.pid, item)
    return list(found.values())


@dataclass
class Sample:
    """One interval (start, end] and its values: levels (time averages) or counts (events in the interval)."""

    start: float
    end: float
    values: list[float]


class SampleWindow:
    """Per-tick samples; averages over the last N seconds weigh each sample by its overlap with the window.

    As Knative's buckets: before the first sample is a window old the average is over the time covered
    so far; a window with no sample at all has no value (None).
    """

    def __init__(self, kinds: tuple[str, ...], keep_s: float) -> None:
        self.kinds = kinds  # "level" or "count" per value
        self.keep_s = keep_s
        self.samples: deque[Sample] = deque()

    def add(self, now: float, default_interval: float, values: tuple[float, ...]) -> None:
        """A sample ending at ``now`` that started where the previous one ended (or ``default_interval`` ago)."""
        last = self.samples[-1] if self.samples else None
        if last is not None and now <= last.end:  # no time passed: counts add up, levels keep their time weight
            for index, kind in enumerate(self.kinds):
                if kind == "count":
                    last.values[index] += values[index]
            return
        start = last.end if last is not None else now - default_interval
        self.samples.append(Sample(start, now, list(values)))
        while self.samples and self.samples[0].end <= now - self.keep_s:
            self.samples.popleft()

    def average(self, now: float, window_s: float, index: int) -> float | None:
        """A level's time-weighted mean, or a count's rate per second, over (now - window_s, now]."""
        covered = total = 0.0
        low = now - window_s
        for sample in reversed(self.samples):
            if sample.end <= low:
                break
            overlap = min(sample.end, now) - max(sample.start, low)
            if overlap <= 0:
                continue
            covered += overlap
            value = sample.values[index]
            if self.kinds[index] == "count":
                total += value * overlap / (sample.end - sample.start)
            else:
                total += value * overlap
        return total / covered if covered > 0 else None

    @property
    def last_end(self) -> float | None:
        return self.samples[-1].end if self.samples else None
