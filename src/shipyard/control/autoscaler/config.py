"""An InferenceService's autoscaling knobs (KServe predictor fields, Knative annotations) as one config.

``autoscale_config(predictor, annotations)`` resolves every knob to a value with Knative's and KServe's
defaults, or raises ``AutoscaleError`` naming the field path; ``config_problems`` lists every problem
(validation reports them all at once). Spec fields win over the equivalent annotations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from shipyard.quantity import QuantityError, parse_duration, parse_quantity

KNATIVE = "autoscaling.knative.dev/"
SHIPYARD = "serving.shipyard.io/"
METRICS = ("concurrency", "rps", "cpu", "memory")
#: scaleTarget defaults per metric (Knative: container-concurrency-target-default 100,
#: requests-per-second-target-default 200; KServe's HPA: 80% cpu / memory utilisation).
DEFAULT_TARGETS = {"concurrency": 100.0, "rps": 200.0, "cpu": 80.0, "memory": 80.0}
#: Knative's TargetMin: a concurrency or rps target never goes below this.
TARGET_MIN = 0.01
HOUR = 3600.0
INT32_MAX = 2**31 - 1
MIB = float(2**20)

#: Knative's annotations Shipyard reads (metadata.annotations of the InferenceService).
KNATIVE_ANNOTATIONS = tuple(KNATIVE + name for name in (
    "target-utilization-percentage", "window", "panic-window-percentage", "panic-threshold-percentage",
    "scale-down-delay", "max-scale-up-rate", "max-scale-down-rate", "initial-scale", "scale-to-zero-grace-period",
    "scale-to-zero-pod-retention-period", "min-scale", "max-scale", "metric", "target"))
#: Shipyard's own autoscaling annotations.
SHIPYARD_ANNOTATIONS = tuple(SHIPYARD + name for name in ("autoscale-tick", "activator-queue", "activator-timeout"))
#: Predictor fields that carry a model container (its resources.requests feed cpu/memory targets).
CONTAINER_FIELDS = ("model", "sklearn", "xgboost", "lightgbm", "onnx", "pytorch", "huggingface")
GPU_RESOURCES = ("nvidia.com/gpu", "gpu")



class AutoscaleError(ValueError):
    """A knob with a bad value; ``path`` names it (``metadata.annotations[autoscaling.knative.dev/window]``)."""

    def __init__(self, path: str, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message
        self.problems = problems or [(path, message)]


@dataclass(frozen=True)
class AutoscaleConfig:
    """Every autoscaling knob of one revision, resolved (see docs/deployments.md, Autoscaling)."""

    metric: str = "concurrency"
    target: float = 100.0
    target_utilization: float = 0.7
    min_replicas: int = 1
    max_replicas: int | None = None
    initial_replicas: int = 1
    stable_window_s: float = 60.0
    panic_window_s: float = 6.0
    panic_threshold: float = 2.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    scale_down_delay_s: float = 0.0
    scale_to_zero_grace_s: float = 30.0
    scale_to_zero_retention_s: float = 0.0
    tick_s: float = 2.0
    activator_queue: int = 100
    activator_timeout_s: float = 60.0
    requests: dict[str, float] = field(default_factory=dict)
    container_concurrency: int = 0

    @property
    def kpa(self) -> bool:
        """True for Knative's KPA (concurrency, rps); False for the HPA-style cpu/memory decision."""
        return self.metric in ("concurrency", "rps")

    @property
    def target_value(self) -> float:
        """The per-replica target in absolute units: requests in flight, req/s, cpu cores or memory bytes."""
        if self.metric in ("concurrency", "rps"):
            return max(TARGET_MIN, self.target * self.target_utilization)
        if self.metric == "cpu":
            return self.target / 100.0 * self.requests.get("cpu", 1.0)
        if "memory" in self.requests:
            return self.target / 100.0 * self.requests["memory"]
        return self.target * MIB

    @property
    def target_unit(self) -> str:
        """How ``target`` reads: ``in flight``, ``req/s``, ``% of the cpu request``, ``MiB``..."""
        if self.metric == "concurrency":
            return "in flight"
        if self.metric == "rps":
            return "req/s"
        if self.metric == "cpu":
            return "% of the cpu request" if "cpu" in self.requests else "% of one core"
        return "% of the memory request" if "memory" in self.requests else "MiB"

    @property
    def can_scale_to_zero(self) -> bool:
        return self.min_replicas == 0


