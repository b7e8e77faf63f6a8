"""One revision's autoscaler: Knative's KPA for concurrency and rps, HPA-style for cpu and memory.

The controller calls ``record`` (and ``record_usage`` for cpu/memory) every tick, then ``decide``.
Times are seconds on any monotonic clock (tests pass a fake one). See docs/deployments.md, Autoscaling.

KPA (Knative serving ``pkg/autoscaler/scaling/autoscaler.go`` and the KPA reconciler's scaler):

- stable and panic values: time-weighted averages over the stable window and the panic window;
- ``desired_stable = ceil(stable / (target * utilisation))``, same for panic; both clamped to
  ``[floor(ready / max_scale_down_rate), ceil(max_scale_up_rate * ready)]`` (ready counted as >= 1);
- panic starts when ``ceil(panic / target) / max(ready, 1) >= panic_threshold``; while it lasts the count
  is the largest of the stable and panic counts and never goes down; it ends once the threshold has not
  been crossed for a stable window;
- scale-down delay: the largest count decided within the delay;
- bounds: ``[minReplicas, maxReplicas]``, and the initial scale until that many replicas were ready once;
- zero: only with ``minReplicas: 0``, after no request for the stable window plus
  ``max(scale-to-zero grace, pod retention)``; before that one replica stays (even if none is ready);
- at zero, any request seen since the last decision (the activator holds it) asks for at least one.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from shipyard.control.autoscaler.config import MIB, AutoscaleConfig, format_duration
from shipyard.control.autoscaler.hpa import ceil, hpa_replicas
from shipyard.control.autoscaler.metrics import SampleWindow


@dataclass(frozen=True)
class Decision:
    """What ``Autoscaler.decide`` wants now, and why."""

    desired: int  # replicas wanted now (already clamped to min/max and rates)
    ready: int  # replicas ready when decided
    metric: str
    value: float | None  # the observed (stable or panic) value used, e.g. avg concurrency 37.5
    panic: bool
    reason: str  # one line: "concurrency 37.5 over 60s / target 70 per replica -> 1"


class Autoscaler:
    """One per revision. Knative KPA for concurrency/rps; HPA-style for cpu/memory. Use from one thread."""

    def __init__(self, config: AutoscaleConfig) -> None:
        self.config = config
        keep = self._keep(config)
        self._load = SampleWindow(("level", "count"), keep)  # concurrency, requests
        self._usage = SampleWindow(("level", "level"), keep)  # cpu cores, memory bytes (summed over replicas)
        self._panic_time: float | None = None  # Knative's panicTime: the last tick over the panic threshold
        self._max_panic = 0  # the largest count decided in this panic
        self._delay: deque[tuple[float, int]] = deque()  # (time, count) within the scale-down delay
        self._last_activity: float | None = None
        self._usage_baseline: float | None = None  # the first record_usage
        self._demand = False  # a request or one in flight since the last decision
        self._started: float | None = None
        self._initialized = config.initial_replicas <= 0
        self._last: Decision | None = None

    @staticmethod
    def _keep(config: AutoscaleConfig) -> float:
        return max(config.stable_window_s, config.panic_window_s) + 2 * config.tick_s

    def reconfigure(self, config: AutoscaleConfig) -> None:
        """Apply changed knobs (annotations edited in place) and keep the samples and the panic state."""
        self.config = config
        self._load.keep_s = self._usage.keep_s = self._keep(config)

    # -- input ---------------------------------------------------------------------------------------
    def record(self, now: float, concurrency: float, requests: int) -> None:
        """The average in flight since the previous call and the requests that arrived since then."""
        if concurrency < 0 or requests < 0:
            raise ValueError(f"concurrency and requests must not be negative (got {concurrency}, {requests})")
        if self._started is None:
            self._started = now
        self._load.add(now, self.config.tick_s, (float(concurrency), float(requests)))
        if concurrency > 0 or requests > 0:
            self._last_activity = now if self._last_activity is None else max(self._last_activity, now)
            self._demand = True

    def record_usage(self, now: float, cpu_cores: float, memory_bytes: float) -> None:
        """cpu cores and resident bytes, summed over the revision's ready replicas (ProcessUsage.sample).

        The first call is a baseline and is not averaged: ProcessUsage reports 0 cores for processes
        it sees for the first time, and a decision on it would scale down for nothing.
        """
        if cpu_cores < 0 or memory_bytes < 0:
            raise ValueError(f"usage must not be negative (got {cpu_cores} cores, {memory_bytes} bytes)")
        if self._started is None:
            self._started = now
        if self._usage_baseline is None:
            self._usage_baseline = now
            return
        interval = now - self._usage_baseline if not self._usage.samples else self.config.tick_s
        self._usage.add(now, interval if interval > 0 else self.config.tick_s, (float(cpu_cores), float(memory_bytes)))

    def last_request_at(self) -> float | None:
        """The last tick that saw a request arrive or in flight (None: never)."""
        return self._last_activity

    @property
    def panicking(self) -> bool:
        return self._panic_time is not None

    @property
    def last_decision(self) -> Decision | None:
        return self._last

    # -- decision ------------------------------------------------------------------------------------
    def decide(self, now: float, ready: int) -> Decision:
        """The replicas wanted now with ``ready`` replicas ready (see the module docstring)."""
        if self._started is None:
            self._started = now
        config = self.config
        ready = max(0, int(ready))
        if not self._initialized and ready >= config.initial_replicas:
            self._initialized = True
        if config.kpa:
            decision = self._kpa(now, ready)
        else:
            decision = self._hpa(now, ready)
        self._demand = False
        self._last = decision
        return decision

    def _bounds(self, count: int) -> tuple[int, str]:
        config = self.config
        low = config.min_replicas if self._initialized else max(config.min_replicas, config.initial_replicas)
        if count < low:
            what = "minReplicas" if low == config.min_replicas else "initial scale"
            return low, f"; {what} {low}"
        if config.max_replicas is not None and count > config.max_replicas:
            return config.max_replicas, f"; maxReplicas {config.max_replicas}"
        return count, ""

    def _no_data(self, ready: int, metric: str) -> Decision:
        previous = self._last.desired if self._last is not None else self.config.initial_replicas
        desired, note = self._bounds(previous)
        if ready == 0 and self._demand:
            desired = max(1, desired)
        return Decision(desired, ready, metric, None, False, f"no {metric} samples yet -> {desired}{note}")

    def _delayed(self, now: float, count: int) -> tuple[int, str]:
        """Knative's scale-down delay: the largest count decided within the delay."""
        delay = self.config.scale_down_delay_s
        if delay <= 0:
            return count, ""
        self._delay.append((now, count))
        while self._delay and self._delay[0][0] <= now - delay:
            self._delay.popleft()
        held = max(value for _, value in self._delay)
        shown = held > max(count, self.config.min_replicas)
        note = f"; scale-down delay {format_duration(delay)} holds {held}" if shown else ""
        return held, note

    def _rates(self, ready: int) -> tuple[int, int]:
        """(most it may scale down to, most it may scale up to) relative to the ready replicas."""
        ready_f = max(1.0, float(ready))
        return (math.floor(ready_f / self.config.max_scale_down_rate),
                math.ceil(self.config.max_scale_up_rate * ready_f))

    def _kpa(self, now: float, ready: int) -> Decision:
        config = self.config
        index = 0 if config.metric == "concurrency" else 1
        stable = self._load.average(now, config.stable_window_s, index)
        if stable is None:
            return self._no_data(ready, config.metric)
        panic_value = self._load.average(now, config.panic_window_s, index)
        if panic_value is None:
            panic_value = stable
        target = config.target_value
        lowest, highest = self._rates(ready)
        stable_count, panic_count = ceil(stable / target), ceil(panic_value / target)
        desired_stable = min(max(stable_count, lowest), highest)
        desired_panic = min(max(panic_count, lowest), highest)
        over = panic_count / max(1.0, float(ready)) >= config.panic_threshold
        if over:
            self._panic_time = now
        elif self._panic_time is not None and self._panic_time + config.stable_window_s < now:
            self._panic_time, self._max_panic = None, 0
        desired, notes = desired_stable, ""
        if desired_stable != stable_count:
            notes += "; max scale-up rate" if desired_stable < stable_count else "; max scale-down rate"
        panic = self._panic_time is not None
        if panic:
            desired = max(desired, desired_panic)
            if desired > self._max_panic:
                self._max_panic = desired
            elif desired < self._max_panic:
                notes += f"; no scale-down in panic (holds {self._max_panic})"
            desired = self._max_panic
        desired, note = self._delayed(now, desired)
        notes += note
        desired, note = self._bounds(desired)
        notes += note
        was_zero = self._last.desired == 0 if self._last is not None else config.initial_replicas == 0
        if desired == 0 and not was_zero:  # going to zero (from any ready count): only once idle long enough
            idle_since = self._last_activity if self._last_activity is not None else self._started
            wait = max(config.scale_to_zero_grace_s, config.scale_to_zero_retention_s)
            zero_at = (idle_since if idle_since is not None else now) + config.stable_window_s + wait
            if now < zero_at:
                desired = 1
                notes += f"; scale to zero in {format_duration(round(zero_at - now, 3))}"
            else:
                notes += "; scale to zero"
        if ready == 0 and self._demand and desired < 1:
            desired = 1
            notes += "; activation"
        value = panic_value if panic else stable
        window = config.panic_window_s if panic else config.stable_window_s
        unit = "" if config.metric == "concurrency" else " req/s"
        reason = (f"{config.metric} {_num(value)}{unit} over {format_duration(window)} / target {_num(target)} per "
                  f"replica -> {desired}{' (panic)' if panic else ''}{notes}")
        return Decision(desired, ready, config.metric, value, panic, reason)

    def _hpa(self, now: float, ready: int) -> Decision:
        config = self.config
        index = 0 if config.metric == "cpu" else 1
        usage = self._usage.average(now, config.stable_window_s, index)
        if usage is None:
            return self._no_data(ready, config.metric)
        if ready == 0:  # replicas starting: keep what was decided
            desired, note = self._bounds(max(1, self._last.desired if self._last else config.initial_replicas))
            return Decision(desired, ready, config.metric, None, False,
                            f"{config.metric}: no replica ready -> {desired}{note}")
        target = config.target_value
        count, ratio = hpa_replicas(ready, usage / ready, target)
        lowest, highest = self._rates(ready)
        desired, notes = min(max(count, lowest), highest), ""
        if desired != count:
            notes += "; max scale-up rate" if desired < count else "; max scale-down rate"
        if count == ready and ceil(ready * ratio) != ready:
            notes += "; within the 10% tolerance"
        desired, note = self._delayed(now, desired)
        notes += note
        desired, note = self._bounds(max(1, desired))
        notes += note
        per_replica = _in_target_units(config, usage / ready)
        reason = (f"{config.metric} {_num(per_replica)}{_unit(config)} per replica over "
                  f"{format_duration(config.stable_window_s)} / target {_num(config.target)}{_unit(config)} -> "
                  f"{desired}{notes}")
        return Decision(desired, ready, config.metric, per_replica, False, reason)


def _in_target_units(config: AutoscaleConfig, usage: float) -> float:
    """cores or bytes per replica as the target reads: a percentage of the request (or of a core), or MiB."""
    if config.metric == "cpu":
        return usage / config.requests.get("cpu", 1.0) * 100.0
    if "memory" in config.requests:
        return usage / config.requests["memory"] * 100.0
    return usage / MIB


def _unit(config: AutoscaleConfig) -> str:
    return " MiB" if config.metric == "memory" and "memory" not in config.requests else "%"


def _num(value: float) -> str:
    return f"{round(value, 3):g}"
