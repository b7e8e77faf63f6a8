"""The autoscaler with a fake clock: Knative's KPA (stable/panic windows, rates, delay, scale to zero,
activation), the HPA-style cpu/memory decision, the config knobs by field path, and the meters."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from shipyard.control.autoscaler import (AutoscaleConfig, AutoscaleError, Autoscaler, ConcurrencyMeter, ProcessUsage,
                                         autoscale_config, config_problems, parse_duration)
from shipyard.control.autoscaler.hpa import hpa_replicas
from shipyard.control.autoscaler.metrics import SampleWindow

K = "autoscaling.knative.dev/"
S = "serving.shipyard.io/"


def config(predictor: dict | None = None, **annotations: str) -> AutoscaleConfig:
    """A config from spec.predictor fields and annotations given as keyword names (window="6s", tick="1s")."""
    keys = {"tick": S + "autoscale-tick", "queue": S + "activator-queue", "timeout": S + "activator-timeout"}
    resolved = {keys.get(name, K + name.replace("_", "-")): value for name, value in annotations.items()}
    return autoscale_config(predictor or {}, resolved)


class Sim:
    """Drives an Autoscaler tick by tick; replicas become ready at once unless ``instant`` is False."""

    def __init__(self, cfg: AutoscaleConfig, ready: int | None = None, instant: bool = True) -> None:
        self.scaler = Autoscaler(cfg)
        self.cfg = cfg
        self.now = 0.0
        self.ready = cfg.initial_replicas if ready is None else ready
        self.instant = instant
        self.history: list = []

    def tick(self, concurrency: float = 0.0, requests: int | None = None):
        self.now = round(self.now + self.cfg.tick_s, 6)
        if requests is None:  # one request per tick per unit of concurrency, roughly
            requests = math.ceil(concurrency)
        self.scaler.record(self.now, concurrency, requests)
        decision = self.scaler.decide(self.now, self.ready)
        if self.instant:
            self.ready = decision.desired
        self.history.append((self.now, decision))
        return decision

    def run(self, seconds: float, concurrency: float = 0.0, requests: int | None = None):
        decision = None
        for _ in range(round(seconds / self.cfg.tick_s)):
            decision = self.tick(concurrency, requests)
        return decision


# -- durations and the config ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, seconds", [("500ms", 0.5), ("6s", 6.0), ("1m", 60.0), ("1h", 3600.0),
                                           ("1m30s", 90.0), ("1.5h", 5400.0), (5, 5.0), (0.25, 0.25), ("7", 7.0),
                                           ("0s", 0.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["soon", "5x", "-1s", "", "1m soon", True, None, [1], "nan"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_defaults_are_knatives_and_kserves():
    cfg = autoscale_config({}, {})
    assert cfg == AutoscaleConfig(
        metric="concurrency", target=100.0, target_utilization=0.7, min_replicas=1, max_replicas=None,
        initial_replicas=1, stable_window_s=60.0, panic_window_s=6.0, panic_threshold=2.0, max_scale_up_rate=1000.0,
        max_scale_down_rate=2.0, scale_down_delay_s=0.0, scale_to_zero_grace_s=30.0, scale_to_zero_retention_s=0.0,
        tick_s=2.0, activator_queue=100, activator_timeout_s=60.0, requests={})
    assert cfg.target_value == pytest.approx(70.0)
    assert autoscale_config({"scaleMetric": "rps"}, {}).target_value == pytest.approx(140.0)
    assert autoscale_config({"scaleMetric": "cpu"}, {}).target == 80.0
    assert autoscale_config(None, None) == cfg


def test_every_annotation_is_read():
    cfg = config({"minReplicas": 0}, target_utilization_percentage="50", window="2m", panic_window_percentage="25",
                 panic_threshold_percentage="300", scale_down_delay="30s", max_scale_up_rate="4",
                 max_scale_down_rate="3.5", initial_scale="0", scale_to_zero_grace_period="10s",
                 scale_to_zero_pod_retention_period="1m", max_scale="9", metric="rps", target="20", tick="500ms",
                 queue="7", timeout="2.5s")
    assert (cfg.metric, cfg.target, cfg.target_utilization, cfg.min_replicas, cfg.max_replicas) == \
        ("rps", 20.0, 0.5, 0, 9)
    assert (cfg.stable_window_s, cfg.panic_window_s, cfg.panic_threshold) == (120.0, 30.0, 3.0)
    assert (cfg.scale_down_delay_s, cfg.max_scale_up_rate, cfg.max_scale_down_rate) == (30.0, 4.0, 3.5)
    assert (cfg.initial_replicas, cfg.scale_to_zero_grace_s, cfg.scale_to_zero_retention_s) == (0, 10.0, 60.0)
    assert (cfg.tick_s, cfg.activator_queue, cfg.activator_timeout_s) == (0.5, 7, 2.5)
    assert cfg.target_value == pytest.approx(10.0)


def test_spec_fields_win_over_annotations():
    cfg = config({"minReplicas": 2, "maxReplicas": 6, "scaleMetric": "rps", "scaleTarget": 50},
                 min_scale="1", max_scale="3", metric="concurrency", target="5")
    assert (cfg.min_replicas, cfg.max_replicas, cfg.metric, cfg.target) == (2, 6, "rps", 50.0)
    assert config(min_scale="2", max_scale="0").min_replicas == 2
    assert config(max_scale="0").max_replicas is None
    assert config({"maxReplicas": 0}).max_replicas is None


def test_container_concurrency_is_the_target_and_caps_a_larger_one():
    assert config({"containerConcurrency": 10}).target == 10.0
    assert config({"containerConcurrency": 10}).target_value == pytest.approx(7.0)
    assert config({"containerConcurrency": 10, "scaleTarget": 50}).target == 10.0
    assert config({"containerConcurrency": 10, "scaleTarget": 4}).target == 4.0
    assert config({"containerConcurrency": 10, "scaleMetric": "rps"}).target == 200.0
    assert config({"containerConcurrency": 0}).target == 100.0


def test_initial_scale_is_kept_within_the_bounds():
    assert config({"minReplicas": 3}).initial_replicas == 3
    assert config({"maxReplicas": 2}, initial_scale="5").initial_replicas == 2
    assert config({"minReplicas": 0}, initial_scale="0").initial_replicas == 0


def test_requests_of_the_model_container_set_cpu_and_memory_targets():
    model = {"modelFormat": {"name": "sklearn"}, "storageUri": "/m",
             "resources": {"limits": {"cpu": "2", "memory": "2Gi", "nvidia.com/gpu": "1"},
                           "requests": {"cpu": "500m"}}}
    cfg = config({"model": model, "scaleMetric": "cpu", "scaleTarget": 80})
    assert cfg.requests == {"cpu": 0.5, "memory": 2.0 * 2**30, "gpu": 1.0}
    assert cfg.target_value == pytest.approx(0.4)  # cores per replica
    assert cfg.target_unit == "% of the cpu request"
    memory = config({"model": model, "scaleMetric": "memory", "scaleTarget": 50})
    assert memory.target_value == pytest.approx(2**30)
    plain = {"sklearn": {"storageUri": "/m"}}
    assert config({**plain, "scaleMetric": "cpu"}).target_value == pytest.approx(0.8)  # of one core
    assert config({**plain, "scaleMetric": "memory", "scaleTarget": 300}).target_value == 300 * 2**20


@pytest.mark.parametrize("predictor, annotations, path, message", [
    ({"minReplicas": -1}, {}, "spec.predictor.minReplicas", "-1 is less than the minimum of 0"),
    ({"minReplicas": "two"}, {}, "spec.predictor.minReplicas", "'two' is not an integer"),
    ({"maxReplicas": 1.5}, {}, "spec.predictor.maxReplicas", "1.5 is not an integer"),
    ({"minReplicas": 3, "maxReplicas": 2}, {}, "spec.predictor.maxReplicas", "2 is less than minReplicas (3)"),
    ({"minReplicas": 3}, {K + "max-scale": "2"}, f"metadata.annotations[{K}max-scale]", "2 is less than minReplicas"),
    ({}, {K + "min-scale": "-2"}, f"metadata.annotations[{K}min-scale]", "-2 is less than the minimum of 0"),
    ({"minReplicas": 1}, {K + "min-scale": "x"}, f"metadata.annotations[{K}min-scale]", "'x' is not an integer"),
    ({"scaleMetric": "latency"}, {}, "spec.predictor.scaleMetric", "'latency' is not a scale metric"),
    ({}, {K + "metric": "CPU"}, f"metadata.annotations[{K}metric]", "did you mean 'cpu'?"),
    ({"scaleTarget": 0}, {}, "spec.predictor.scaleTarget", "0 is out of range; expected greater than 0"),
    ({}, {K + "target": "-3"}, f"metadata.annotations[{K}target]", "expected greater than 0"),
    ({}, {K + "target": "inf"}, f"metadata.annotations[{K}target]", "'inf' is not a number"),
    ({}, {K + "max-scale": "3000000000"}, f"metadata.annotations[{K}max-scale]",
     "3000000000 is greater than the maximum of 2147483647"),
    ({"containerConcurrency": -1}, {}, "spec.predictor.containerConcurrency", "-1 is less than the minimum of 0"),
    ({}, {K + "target-utilization-percentage": "0"}, f"metadata.annotations[{K}target-utilization-percentage]",
     "expected between 1 and 100"),
    ({}, {K + "target-utilization-percentage": "lots"}, f"metadata.annotations[{K}target-utilization-percentage]",
     "'lots' is not a number"),
    ({}, {K + "window": "2h"}, f"metadata.annotations[{K}window]", "at most 1h"),
    ({}, {K + "window": "1s"}, f"metadata.annotations[{K}window]", "shorter than the autoscale tick (2s)"),
    ({}, {K + "window": "0s"}, f"metadata.annotations[{K}window]", "expected greater than 0s"),
    ({}, {K + "panic-window-percentage": "0.5"}, f"metadata.annotations[{K}panic-window-percentage]",
     "expected between 1 and 100"),
    ({}, {K + "panic-threshold-percentage": "100"}, f"metadata.annotations[{K}panic-threshold-percentage]",
     "expected between 110 and 1000"),
    ({}, {K + "scale-down-delay": "-5s"}, f"metadata.annotations[{K}scale-down-delay]", "is negative"),
    ({}, {K + "scale-down-delay": "2h"}, f"metadata.annotations[{K}scale-down-delay]", "at most 1h"),
    ({}, {K + "max-scale-up-rate": "1"}, f"metadata.annotations[{K}max-scale-up-rate]", "expected greater than 1"),
    ({}, {K + "max-scale-down-rate": "0.5"}, f"metadata.annotations[{K}max-scale-down-rate]",
     "expected greater than 1"),
    ({}, {K + "initial-scale": "1.5"}, f"metadata.annotations[{K}initial-scale]", "'1.5' is not an integer"),
    ({}, {K + "initial-scale": "0"}, f"metadata.annotations[{K}initial-scale]", "0 needs minReplicas 0"),
    ({}, {K + "scale-to-zero-grace-period": "forever"}, f"metadata.annotations[{K}scale-to-zero-grace-period]",
     "'forever' is not a duration"),
    ({}, {K + "scale-to-zero-pod-retention-period": "-1m"},
     f"metadata.annotations[{K}scale-to-zero-pod-retention-period]", "is negative"),
    ({}, {S + "autoscale-tick": "1ms"}, f"metadata.annotations[{S}autoscale-tick]", "at least 10ms"),
    ({}, {S + "activator-queue": "0"}, f"metadata.annotations[{S}activator-queue]", "less than the minimum of 1"),
    ({}, {S + "activator-timeout": "0s"}, f"metadata.annotations[{S}activator-timeout]", "greater than 0s"),
    ({"minReplicas": 0, "scaleMetric": "cpu"}, {}, "spec.predictor.minReplicas",
     "0 (scale to zero) needs scaleMetric concurrency or rps"),
    ({"scaleMetric": "memory"}, {K + "min-scale": "0"}, f"metadata.annotations[{K}min-scale]",
     "needs scaleMetric concurrency or rps"),
    ({"scaleMetric": "memory"}, {}, "spec.predictor.scaleTarget", "required with scaleMetric memory"),
    ({"model": {"resources": {"requests": {"cpu": "lots"}}}}, {}, "spec.predictor.model.resources.requests.cpu",
     "expected a quantity"),
    ({"sklearn": {"resources": {"limits": {"memory": "0"}}}}, {}, "spec.predictor.sklearn.resources.limits.memory",
     "must be greater than 0"),
])
def test_every_bad_knob_is_refused_with_its_path(predictor, annotations, path, message):
    problems = dict(config_problems(predictor, annotations))
    assert path in problems, problems
    assert message in problems[path]
    with pytest.raises(AutoscaleError) as caught:
        autoscale_config(predictor, annotations)
    assert (caught.value.path, caught.value.message) == (path, problems[path])
    assert str(caught.value) == f"{path}: {problems[path]}"


def test_all_problems_come_at_once_and_values_that_are_fine_give_none():
    problems = config_problems({"minReplicas": -1, "scaleMetric": "x"},
                               {K + "window": "x", K + "panic-threshold-percentage": "1"})
    assert [path for path, _ in problems] == [
        "spec.predictor.scaleMetric", "spec.predictor.minReplicas", f"metadata.annotations[{K}window]",
        f"metadata.annotations[{K}panic-threshold-percentage]"]
    with pytest.raises(AutoscaleError) as caught:
        autoscale_config({"minReplicas": -1, "scaleMetric": "x"}, {})
    assert len(caught.value.problems) == 2
    assert config_problems({"minReplicas": 0, "maxReplicas": 3, "scaleTarget": 10},
                           {K + "window": "6s", S + "autoscale-tick": 0.2}) == []
    assert config_problems("not a mapping", ["nor", "this"]) == []


# -- KPA ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("concurrency, expected", [(35, 1), (70, 1), (71, 2), (140, 2), (300, 5), (1000, 15)])
def test_steady_concurrency_scales_to_concurrency_over_target_times_utilization(concurrency, expected):
    sim = Sim(config(window="6s", tick="1s"))
    decision = sim.run(30, concurrency)
    assert decision.desired == expected == math.ceil(concurrency / 70)
    assert not decision.panic
    assert decision.value == pytest.approx(concurrency)


def test_reason_names_the_metric_the_window_and_the_target():
    sim = Sim(config())
    decision = sim.run(120, 37.5)
    assert decision.reason == "concurrency 37.5 over 60s / target 70 per replica -> 1"
    assert (decision.desired, decision.ready, decision.metric, decision.value, decision.panic) == \
        (1, 1, "concurrency", 37.5, False)


def test_steady_rps_scales_to_rate_over_target_times_utilization():
    sim = Sim(config({"scaleMetric": "rps", "scaleTarget": 10}, window="6s", tick="1s"))
    decision = sim.run(30, 0.5, requests=33)  # 33 req/s against 7 req/s per replica
    assert decision.desired == 5
    assert decision.value == pytest.approx(33.0)
    assert decision.reason.startswith("rps 33 req/s over 6s / target 7 per replica -> 5")


def test_burst_panics_and_scales_up_within_the_panic_window():
    sim = Sim(config())  # stable 60 s, panic 6 s, tick 2 s
    sim.run(120, 10)
    assert sim.ready == 1
    first = sim.tick(700)
    assert first.panic and first.desired > 1  # at the first tick of the burst
    within = sim.run(6, 700)  # one panic window later
    assert within.panic and within.desired == 10 == math.ceil(700 / 70)
    stable_only = (10 * 54 + 700 * 6) / 60 / 70  # what the stable window alone says: 2 replicas
    assert math.ceil(stable_only) < within.desired


def test_panic_holds_for_a_stable_window_and_never_scales_down_meanwhile():
    sim = Sim(config())
    sim.run(120, 10)
    start = len(sim.history)
    sim.run(8, 700)
    sim.run(20, 0)  # the load is gone: the panic value drops to 0 at once
    sim.run(60, 50)  # the stable value needs 1 replica from here
    over = [t for t, d in sim.history[start:] if d.panic and math.ceil(d.value / 70) / max(1, d.ready) >= 2]
    last_over = max(over)
    panicking = [(t, d) for t, d in sim.history[start:] if d.panic]
    assert panicking[0][0] == min(over) and panicking[-1][0] == last_over + 60  # held for a stable window
    counts = [d.desired for _, d in panicking]
    assert counts == sorted(counts) and counts[-1] == 10  # never down while panicking
    assert any("no scale-down in panic (holds 10)" in d.reason for _, d in panicking)
    after = next(d for t, d in sim.history if t > last_over + 60)
    assert not after.panic and after.desired == 5  # then down, by the max scale-down rate (10 / 2)


def test_panic_count_keeps_rising_while_the_burst_grows():
    sim = Sim(config(window="6s", tick="1s"))  # panic window 0.6 s: the last tick
    sim.run(10, 10)
    assert [sim.tick(c).desired for c in (300, 600, 1400, 700)] == [5, 9, 20, 20]


def test_scale_down_is_limited_by_the_max_scale_down_rate():
    sim = Sim(config({"minReplicas": 1}, window="6s", tick="1s"), ready=16)
    assert [sim.tick(0).desired for _ in range(5)] == [8, 4, 2, 1, 1]
    faster = Sim(config({"minReplicas": 1}, window="6s", tick="1s", max_scale_down_rate="4"), ready=16)
    assert [faster.tick(0).desired for _ in range(3)] == [4, 1, 1]
    assert "max scale-down rate" in Sim(config(window="6s", tick="1s"), ready=16).tick(0).reason


def test_scale_up_is_limited_by_the_max_scale_up_rate():
    sim = Sim(config(window="6s", tick="1s", max_scale_up_rate="2"))
    assert [sim.tick(2000).desired for _ in range(6)] == [2, 4, 8, 16, 29, 29]


def test_scale_down_delay_holds_the_largest_recent_count():
    sim = Sim(config(window="6s", tick="1s", scale_down_delay="10s"))
    sim.run(20, 300)
    assert sim.ready == 5
    sim.run(9, 0)
    assert sim.ready == 5 and "scale-down delay 10s holds 5" in sim.history[-1][1].reason
    counts = [sim.tick(0).desired for _ in range(12)]  # the counts decided 10 s before, rate-limited by then
    assert counts[0] == 4 and counts == sorted(counts, reverse=True) and counts[-1] == 1
    undelayed = Sim(config(window="6s", tick="1s"))
    undelayed.run(20, 300)
    undelayed.run(9, 0)
    assert undelayed.ready == 1


def test_max_replicas_caps_and_min_replicas_floors():
    sim = Sim(config({"minReplicas": 2, "maxReplicas": 4}, window="6s", tick="1s"))
    assert sim.ready == 2
    decision = sim.run(10, 1000)
    assert decision.desired == 4 and "maxReplicas 4" in decision.reason
    decision = sim.run(30, 0)
    assert decision.desired == 2 and "minReplicas 2" in decision.reason


def test_scales_to_zero_after_the_stable_window_and_grace_and_not_before():
    sim = Sim(config({"minReplicas": 0}, window="6s", tick="1s", scale_to_zero_grace_period="3s"))
    sim.run(10, 5)
    last = sim.now
    assert sim.scaler.last_request_at() == last
    counts = {}
    for _ in range(12):
        decision = sim.tick(0)
        counts[round(sim.now - last)] = decision.desired
    assert all(counts[s] == 1 for s in range(1, 9))  # window 6 s + grace 3 s
    assert counts[9] == 0 and counts[12] == 0
    assert "scale to zero in 1s" in sim.history[-5][1].reason


def test_pod_retention_keeps_the_last_replica_longer_than_the_grace():
    sim = Sim(config({"minReplicas": 0}, window="6s", tick="1s", scale_to_zero_grace_period="3s",
                     scale_to_zero_pod_retention_period="10s"))
    sim.run(5, 5)
    last = sim.now
    counts = {}
    for _ in range(17):
        decision = sim.tick(0)
        counts[round(sim.now - last)] = decision.desired
    assert counts[15] == 1 and counts[16] == 0


def test_min_replicas_one_never_scales_to_zero():
    sim = Sim(config(window="6s", tick="1s", scale_to_zero_grace_period="0s"))
    sim.run(5, 5)
    assert sim.run(300, 0).desired == 1


def test_a_fresh_revision_without_traffic_scales_to_zero_after_window_and_grace():
    sim = Sim(config({"minReplicas": 0}, window="6s", tick="1s", scale_to_zero_grace_period="2s"))
    assert sim.ready == 1
    counts = [sim.tick(0).desired for _ in range(10)]
    assert counts[:7] == [1] * 7 and counts[-1] == 0
    assert sim.scaler.last_request_at() is None


def test_demand_at_zero_asks_for_a_replica_at_once():
    sim = Sim(config({"minReplicas": 0}, initial_scale="0", window="6s", tick="1s"), instant=False)
    assert sim.ready == 0
    assert sim.run(20, 0).desired == 0  # deployed at zero, nothing asked
    decision = sim.tick(0.2, requests=1)  # the activator holds one request
    assert decision.desired == 1 and decision.ready == 0
    assert sim.tick(1, requests=0).desired == 1  # still starting; the held request waits
    burst = Sim(config({"minReplicas": 0}, initial_scale="0", window="6s", tick="1s"), instant=False)
    burst.run(5, 0)
    decision = burst.tick(560, requests=560)  # 560 held requests: panic from zero, 8 replicas at once
    assert decision.panic and decision.desired == 8


def test_scale_from_zero_then_back_to_zero():
    sim = Sim(config({"minReplicas": 0}, initial_scale="0", window="6s", tick="1s",
                     scale_to_zero_grace_period="1s"))
    sim.run(3, 0)
    assert sim.ready == 0
    sim.run(3, 2)
    assert sim.ready == 1
    sim.run(6, 0)
    assert sim.ready == 1
    sim.tick(0)
    assert sim.ready == 0


def test_initial_scale_holds_until_reached_then_the_load_decides():
    sim = Sim(config(window="6s", tick="1s", initial_scale="3"), ready=0, instant=False)
    assert [sim.tick(0).desired for _ in range(3)] == [3, 3, 3]
    sim.ready = 3
    assert sim.tick(0).desired == 1  # reached: no load, scale down (3 // 2 = 1)
    assert "initial scale 3" in Sim(config(initial_scale="3"), ready=0, instant=False).tick(0).reason


def test_no_samples_keep_the_initial_scale():
    scaler = Autoscaler(config(initial_scale="2"))
    decision = scaler.decide(0.0, 0)
    assert (decision.desired, decision.value, decision.panic) == (2, None, False)
    assert decision.reason.startswith("no concurrency samples yet -> 2")


def test_record_refuses_negative_values_and_reconfigure_keeps_samples():
    scaler = Autoscaler(config(window="6s", tick="1s"))
    with pytest.raises(ValueError):
        scaler.record(1.0, -1, 0)
    with pytest.raises(ValueError):
        scaler.record_usage(1.0, 0.5, -2)
    for second in range(1, 11):
        scaler.record(float(second), 140, 1)
    assert scaler.decide(10.0, 2).desired == 2
    scaler.reconfigure(config(window="6s", tick="1s", target="20"))
    assert scaler.decide(10.0, 2).desired == 10  # 140 / (20 * 0.7)


@settings(max_examples=150, deadline=None)
@given(loads=st.lists(st.tuples(st.floats(0, 2000), st.integers(0, 3)), min_size=1, max_size=80),
       low=st.integers(0, 3), high=st.integers(0, 12), delay=st.sampled_from(["0s", "3s"]))
def test_decisions_stay_within_the_bounds_and_never_drop_in_panic(loads, low, high, delay):
    cfg = config({"minReplicas": low, "maxReplicas": high if high >= low else 0}, window="6s", tick="1s",
                 scale_down_delay=delay, scale_to_zero_grace_period="2s")
    sim = Sim(cfg)
    previous = None
    for concurrency, lag in loads:
        decision = sim.tick(concurrency)
        assert decision.desired >= cfg.min_replicas
        assert cfg.max_replicas is None or decision.desired <= cfg.max_replicas
        if previous is not None and previous.panic and decision.panic:
            assert decision.desired >= min(previous.desired, cfg.max_replicas or previous.desired)
        if decision.desired == 0:
            assert cfg.min_replicas == 0 and sim.now - (sim.scaler.last_request_at() or 0) >= 8
        if concurrency > 0 and decision.ready == 0:
            assert decision.desired >= 1
        sim.ready = max(0, decision.desired - lag)  # replicas not all ready yet
        previous = decision


# -- HPA-style cpu / memory ------------------------------------------------------------------------------
def test_hpa_math_with_the_ten_percent_tolerance():
    assert hpa_replicas(2, 1.0, 0.4) == (5, 2.5)  # ceil(2 * 2.5)
    assert hpa_replicas(4, 0.42, 0.4)[0] == 4  # 5% over: within the tolerance
    assert hpa_replicas(4, 0.36, 0.4)[0] == 4  # 10% under: within
    assert hpa_replicas(4, 0.2, 0.4)[0] == 2
    assert hpa_replicas(3, 0.0, 0.4)[0] == 1  # never below one
    with pytest.raises(ValueError):
        hpa_replicas(1, 1.0, 0)


def cpu_sim(cores_per_replica: float, **annotations: str) -> tuple[Sim, list]:
    model = {"modelFormat": {"name": "sklearn"}, "storageUri": "/m", "resources": {"requests": {"cpu": "500m"}}}
    sim = Sim(config({"model": model, "scaleMetric": "cpu", "scaleTarget": 80}, window="6s", tick="1s",
                     **annotations), ready=2)
    decisions = []
    for _ in range(10):
        sim.now += 1
        sim.scaler.record(sim.now, 0, 0)
        sim.scaler.record_usage(sim.now, cores_per_replica * 2, 0)  # summed over the 2 replicas
        decisions.append(sim.scaler.decide(sim.now, 2))
    return sim, decisions


def test_cpu_scales_on_utilisation_of_the_request():
    _, decisions = cpu_sim(1.0)  # 200% of a 500m request against 80%
    assert decisions[-1].desired == 5 and decisions[-1].value == pytest.approx(200.0)
    assert decisions[-1].reason == "cpu 200% per replica over 6s / target 80% -> 5"
    _, within = cpu_sim(0.42)  # 84%: within 10% of 80%
    assert within[-1].desired == 2 and "within the 10% tolerance" in within[-1].reason
    _, low = cpu_sim(0.05)  # 10%: down, by the max scale-down rate at most
    assert low[-1].desired == 1


def test_cpu_without_a_request_is_a_percentage_of_one_core_and_never_zero():
    sim = Sim(config({"scaleMetric": "cpu"}, window="6s", tick="1s"), ready=1)
    for second in range(0, 8):
        sim.scaler.record_usage(float(second), 2.4, 0)
    decision = sim.scaler.decide(7.0, 1)
    assert decision.desired == 3 and decision.value == pytest.approx(240.0)  # ceil(2.4 / 0.8)
    for second in range(8, 60):
        sim.scaler.record_usage(float(second), 0.0, 0)
        decision = sim.scaler.decide(float(second), decision.desired)
    assert decision.desired == 1


def test_cpu_averages_over_the_stable_window():
    sim = Sim(config({"scaleMetric": "cpu"}, window="10s", tick="1s"), ready=1)
    for second in range(0, 11):
        sim.scaler.record_usage(float(second), 2.4 if second == 10 else 0.8, 0)
    assert sim.scaler.decide(10.0, 1).desired == 2  # (0.8 * 9 + 2.4) / 10 = 0.96 cores: ratio 1.2


def test_memory_against_a_request_and_in_mib_without_one():
    model = {"modelFormat": {"name": "sklearn"}, "storageUri": "/m", "resources": {"requests": {"memory": "1Gi"}}}
    scaler = Autoscaler(config({"model": model, "scaleMetric": "memory"}))
    scaler.record_usage(0.0, 0.0, 0)  # the baseline
    scaler.record_usage(1.0, 0.0, 3 * 2**30)  # 3 GiB over 2 replicas: 150% against 80%
    decision = scaler.decide(1.0, 2)
    assert decision.desired == 4 and decision.value == pytest.approx(150.0)
    plain = Autoscaler(config({"scaleMetric": "memory", "scaleTarget": 200}))
    plain.record_usage(0.0, 0.0, 0)
    plain.record_usage(1.0, 0.0, 900 * 2**20)
    decision = plain.decide(1.0, 1)
    assert decision.desired == 5 and decision.reason.startswith("memory 900 MiB per replica over 60s / target 200 MiB")


def test_hpa_waits_while_no_replica_is_ready():
    scaler = Autoscaler(config({"scaleMetric": "cpu", "minReplicas": 2}))
    scaler.record_usage(0.0, 0.0, 0)
    scaler.record_usage(1.0, 5.0, 0)
    assert scaler.decide(1.0, 0).desired == 2


def test_the_first_usage_sample_is_a_baseline_not_a_reason_to_scale_down():
    scaler = Autoscaler(config({"scaleMetric": "cpu", "minReplicas": 1}, initial_scale="3"))
    scaler.record_usage(2.0, 0.0, 0)  # ProcessUsage's first sample: 0 cores, whatever the load
    decision = scaler.decide(2.0, 3)
    assert decision.desired == 3 and decision.value is None
    scaler.record_usage(4.0, 2.4, 0)  # 0.8 cores per replica: on target
    assert scaler.decide(4.0, 3).desired == 3


# -- meters ---------------------------------------------------------------------------------------------
def test_concurrency_meter_is_time_weighted():
    meter = ConcurrencyMeter(now=0.0)
    meter.begin(0.0)
    meter.begin(1.0)
    meter.end(2.0)
    assert meter.in_flight == 1
    assert meter.take(4.0) == (pytest.approx((1 + 2 + 2) / 4), 2)  # 1 for 1 s, 2 for 1 s, 1 for 2 s
    assert meter.take(6.0) == (pytest.approx(1.0), 0)
    meter.end(7.0)
    meter.end(7.5)  # an extra end never goes below zero
    assert meter.take(8.0) == (pytest.approx(0.5), 0)
    assert meter.take(8.0) == (0.0, 0)


def test_sample_window_weighs_partial_windows_and_rates():
    window = SampleWindow(("level", "count"), keep_s=10)
    window.add(1.0, 1.0, (2.0, 4))
    assert window.average(1.0, 60, 0) == 2.0  # a partial window: the time covered so far
    window.add(3.0, 1.0, (4.0, 10))  # covers (1, 3]
    assert window.average(3.0, 60, 0) == pytest.approx((2 * 1 + 4 * 2) / 3)
    assert window.average(3.0, 1.0, 0) == 4.0
    assert window.average(3.0, 60, 1) == pytest.approx(14 / 3)  # requests per second
    assert window.average(3.0, 1.0, 1) == pytest.approx(5.0)  # half of the (1, 3] sample's 10 requests
    window.add(3.0, 1.0, (9.0, 1))  # no time passed: the count adds, the level keeps its weight
    assert window.average(3.0, 1.0, 1) == pytest.approx(5.5)
    assert window.average(3.0, 1.0, 0) == 4.0
    window.add(20.0, 1.0, (0.0, 0))
    assert len(window.samples) == 1
    assert SampleWindow(("level",), 5).average(1.0, 5, 0) is None


CHILD = textwrap.dedent("""
    import subprocess, sys, time
    code = "import sys; b = b'x' * (64 * 2**20); print('allocated', flush=True); sys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    print("started", flush=True)
    sys.stdin.readline()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    print("spun", flush=True)
    sys.stdin.readline()
    child.stdin.close()
    child.wait()
""")


def test_process_usage_counts_children_memory_and_cpu_between_samples():
    import psutil

    parent = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert {parent.stdout.readline().strip() for _ in range(2)} == {"started", "allocated"}
        usage = ProcessUsage()
        cores, rss = usage.sample([parent.pid])
        assert cores == 0.0  # the first sight of a process is its baseline
        assert rss > 64 * 2**20  # the child's 64 MiB counted with the parent
        before = sum(psutil.Process(parent.pid).cpu_times()[:2])
        parent.stdin.write("spin\n")
        parent.stdin.flush()
        assert parent.stdout.readline().strip() == "spun"
        cores, _ = usage.sample([parent.pid, parent.pid, 999_999_999])  # duplicates and gone pids are fine
        assert sum(psutil.Process(parent.pid).cpu_times()[:2]) - before >= 0.29
        assert cores > 0
    finally:
        parent.stdin.write("done\n")
        parent.stdin.close()
        parent.wait(10)
    assert ProcessUsage().sample([]) == (0.0, 0.0)
