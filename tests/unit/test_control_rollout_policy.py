"""``rollout(store, ...)`` (promote, rollback, pin) on a real SQLite store, and the automatic rollback policy."""

from __future__ import annotations

import pytest

from shipyard.control.controllers.rollout import (
    PIN_ANNOTATION,
    RollbackPolicy,
    RolloutError,
    rollback_policy,
    rollout,
)
from shipyard.control.resources import INFERENCE_SERVICE, Resource
from shipyard.control.store import Store

KIND = INFERENCE_SERVICE.kind


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "state.db")
    yield store
    store.close()


def _service(store: Store, predictor_status: dict, canary: int | None = None, revisions: int = 2) -> Resource:
    predictor = {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "/m"}}
    if canary is not None:
        predictor["canaryTrafficPercent"] = canary
    resource, _ = store.apply(Resource("serving.kserve.io/v1beta1", KIND, "iris", spec={"predictor": predictor}))
    for number in range(revisions):
        store.add_revision("default", "iris", f"fp{number}", {}, 1)
    store.set_status(KIND, "default", "iris", {"components": {"predictor": predictor_status}})
    return resource


def _stored(store: Store) -> Resource:
    resource = store.get(KIND, "default", "iris")
    assert resource is not None
    return resource


CANARY = {"latestReadyRevision": "iris-predictor-00002", "latestRolledoutRevision": "iris-predictor-00001"}
PROMOTED = {"latestReadyRevision": "iris-predictor-00002", "latestRolledoutRevision": "iris-predictor-00002",
            "previousRolledoutRevision": "iris-predictor-00001"}


def test_promote_drops_the_canary_and_the_pin(store):
    _service(store, CANARY, canary=20)
    pinned = _stored(store)
    pinned.annotations = {PIN_ANNOTATION: "iris-predictor-00001", "team": "ml"}
    store.apply(pinned)
    result = rollout(store, "default", "iris", "promote")
    assert result == {"message": "promoting iris-predictor-00002: it gets all traffic", "pinned": None}
    stored = _stored(store)
    assert "canaryTrafficPercent" not in stored.spec["predictor"] and stored.annotations == {"team": "ml"}
    assert rollout(store, "default", "iris", "promote")["message"].startswith("nothing to promote")


def test_rollback_during_a_canary_pins_the_rolled_out_revision(store):
    _service(store, CANARY, canary=20)
    assert rollout(store, "default", "iris", "rollback")["pinned"] == "iris-predictor-00001"
    stored = _stored(store)
    assert stored.annotations[PIN_ANNOTATION] == "iris-predictor-00001"
    assert stored.spec["predictor"]["canaryTrafficPercent"] == 20  # the user's spec is left alone


def test_rollback_after_a_promotion_pins_the_previous_one(store):
    _service(store, PROMOTED)
    assert rollout(store, "default", "iris", "rollback")["pinned"] == "iris-predictor-00001"


def test_rollback_with_nothing_before_is_a_conflict(store):
    _service(store, {"latestReadyRevision": "iris-predictor-00001", "latestRolledoutRevision": "iris-predictor-00001"},
             revisions=1)
    with pytest.raises(RolloutError, match="iris has no previous rolled-out revision to roll back to") as caught:
        rollout(store, "default", "iris", "rollback")
    assert caught.value.status == 409 and PIN_ANNOTATION not in _stored(store).annotations


def test_pin_takes_a_name_or_a_number(store):
    _service(store, PROMOTED)
    assert rollout(store, "default", "iris", "pin", "1")["pinned"] == "iris-predictor-00001"
    assert rollout(store, "default", "iris", "pin", "iris-predictor-00002")["pinned"] == "iris-predictor-00002"
    assert _stored(store).annotations[PIN_ANNOTATION] == "iris-predictor-00002"


@pytest.mark.parametrize("name, action, revision, status, message", [
    ("iris", "pin", None, 400, "pin needs a REVISION (e.g. iris-predictor-00002)"),
    ("iris", "pin", "9", 404, "default/iris has no revision '9'; it has: iris-predictor-00001, iris-predictor-00002"),
    ("iris", "promote", "2", 400, "promote takes no REVISION"),
    ("iris", "restart", None, 400, "action must be one of promote, rollback, pin, got 'restart'"),
    ("other", "promote", None, 404, "inferenceservice default/other not found"),
])
def test_refusals_carry_an_http_status(store, name, action, revision, status, message):
    _service(store, PROMOTED)
    before = _stored(store)
    with pytest.raises(RolloutError) as caught:
        rollout(store, "default", name, action, revision)
    assert caught.value.status == status and str(caught.value).startswith(message)
    after = _stored(store)
    assert (after.spec, after.annotations, after.generation) == (before.spec, before.annotations, before.generation)


def test_a_service_being_deleted_is_not_rolled_out(store):
    _service(store, PROMOTED)
    store.mark_deleting(KIND, "default", "iris")
    with pytest.raises(RolloutError, match="is being deleted") as caught:
        rollout(store, "default", "iris", "rollback")
    assert caught.value.status == 409 and _stored(store).deleting


def test_rollback_policy_from_annotations():
    assert rollback_policy({}) is None
    policy = rollback_policy({"serving.shipyard.io/rollback-max-error-rate": "0.05",
                              "serving.shipyard.io/rollback-window-s": "10",
                              "serving.shipyard.io/rollback-min-requests": "20"})
    assert policy == RollbackPolicy(max_error_rate=0.05, max_p99_ms=None, window_s=10.0, min_requests=20)
    assert rollback_policy({"serving.shipyard.io/rollback-max-p99-ms": "200"}) == RollbackPolicy(max_p99_ms=200.0)
    with pytest.raises(ValueError, match=r"^metadata.annotations.serving.shipyard.io/rollback-max-error-rate: expected "
                       r"a number between 0 and 1, got '5%'"):
        rollback_policy({"serving.shipyard.io/rollback-max-error-rate": "5%"})
    with pytest.raises(ValueError, match=r"rollback-window-s: expected a number at least 1, got '0'"):
        rollback_policy({"serving.shipyard.io/rollback-max-p99-ms": "200", "serving.shipyard.io/rollback-window-s": "0"})


def test_a_breach_says_why_once_there_are_enough_requests():
    policy = RollbackPolicy(max_error_rate=0.05, max_p99_ms=200.0, window_s=30.0, min_requests=50)
    assert policy.breach(40, 40, 900.0) is None  # too few requests to judge
    assert policy.breach(100, 5, 150.0) is None
    assert policy.breach(100, 6, 150.0) == ("error rate 6.0% (6 of 100 requests in the last 30s) is above 5.0%")
    assert policy.breach(100, 0, 250.0) == "p99 latency 250 ms over the last 30s (100 requests) is above 200 ms"
