"""Revision identity, Knative's traffic rules (canary, promote, pin, rollout bookkeeping) and the status."""

from __future__ import annotations

import pytest

from shipyard.control.controllers.traffic import (
    Target,
    can_switch,
    desired_traffic,
    describe,
    from_status,
    rolled_out_after,
    to_status,
)
from shipyard.control.controllers.status import Observed, service_status
from shipyard.control.revisions import predictor_fingerprint, revision_spec

PREDICTOR = {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "/models/iris"}, "minReplicas": 1}


def test_rollout_and_scale_fields_do_not_make_a_revision():
    base = predictor_fingerprint(PREDICTOR)
    assert predictor_fingerprint({**PREDICTOR, "canaryTrafficPercent": 20, "minReplicas": 2, "maxReplicas": 3}) == base
    reordered = {"minReplicas": 1, "model": {"storageUri": "/models/iris", "modelFormat": {"name": "sklearn"}}}
    assert predictor_fingerprint(reordered) == base
    assert revision_spec({**PREDICTOR, "canaryTrafficPercent": 20}) == {"model": PREDICTOR["model"]}


@pytest.mark.parametrize("change", [
    {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "/models/iris-v2"}},
    {"batcher": {"maxBatchSize": 8}},
    {"timeout": 10},
    {"containerConcurrency": 4},
])
def test_serving_fields_make_a_new_revision(change):
    assert predictor_fingerprint({**PREDICTOR, **change}) != predictor_fingerprint(PREDICTOR)


def test_no_canary_sends_everything_to_the_latest_ready():
    assert desired_traffic("v2", "v1", None, None) == [Target("v2", 100, "latest")]
    assert desired_traffic("v1", None, 30, None) == [Target("v1", 100, "latest")]  # nothing rolled out yet
    assert desired_traffic("v1", "v1", 30, None) == [Target("v1", 100, "latest")]  # the canary is the rolled-out one
    assert desired_traffic(None, None, None, None) == []


def test_canary_splits_between_latest_and_rolled_out():
    assert desired_traffic("v2", "v1", 20, None) == [Target("v2", 20, "latest"), Target("v1", 80, "prev")]
    assert desired_traffic("v2", "v1", 0, None) == [Target("v2", 0, "latest"), Target("v1", 100, "prev")]
    assert desired_traffic("v2", "v1", 150, None) == [Target("v2", 100, "latest"), Target("v1", 0, "prev")]


def test_a_pin_wins_over_the_canary():
    assert desired_traffic("v3", "v2", 20, "v1") == [Target("v1", 100, "prev"), Target("v3", 0, "latest")]
    assert desired_traffic("v1", "v1", None, "v1") == [Target("v1", 100, "latest")]
    assert desired_traffic(None, None, None, "v1") == [Target("v1", 100, "prev")]


def test_traffic_moves_only_when_the_revisions_getting_it_are_ready():
    split = [Target("v2", 20, "latest"), Target("v1", 80, "prev")]
    assert can_switch(split, {"v1", "v2"})
    assert not can_switch(split, {"v1"})
    assert can_switch([Target("v1", 100, "prev"), Target("v2", 0, "latest")], {"v1"})  # a dark revision may lag
    assert not can_switch([], {"v1"})


def test_a_revision_with_all_traffic_becomes_the_rolled_out_one():
    assert rolled_out_after([Target("v1", 100)], None, None) == ("v1", None)
    assert rolled_out_after([Target("v2", 100)], "v1", None) == ("v2", "v1")
    assert rolled_out_after([Target("v2", 20), Target("v1", 80)], "v1", None) == ("v1", None)
    assert rolled_out_after([Target("v1", 100), Target("v2", 0)], "v1", "v0") == ("v1", "v0")


def test_status_entries_round_trip():
    split = [Target("v2", 20, "latest"), Target("v1", 80, "prev")]
    assert to_status(split) == [
        {"revisionName": "v2", "percent": 20, "latestRevision": True, "tag": "latest"},
        {"revisionName": "v1", "percent": 80, "latestRevision": False, "tag": "prev"},
    ]
    assert from_status(to_status(split)) == split
    assert describe(split) == "v2 20% (latest), v1 80% (prev)" and describe([]) == "none"


def _seen(targets, ready, latest="v2", latest_ready="v2"):
    return Observed("iris", "default", 3, latest, latest_ready, "v1", None, targets, ready)


def test_status_conditions_say_why_and_keep_their_transition_times():
    why = {"v2": "replica 0 of v2 is loading its model", "v1": "replica 0 of v1 exited with code 1; restarting in 2s"}
    canary = [Target("v2", 20, "latest"), Target("v1", 80, "prev")]
    status = service_status({}, _seen(canary, {"v1", "v2"}), why.__getitem__, "http://127.0.0.1:8080", "example.com")
    assert [(c["type"], c["status"]) for c in status["conditions"]] == [
        ("PredictorReady", "True"), ("IngressReady", "True"), ("LatestDeploymentReady", "True"), ("Ready", "True")]
    assert status["url"] == "http://iris.default.example.com" and status["address"] == {"url": "http://127.0.0.1:8080"}
    assert status["observedGeneration"] == 3
    assert status["components"]["predictor"] == {
        "latestCreatedRevision": "v2", "latestReadyRevision": "v2", "latestRolledoutRevision": "v1",
        "traffic": to_status(canary)}

    old = {"conditions": [{**c, "lastTransitionTime": "2020-01-01T00:00:00Z"} for c in status["conditions"]]}
    crashed = service_status(old, _seen([Target("v1", 100, "latest")], set()), why.__getitem__, "http://gw", "x")
    predictor_ready, ingress, latest_ready, ready = crashed["conditions"]
    assert predictor_ready["status"] == "False" and predictor_ready["reason"] == "RevisionNotReady"
    assert predictor_ready["message"] == why["v1"] and predictor_ready["lastTransitionTime"] != "2020-01-01T00:00:00Z"
    assert ingress["message"] == "no ready revision to route to yet"
    assert (ready["status"], ready["message"]) == ("False", why["v1"])
    steady = service_status(old, _seen(canary, {"v1", "v2"}), why.__getitem__, "http://gw", "x")
    assert {c["lastTransitionTime"] for c in steady["conditions"]} == {"2020-01-01T00:00:00Z"}
    assert all("reason" not in c and "message" not in c for c in steady["conditions"])


def test_without_a_gateway_the_service_is_not_ready():
    status = service_status({}, _seen([Target("v2", 100, "latest")], {"v2"}), str, None, "example.com")
    ingress = status["conditions"][1]
    assert (ingress["status"], ingress["message"]) == ("False", "the gateway is not running")
    assert status["address"] == {}