def autoscale_config(predictor: Any, annotations: Any) -> AutoscaleConfig:
    """The resolved config of a predictor and its InferenceService's annotations; AutoscaleError if any is bad."""
    reader = _Reader(predictor, annotations)
    config = reader.read()
    if reader.problems:
        path, message = reader.problems[0]
        raise AutoscaleError(path, message, reader.problems)
    return config


def config_problems(predictor: Any, annotations: Any) -> list[tuple[str, str]]:
    """Every problem with the autoscaling knobs, as (path, message); empty when the config is valid."""
    reader = _Reader(predictor, annotations)
    reader.read()
    return reader.problems


def format_duration(seconds: float) -> str:
    """``0.5`` -> ``500ms``, ``60`` -> ``60s``, ``3600`` -> ``1h`` (for reasons and messages)."""
    if seconds < 1 and seconds != 0:
        return f"{seconds * 1000:g}ms"
    if seconds >= HOUR and seconds % HOUR == 0:
        return f"{seconds / HOUR:g}h"
    return f"{seconds:g}s"


# -- reading -----------------------------------------------------------------------------------------
class _Reader:
    """Reads each knob once, records every problem with its path, and falls back to the default."""

    def __init__(self, predictor: Any, annotations: Any) -> None:
        self.predictor = predictor if isinstance(predictor, dict) else {}
        self.annotations = annotations if isinstance(annotations, dict) else {}
        self.problems: list[tuple[str, str]] = []

    # paths
    @staticmethod
    def spec_path(name: str) -> str:
        return f"spec.predictor.{name}"

    @staticmethod
    def annotation_path(key: str) -> str:
        return f"metadata.annotations[{key}]"

    def problem(self, path: str, message: str) -> None:
        if (path, message) not in self.problems:
            self.problems.append((path, message))

    # typed readers: (value, path) or (default, None) when absent or bad
    def integer(self, value: Any, path: str, low: int) -> int | None:
        number: Any = value
        if isinstance(value, str):
            try:
                number = int(value.strip())
            except ValueError:
                self.problem(path, f"{value!r} is not an integer")
                return None
        if isinstance(number, float) and number.is_integer():
            number = int(number)
        if isinstance(number, bool) or not isinstance(number, int):
            self.problem(path, f"{value!r} is not an integer")
            return None
        if number < low:
            self.problem(path, f"{number} is less than the minimum of {low}")
            return None
        if number > INT32_MAX:
            self.problem(path, f"{number} is greater than the maximum of {INT32_MAX}")
            return None
        return number

    def number(self, value: Any, path: str, low: float, high: float = math.inf, *, low_open: bool = False,
               unit: str = "") -> float | None:
        number: Any = value
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                self.problem(path, f"{value!r} is not a number")
                return None
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            self.problem(path, f"{value!r} is not a number")
            return None
        number = float(number)
        too_low = number <= low if low_open else number < low
        if too_low or number > high:
            if high == math.inf:
                bound = f"greater than {low:g}{unit}" if low_open else f"at least {low:g}{unit}"
            else:
                bound = f"between {low:g}{unit} and {high:g}{unit}"
            self.problem(path, f"{value!r} is out of range; expected {bound}")
            return None
        return number

    def duration(self, value: Any, path: str, low: float, high: float = math.inf, *, low_open: bool = False) -> \
            float | None:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.problem(path, str(exc))
            return None
        too_low = seconds <= low if low_open else seconds < low
        if too_low or seconds > high:
            lowest = "greater than" if low_open else "at least"
            bound = (f"{lowest} {format_duration(low)}" if high == math.inf
                     else f"{lowest} {format_duration(low)} and at most {format_duration(high)}")
            self.problem(path, f"{value!r} is out of range; expected {bound}")
            return None
        return seconds

    def annotation(self, name: str) -> tuple[Any, str] | None:
        key = (KNATIVE + name) if (KNATIVE + name) in KNATIVE_ANNOTATIONS else SHIPYARD + name
        if key not in self.annotations:
            return None
        return self.annotations[key], self.annotation_path(key)

    def spec_or_annotation(self, spec_name: str, annotation_name: str) -> tuple[Any, str, str | None]:
        """(value, path, the annotation's path when the spec field overrides it) of the first one set."""
        found = self.annotation(annotation_name)
        if spec_name in self.predictor and self.predictor[spec_name] is not None:
            return self.predictor[spec_name], self.spec_path(spec_name), found[1] if found else None
        if found:
            return found[0], found[1], None
        return None, "", None

    # the config
    def read(self) -> AutoscaleConfig:
        """Every knob, one after the other, in the order docs/deployments.md lists them."""
        config: dict[str, Any] = {}
        config["metric"] = metric = self.read_metric()
        config["requests"] = self.read_requests()
        cc = self.predictor.get("containerConcurrency")
        cc_value = self.integer(cc, self.spec_path("containerConcurrency"), 0) if cc is not None else 0
        config["container_concurrency"] = cc_value or 0

        # replicas
        low_value, low_path, shadowed = self.spec_or_annotation("minReplicas", "min-scale")
        if shadowed:
            self.integer(self.annotations[KNATIVE + "min-scale"], shadowed, 0)
        low = self.integer(low_value, low_path, 0) if low_path else None
        high_value, high_path, shadowed = self.spec_or_annotation("maxReplicas", "max-scale")
        if shadowed:
            self.integer(self.annotations[KNATIVE + "max-scale"], shadowed, 0)
        high = self.integer(high_value, high_path, 0) if high_path else None
        min_replicas = 1 if low is None else low
        max_replicas = high or None  # 0 or absent: no limit
        if max_replicas is not None and min_replicas > max_replicas:
            self.problem(high_path, f"{max_replicas} is less than minReplicas ({min_replicas})")
            max_replicas = None
        if metric in ("cpu", "memory") and low == 0:
            self.problem(low_path, f"0 (scale to zero) needs scaleMetric concurrency or rps: {metric} is scaled "
                         f"HPA-style, which keeps at least one replica (set minReplicas to 1 or more, or scale "
                         f"on concurrency)")
        if metric in ("cpu", "memory"):
            min_replicas = max(1, min_replicas)
        config["min_replicas"], config["max_replicas"] = min_replicas, max_replicas

        initial = self.annotation("initial-scale")
        initial_value = self.integer(initial[0], initial[1], 0) if initial else None
        if initial and initial_value == 0 and min_replicas > 0:
            self.problem(initial[1], "0 needs minReplicas 0 (scale to zero, with scaleMetric concurrency or rps)")
            initial_value = None
        initial_replicas = 1 if initial_value is None else initial_value
        initial_replicas = max(min_replicas, initial_replicas)
        if max_replicas is not None:
            initial_replicas = min(max_replicas, initial_replicas)
        config["initial_replicas"] = initial_replicas

        # target
        config["target"] = self.read_target(metric, config["requests"], config["container_concurrency"])
        utilization = self.annotation("target-utilization-percentage")
        value = self.number(utilization[0], utilization[1], 1, 100) if utilization else None
        config["target_utilization"] = 0.7 if value is None else value / 100.0

        # timing
        tick = self.annotation("autoscale-tick")
        tick_s = self.duration(tick[0], tick[1], 0.01, 60) if tick else None
        config["tick_s"] = tick_s = 2.0 if tick_s is None else tick_s
        window = self.annotation("window")
        stable = self.duration(window[0], window[1], 0, HOUR, low_open=True) if window else None
        if window and stable is not None and stable < tick_s:
            self.problem(window[1], f"{window[0]!r} is shorter than the autoscale tick ({format_duration(tick_s)}); "
                         "the stable window needs at least one sample")
            stable = None
        config["stable_window_s"] = stable = 60.0 if stable is None else stable
        percent = self.annotation("panic-window-percentage")
        panic_percent = self.number(percent[0], percent[1], 1, 100) if percent else None
        config["panic_window_s"] = stable * (10.0 if panic_percent is None else panic_percent) / 100.0
        threshold = self.annotation("panic-threshold-percentage")
        threshold_value = self.number(threshold[0], threshold[1], 110, 1000) if threshold else None
        config["panic_threshold"] = 2.0 if threshold_value is None else threshold_value / 100.0
        up = self.annotation("max-scale-up-rate")
        up_value = self.number(up[0], up[1], 1, low_open=True) if up else None
        config["max_scale_up_rate"] = 1000.0 if up_value is None else up_value
        down = self.annotation("max-scale-down-rate")
        down_value = self.number(down[0], down[1], 1, low_open=True) if down else None
        config["max_scale_down_rate"] = 2.0 if down_value is None else down_value
        delay = self.annotation("scale-down-delay")
        delay_value = self.duration(delay[0], delay[1], 0, HOUR) if delay else None
        config["scale_down_delay_s"] = 0.0 if delay_value is None else delay_value
        grace = self.annotation("scale-to-zero-grace-period")
        grace_value = self.duration(grace[0], grace[1], 0, HOUR) if grace else None
        config["scale_to_zero_grace_s"] = 30.0 if grace_value is None else grace_value
        retention = self.annotation("scale-to-zero-pod-retention-period")
        retention_value = self.duration(retention[0], retention[1], 0, HOUR) if retention else None
        config["scale_to_zero_retention_s"] = 0.0 if retention_value is None else retention_value

        # the activator
        queue = self.annotation("activator-queue")
        queue_value = self.integer(queue[0], queue[1], 1) if queue else None
        config["activator_queue"] = 100 if queue_value is None else queue_value
        timeout = self.annotation("activator-timeout")
        timeout_value = self.duration(timeout[0], timeout[1], 0, HOUR, low_open=True) if timeout else None
        config["activator_timeout_s"] = 60.0 if timeout_value is None else timeout_value
        return AutoscaleConfig(**config)

    def read_metric(self) -> str:
        value, path, shadowed = self.spec_or_annotation("scaleMetric", "metric")
        if shadowed:
            self.check_metric(self.annotations[KNATIVE + "metric"], shadowed)
        if not path:
            return "concurrency"
        return self.check_metric(value, path) or "concurrency"

    def check_metric(self, value: Any, path: str) -> str | None:
        if isinstance(value, str) and value in METRICS:
            return value
        hint = f"; did you mean '{value.lower()}'?" if isinstance(value, str) and value.lower() in METRICS else ""
        self.problem(path, f"{value!r} is not a scale metric; use one of {', '.join(METRICS)}{hint}")
        return None

    def read_target(self, metric: str, requests: dict[str, float], cc: int) -> float:
        value, path, shadowed = self.spec_or_annotation("scaleTarget", "target")
        if shadowed:
            self.number(self.annotations[KNATIVE + "target"], shadowed, 0, low_open=True)
        target = self.number(value, path, 0, low_open=True) if path else None
        if metric == "concurrency" and cc > 0:
            # Knative: the hard limit is the target when none is set, and caps a larger soft target
            return float(cc) if target is None else min(target, float(cc))
        if metric == "memory" and "memory" not in requests and not path:
            self.problem(self.spec_path("scaleTarget"), "required with scaleMetric memory when the model container "
                         "has no resources.requests.memory: set MiB per replica, or set a memory request "
                         "(the target is then a percentage of it)")
        return DEFAULT_TARGETS[metric] if target is None else target

    def read_requests(self) -> dict[str, float]:
        """The model container's resources.requests (limits stand in for missing requests, as in Kubernetes)."""
        form = next((name for name in CONTAINER_FIELDS if isinstance(self.predictor.get(name), dict)), None)
        if form is None:
            return {}
        resources = self.predictor[form].get("resources")
        if not isinstance(resources, dict):
            return {}
        found: dict[str, float] = {}
        for section in ("limits", "requests"):  # requests override limits
            values = resources.get(section)
            if not isinstance(values, dict):
                continue
            for key, value in values.items():
                name = "gpu" if key in GPU_RESOURCES else key
                if name not in ("cpu", "memory", "gpu"):
                    continue
                path = f"spec.predictor.{form}.resources.{section}.{key}"
                try:
                    amount = parse_quantity(value, path)
                except QuantityError as exc:
                    self.problem(exc.path, exc.message)
                    continue
                if amount <= 0:
                    self.problem(path, f"{value!r} must be greater than 0")
                    continue
                found[name] = amount
        return found
