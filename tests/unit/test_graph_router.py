"""The graph router with an in-process fake Call (the wire is tested in test_control_graph.py)."""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from typing import Any, Callable

import pytest

from shipyard.graph.bandit import BanditState
from shipyard.graph.router import GraphAnswer, GraphRouter, StepError, StepResult
from shipyard.graph.spec import Graph, Step, parse_graph

Handler = Callable[[Any], Any]


class FakeCall:
    """Services by name (or URL): each handler gets the body and returns a body, a StepResult,
    raises StepError, or is a coroutine function (to sleep or wait)."""

    def __init__(self, **handlers: Handler) -> None:
        self.handlers = dict(handlers)
        self.calls: list[dict[str, Any]] = []

    async def __call__(
        self, step: Step, body: Any, protocol: str, headers: dict[str, str], timeout: float | None
    ) -> StepResult:
        target = step.service_name or step.service_url
        assert target is not None and step.node_name is None
        self.calls.append({"service": target, "body": body, "protocol": protocol, "headers": headers, "timeout": timeout})
        result = self.handlers[target](body)
        if inspect.isawaitable(result):
            result = await result
        return result if isinstance(result, StepResult) else StepResult(200, result)

    def called(self) -> list[str]:
        return [call["service"] for call in self.calls]


def graph(nodes: dict[str, Any], **spec: Any) -> Graph:
    return parse_graph("default", "g", {"nodes": nodes, **spec})


def run(router: GraphRouter, body: Any, protocol: str = "v1", request_id: str = "req-1") -> GraphAnswer:
    return asyncio.run(router.run(body, protocol, {"x-request-id": request_id}, request_id))


def tag(name: str) -> Handler:
    """A V1 service answering with its name and what it got."""
    return lambda body: {"predictions": [name], "got": body}


def failing(status: int, message: str = "boom") -> Handler:
    return lambda body: StepResult(status, {"error": message})


async def forever(_body: Any) -> Any:
    await asyncio.Event().wait()


# -- Sequence -----------------------------------------------------------------------------------


def test_sequence_passes_the_original_request_by_default() -> None:
    call = FakeCall(a=tag("a"), b=tag("b"))
    router = GraphRouter(graph({"root": {"routerType": "Sequence", "steps": [
        {"name": "first", "serviceName": "a"}, {"name": "second", "serviceName": "b"}]}}), call)
    answer = run(router, {"instances": [[1, 2]]})
    assert answer.status == 200
    assert answer.body == {"predictions": ["b"], "got": {"instances": [[1, 2]]}}
    assert [c["body"] for c in call.calls] == [{"instances": [[1, 2]]}] * 2
    assert answer.route == [("root", "first"), ("root", "second")]
    assert call.calls[0]["headers"] == {"x-request-id": "req-1"} and call.calls[0]["protocol"] == "v1"


def test_sequence_v1_response_becomes_instances() -> None:
    call = FakeCall(a=lambda body: {"predictions": [[0.1, 0.9]]}, b=tag("b"))
    router = GraphRouter(graph({"root": {"routerType": "Sequence", "steps": [
        {"serviceName": "a"}, {"serviceName": "b", "data": "$response"}]}}), call)
    answer = run(router, {"instances": [[1, 2]]})
    assert call.calls[1]["body"] == {"instances": [[0.1, 0.9]]}
    assert answer.body["predictions"] == ["b"]


def test_sequence_v1_map_predictions_false_passes_the_body_as_is() -> None:
    call = FakeCall(a=lambda body: {"predictions": [1]}, b=tag("b"))
    router = GraphRouter(graph({"root": {"routerType": "Sequence", "steps": [
        {"serviceName": "a"}, {"serviceName": "b", "data": "$response", "mapPredictionsToInstances": False}]}}), call)
    run(router, {"instances": [[1, 2]]})
    assert call.calls[1]["body"] == {"predictions": [1]}


V2_ANSWER = {
    "id": "abc",
    "model_name": "a",
    "parameters": {"x": 1},
    "outputs": [
        {"name": "label", "datatype": "INT64", "shape": [1], "data": [2], "parameters": {"p": 1}},
        {"name": "proba", "datatype": "FP32", "shape": [1, 3], "data": [0.1, 0.2, 0.7]},
    ],
}


def test_sequence_v2_outputs_become_inputs_by_name() -> None:
    call = FakeCall(a=lambda body: V2_ANSWER, b=lambda body: {"outputs": []})
    router = GraphRouter(graph({"root": {"routerType": "Sequence", "steps": [
        {"serviceName": "a"}, {"serviceName": "b", "data": "$response"}]}}), call)
    answer = run(router, {"inputs": []}, protocol="v2")
    assert answer.status == 200
    assert call.calls[1]["protocol"] == "v2"
    assert call.calls[1]["body"] == {
        "id": "abc",
        "inputs": [
            {"name": "label", "datatype": "INT64", "shape": [1], "data": [2]},
            {"name": "proba", "datatype": "FP32", "shape": [1, 3], "data": [0.1, 0.2, 0.7]},
        ],
    }


def test_sequence_v2_input_map_renames_and_selects() -> None:
    call = FakeCall(a=lambda body: V2_ANSWER, b=lambda body: {"outputs": []})
    router = GraphRouter(graph({"root": {"routerType": "Sequence", "steps": [
        {"serviceName": "a"},
        {"serviceName": "b", "data": "$response", "inputMap": {"proba": "input-0"}}]}}), call)
    run(router, {"inputs": []}, protocol="v2")
    assert call.calls[1]["body"] == {
        "id": "abc",
        "inputs": [{"name": "input-0", "datatype": "FP32", "shape": [1, 3], "data": [0.1, 0.2, 0.7]}],
    }


def test_sequence_v2_input_map_naming_a_missing_output_is_a_400() -> None:
    call = FakeCall(a=lambda body: V2_ANSWER, b=lambda body: {"outputs": []})
    router = GraphRouter(graph({"root": {"routerType": "Sequence", "steps": [
        {"serviceName": "a"},
        {"name": "next", "serviceName": "b", "data": "$response", "dependency": "Hard",
         "inputMap": {"scores": "input-0"}}]}}), call)
    answer = run(router, {"inputs": []}, protocol="v2")
    assert answer.status == 400
    assert answer.body["node"] == "root" and answer.body["step"] == "next"
    assert "node 'root' step 'next' (service 'b')" in answer.body["error"]
    assert "'scores'" in answer.body["error"]
    assert call.called() == ["a"]


def test_sequence_condition_checked_against_previous_response() -> None:
    nodes = {"root": {"routerType": "Sequence", "steps": [
        {"name": "classify", "serviceName": "a"},
        {"name": "explain", "serviceName": "b", "condition": "predictions.0", "data": "$response"}]}}
    # match: predictions.0 exists
    call = FakeCall(a=lambda body: {"predictions": [1]}, b=tag("b"))
    answer = run(GraphRouter(graph(nodes), call), {"instances": [[1]]})
    assert call.called() == ["a", "b"] and answer.body["predictions"] == ["b"]
    # no match: the sequence stops and answers the last response
    call = FakeCall(a=lambda body: {"predictions": []}, b=tag("b"))
    answer = run(GraphRouter(graph(nodes), call), {"instances": [[1]]})
    assert call.called() == ["a"]
    assert (answer.status, answer.body) == (200, {"predictions": []})
    assert answer.route == [("root", "classify")]


def test_sequence_v2_condition_on_named_output() -> None:
    nodes = {"root": {"routerType": "Sequence", "steps": [
        {"serviceName": "a"},
        {"serviceName": "b", "condition": 'outputs.#(name=="label")', "data": "$response"}]}}
    call = FakeCall(a=lambda body: V2_ANSWER, b=lambda body: {"outputs": [{"name": "b"}]})
    assert run(GraphRouter(graph(nodes), call), {"inputs": []}, "v2").body == {"outputs": [{"name": "b"}]}
    call = FakeCall(a=lambda body: {"outputs": [{"name": "proba"}]}, b=lambda body: {})
    answer = run(GraphRouter(graph(nodes), call), {"inputs": []}, "v2")
    assert call.called() == ["a"] and answer.body == {"outputs": [{"name": "proba"}]}


def test_sequence_first_condition_checked_against_the_request() -> None:
    nodes = {"root": {"routerType": "Sequence", "steps": [
        {"serviceName": "a", "condition": "instances.#(intval>10)"}, {"serviceName": "b"}]}}
    call = FakeCall(a=tag("a"), b=tag("b"))
    answer = run(GraphRouter(graph(nodes), call), {"instances": [{"intval": 11}]})
    assert call.called() == ["a", "b"] and answer.status == 200
    call = FakeCall(a=tag("a"), b=tag("b"))
    request = {"instances": [{"intval": 3}]}
    answer = run(GraphRouter(graph(nodes), call), request)
    assert call.called() == []
    assert (answer.status, answer.body, answer.route) == (200, request, [])


def test_sequence_hard_failure_aborts_with_its_status() -> None:
    call = FakeCall(a=tag("a"), b=failing(422, "bad shape"), c=tag("c"))
    router = GraphRouter(graph({"root": {"routerType": "Sequence", "steps": [
        {"name": "pre", "serviceName": "a"},
        {"name": "classify", "serviceName": "b", "dependency": "Hard"},
        {"name": "post", "serviceName": "c"}]}}), call)
    answer = run(router, {"instances": [1]})
    assert answer.status == 422
    assert answer.body["error"] == "node 'root' step 'classify' (service 'b'): answered 422: bad shape"
    assert (answer.body["node"], answer.body["step"]) == ("root", "classify")
    assert answer.body["cause"] == {"error": "bad shape"}
    assert call.called() == ["a", "b"]
    assert answer.route == [("root", "pre"), ("root", "classify")]


def test_sequence_hard_transport_failure_aborts() -> None:
    def refuse(body: Any) -> Any:
        raise StepError(503, "connection refused")

    call = FakeCall(a=refuse, c=tag("c"))
    router = GraphRouter(graph({"root": {"routerType": "Sequence", "steps": [
        {"name": "classify", "serviceName": "a", "dependency": "Hard"}, {"serviceName": "c"}]}}), call)
    answer = run(router, {"instances": [1]})
    assert answer.status == 503
    assert answer.body["error"] == "node 'root' step 'classify' (service 'a'): connection refused"
    assert call.called() == ["a"]


def test_sequence_soft_failure_continues_with_the_failed_response() -> None:
    call = FakeCall(a=failing(500, "flaky"), b=tag("b"))
    router = GraphRouter(graph({"root": {"routerType": "Sequence", "steps": [
        {"serviceName": "a"}, {"serviceName": "b", "data": "$response"}]}}), call)
    answer = run(router, {"instances": [1]})
    assert answer.status == 200
    assert call.calls[1]["body"] == {"error": "flaky"}  # KServe: the failed response is the previous one
    assert answer.body == {"predictions": ["b"], "got": {"error": "flaky"}}


def test_sequence_soft_transport_failure_continues_and_last_status_wins() -> None:
    def refuse(body: Any) -> Any:
        raise StepError(502, "no route")

    call = FakeCall(a=refuse, b=failing(500, "also broken"))
    router = GraphRouter(graph({"root": {"routerType": "Sequence", "steps": [
        {"name": "one", "serviceName": "a"}, {"name": "two", "serviceName": "b", "data": "$response"}]}}), call)
    answer = run(router, {"instances": [1]})
    assert call.calls[1]["body"]["error"] == "node 'root' step 'one' (service 'a'): no route"
    assert answer.status == 500  # the last step's failure is the sequence's answer
    assert answer.body["step"] == "two"


# -- Switch -------------------------------------------------------------------------------------


SWITCH = {"root": {"routerType": "Switch", "steps": [
    {"name": "from-client", "serviceName": "a", "condition": "[@this].#(source==client)"},
    {"name": "red", "serviceName": "b", "condition": "instances.#(strval%*red*)"},
    {"name": "big", "serviceName": "c", "condition": "instances.#(intval>10)"}]}}


@pytest.mark.parametrize(
    ("request_body", "service"),
    [
        ({"source": "client", "instances": [{"strval": "red"}]}, "a"),  # first match wins
        ({"instances": [{"strval": "darkred", "intval": 50}]}, "b"),
        ({"instances": [{"strval": "blue", "intval": 50}]}, "c"),
    ],
)
def test_switch_first_matching_step_gets_the_input(request_body: Any, service: str) -> None:
    call = FakeCall(a=tag("a"), b=tag("b"), c=tag("c"))
    answer = run(GraphRouter(graph(SWITCH), call), request_body)
    assert call.called() == [service]
    assert answer.body == {"predictions": [service], "got": request_body}
    assert len(answer.route) == 1 and answer.route[0][0] == "root"


def test_switch_without_a_match_answers_the_request() -> None:
    call = FakeCall(a=tag("a"), b=tag("b"), c=tag("c"))
    request = {"instances": [{"strval": "blue", "intval": 1}]}
    answer = run(GraphRouter(graph(SWITCH), call), request)
    assert (answer.status, answer.body, answer.route) == (200, request, [])
    assert call.called() == []


def test_switch_step_without_condition_is_the_default() -> None:
    nodes = {"root": {"routerType": "Switch", "steps": [
        {"serviceName": "a", "condition": "instances.#(intval>10)"}, {"name": "default", "serviceName": "b"}]}}
    call = FakeCall(a=tag("a"), b=tag("b"))
    answer = run(GraphRouter(graph(nodes), call), {"instances": [{"intval": 1}]})
    assert answer.route == [("root", "default")]


def test_switch_failure_is_the_answer() -> None:
    nodes = {"root": {"routerType": "Switch", "steps": [{"name": "only", "serviceName": "a"}]}}
    answer = run(GraphRouter(graph(nodes), FakeCall(a=failing(404, "no model"))), {})
    assert answer.status == 404 and answer.body["step"] == "only"


# -- Ensemble -----------------------------------------------------------------------------------


def test_ensemble_runs_steps_concurrently_keyed_by_name_or_index() -> None:
    started: list[str] = []
    both = asyncio.Event()

    def waiter(name: str) -> Handler:
        async def handle(body: Any) -> Any:
            started.append(name)
            if len(started) == 2:
                both.set()
            await asyncio.wait_for(both.wait(), 10)  # only finishes if the other one started too
            return {"predictions": [name]}

        return handle

    call = FakeCall(a=waiter("a"), b=waiter("b"))
    router = GraphRouter(graph({"root": {"routerType": "Ensemble", "steps": [
        {"name": "forest", "serviceName": "a"}, {"serviceName": "b"}]}}), call)
    answer = run(router, {"instances": [1]})
    assert answer.status == 200
    assert answer.body == {"forest": {"predictions": ["a"]}, "1": {"predictions": ["b"]}}
    assert answer.route == [("root", "forest"), ("root", "1")]
    assert [c["body"] for c in call.calls] == [{"instances": [1]}] * 2


def test_ensemble_soft_failure_appears_under_its_name() -> None:
    call = FakeCall(a=tag("a"), b=failing(500, "down"))
    router = GraphRouter(graph({"root": {"routerType": "Ensemble", "steps": [
        {"name": "ok", "serviceName": "a"}, {"name": "broken", "serviceName": "b"}]}}), call)
    answer = run(router, {"instances": [1]})
    assert answer.status == 200
    assert answer.body["ok"]["predictions"] == ["a"]
    assert answer.body["broken"]["error"] == "node 'root' step 'broken' (service 'b'): answered 500: down"


def test_ensemble_first_failing_hard_step_decides() -> None:
    call = FakeCall(a=tag("a"), b=failing(503, "first"), c=failing(400, "second"))
    router = GraphRouter(graph({"root": {"routerType": "Ensemble", "steps": [
        {"name": "ok", "serviceName": "a"},
        {"name": "x", "serviceName": "b", "dependency": "Hard"},
        {"name": "y", "serviceName": "c", "dependency": "Hard"}]}}), call)
    answer = run(router, {"instances": [1]})
    assert answer.status == 503 and answer.body["step"] == "x"
    assert sorted(call.called()) == ["a", "b", "c"]


# -- Splitter -----------------------------------------------------------------------------------


def test_splitter_weights_are_exact() -> None:
    call = FakeCall(a=tag("a"), b=tag("b"))
    router = GraphRouter(graph({"root": {"routerType": "Splitter", "steps": [
        {"name": "canary", "serviceName": "a", "weight": 20}, {"name": "main", "serviceName": "b", "weight": 80}]}}), call)

    async def many() -> list[str]:
        picked = []
        for index in range(1000):
            answer = await router.run({"instances": [index]}, "v1", {}, f"r{index}")
            picked.append(answer.route[0][1])
        return picked

    picked = asyncio.run(many())
    assert Counter(picked) == {"canary": 200, "main": 800}
    for start in range(0, 1000, 100):  # exact in every run of 100
        assert Counter(picked[start : start + 100]) == {"canary": 20, "main": 80}
    assert call.calls[0]["body"] == {"instances": [0]}


def test_splitter_three_ways_and_zero_weight() -> None:
    call = FakeCall(a=tag("a"), b=tag("b"), c=tag("c"), d=tag("d"))
    router = GraphRouter(graph({"root": {"routerType": "Splitter", "steps": [
        {"serviceName": "a", "weight": 33}, {"serviceName": "b", "weight": 33},
        {"serviceName": "c", "weight": 34}, {"serviceName": "d", "weight": 0}]}}), call)

    async def many() -> None:
        for _ in range(300):
            await router.run({}, "v1", {}, "r")

    asyncio.run(many())
    assert Counter(call.called()) == {"a": 99, "b": 99, "c": 102}


# -- Bandit -------------------------------------------------------------------------------------


def test_bandit_routes_and_records_decisions_by_request_id() -> None:
    state = BanditState()
    call = FakeCall(a=tag("a"), b=tag("b"), c=tag("c"))
    nodes = {
        "root": {"routerType": "Sequence", "steps": [{"name": "pick", "nodeName": "arms"}]},
        "arms": {"routerType": "Bandit", "bandit": {"policy": "epsilon-greedy", "epsilon": 0.0, "seed": 1},
                 "steps": [{"name": "arm-a", "serviceName": "a"}, {"name": "arm-b", "serviceName": "b"},
                           {"name": "arm-c", "serviceName": "c"}]},
    }
    router = GraphRouter(graph(nodes), call, state)
    assert state.config("arms").policy == "epsilon-greedy"

    async def rounds() -> None:
        for index in range(30):
            answer = await router.run({"instances": [1]}, "v1", {}, f"req-{index}")
            node, arm = answer.route[-1]
            assert node == "arms" and answer.route[0] == ("root", "pick")
            assert state.reward(f"req-{index}", 1.0 if arm == "arm-b" else 0.0) == [("arms", arm)]

    asyncio.run(rounds())
    snapshot = state.snapshot()["arms"]
    assert snapshot["arm-b"]["pulls"] >= 27  # tried once each, then greedy on the only rewarded arm
    assert snapshot["arm-b"]["meanReward"] == 1.0
    assert state.pending_count == 0


def test_nested_bandits_credit_every_decision() -> None:
    state = BanditState()
    call = FakeCall(a=tag("a"), b=tag("b"), c=tag("c"))
    nodes = {
        "root": {"routerType": "Bandit", "steps": [{"name": "inner", "nodeName": "sub"}, {"name": "direct", "serviceName": "c"}]},
        "sub": {"routerType": "Bandit", "steps": [{"name": "x", "serviceName": "a"}, {"name": "y", "serviceName": "b"}]},
    }
    router = GraphRouter(graph(nodes), call, state)
    answer = run(router, {}, request_id="r1")
    assert answer.route == [("root", "inner"), ("sub", "x")]  # untried arms go first, in order
    assert state.reward("r1", 0.5) == [("root", "inner"), ("sub", "x")]


# -- nested nodes -------------------------------------------------------------------------------


def test_node_name_step_runs_the_node_with_the_step_input() -> None:
    call = FakeCall(pre=lambda body: {"predictions": [{"intval": 20}]}, big=tag("big"), small=tag("small"))
    nodes = {
        "root": {"routerType": "Sequence", "steps": [
            {"name": "pre", "serviceName": "pre"},
            {"name": "route", "nodeName": "pick", "data": "$response"}]},
        "pick": {"routerType": "Switch", "steps": [
            {"name": "big", "serviceName": "big", "condition": "instances.#(intval>10)"},
            {"name": "small", "serviceName": "small"}]},
    }
    answer = run(GraphRouter(graph(nodes), call), {"instances": [1]})
    assert answer.route == [("root", "pre"), ("root", "route"), ("pick", "big")]
    assert call.calls[1]["body"] == {"instances": [{"intval": 20}]}
    assert answer.body["predictions"] == ["big"]


def test_nested_failure_names_the_inner_node_and_step() -> None:
    nodes = {
        "root": {"routerType": "Sequence", "steps": [
            {"name": "ens", "nodeName": "both", "dependency": "Hard"}, {"serviceName": "after"}]},
        "both": {"routerType": "Ensemble", "steps": [
            {"name": "good", "serviceName": "a"}, {"name": "bad", "serviceName": "b", "dependency": "Hard"}]},
    }
    call = FakeCall(a=tag("a"), b=failing(500), after=tag("after"))
    answer = run(GraphRouter(graph(nodes), call), {})
    assert answer.status == 500
    assert (answer.body["node"], answer.body["step"]) == ("both", "bad")
    assert "after" not in call.called()


# -- timeouts and retries -----------------------------------------------------------------------


def test_step_timeout_is_a_504_naming_node_and_step() -> None:
    call = FakeCall(slow=forever, b=tag("b"))
    router = GraphRouter(graph({"root": {"routerType": "Sequence", "steps": [
        {"name": "wait", "serviceName": "slow", "timeout": 0.2, "dependency": "Hard"}, {"serviceName": "b"}]}}), call)
    answer = run(router, {})
    assert answer.status == 504
    assert answer.body["error"] == "node 'root' step 'wait' (service 'slow'): timed out after 0.2s"
    assert call.calls[0]["timeout"] == pytest.approx(0.2)
    assert call.called() == ["slow"]


def test_service_client_timeout_applies_to_steps_without_their_own() -> None:
    call = FakeCall(slow=forever, quick=tag("quick"))
    nodes = {"root": {"routerType": "Ensemble", "steps": [
        {"name": "s", "serviceName": "slow"}, {"name": "q", "serviceName": "quick", "timeout": 9}]}}
    # The CRD declares whole seconds; the engine takes fractions too (kept short for the test).
    router = GraphRouter(graph(nodes, routerTimeouts={"serviceClient": 0.5}), call)
    answer = run(router, {})
    assert answer.status == 200  # Soft
    assert answer.body["s"]["error"] == "node 'root' step 's' (service 'slow'): timed out after 0.5s"
    assert answer.body["q"]["predictions"] == ["quick"]
    assert {c["service"]: c["timeout"] for c in call.calls} == {"slow": 0.5, "quick": 9.0}


def test_node_name_step_timeout() -> None:
    nodes = {
        "root": {"routerType": "Sequence", "steps": [{"name": "sub", "nodeName": "inner", "timeout": 0.2}]},
        "inner": {"routerType": "Sequence", "steps": [{"name": "hang", "serviceName": "slow"}]},
    }
    answer = run(GraphRouter(graph(nodes), FakeCall(slow=forever)), {})
    assert answer.status == 504
    assert answer.body["error"] == "node 'root' step 'sub' (node 'inner'): timed out after 0.2s"


def test_graph_timeout_is_a_504_naming_the_step_in_flight() -> None:
    nodes = {
        "root": {"routerType": "Sequence", "steps": [{"name": "pre", "serviceName": "a"}, {"name": "fan", "nodeName": "ens"}]},
        "ens": {"routerType": "Ensemble", "steps": [{"name": "fast", "serviceName": "a"}, {"name": "stuck", "serviceName": "slow"}]},
    }
    call = FakeCall(a=tag("a"), slow=forever)
    answer = run(GraphRouter(graph(nodes, timeout=0.5), call), {})
    assert answer.status == 504
    assert answer.body == {
        "error": "graph 'default/g' timed out after 0.5s in node 'ens' step 'stuck' (service 'slow')",
        "node": "ens",
        "step": "stuck",
    }
    assert answer.route == [("root", "pre"), ("root", "fan"), ("ens", "fast"), ("ens", "stuck")]
    # Each call is told at most the time left in the graph.
    assert all(c["timeout"] is not None and c["timeout"] <= 0.5 for c in call.calls)


def test_retries_on_5xx_and_transport_errors() -> None:
    answers: list[Any] = [StepResult(503, {"error": "warming"}), StepError(502, "refused"), {"predictions": [1]}]

    def flaky(body: Any) -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    call = FakeCall(a=flaky)
    router = GraphRouter(graph({"root": {"routerType": "Sequence", "steps": [
        {"name": "s", "serviceName": "a", "retries": 2, "dependency": "Hard"}]}}), call)
    router.retry_backoff_s = 0.01
    answer = run(router, {})
    assert (answer.status, answer.body) == (200, {"predictions": [1]})
    assert call.called() == ["a", "a", "a"]
    assert answer.route == [("root", "s")]


def test_retries_exhausted_and_no_retry_on_4xx() -> None:
    call = FakeCall(a=failing(500, "broken"), b=failing(400, "bad input"))
    router = GraphRouter(graph({"root": {"routerType": "Ensemble", "steps": [
        {"name": "x", "serviceName": "a", "retries": 1}, {"name": "y", "serviceName": "b", "retries": 3}]}}), call)
    router.retry_backoff_s = 0.01
    answer = run(router, {})
    assert Counter(call.called()) == {"a": 2, "b": 1}
    assert answer.body["x"]["error"].endswith("answered 500: broken (after 2 attempts)")
    assert answer.body["y"]["error"].endswith("answered 400: bad input")


def test_retried_timeouts() -> None:
    attempts: list[int] = []

    async def slow_then_fast(body: Any) -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            await asyncio.Event().wait()
        return {"predictions": ["second try"]}

    router = GraphRouter(graph({"root": {"routerType": "Sequence", "steps": [
        {"serviceName": "a", "timeout": 0.2, "retries": 1}]}}), FakeCall(a=slow_then_fast))
    router.retry_backoff_s = 0.01
    answer = run(router, {})
    assert answer.status == 200 and len(attempts) == 2


def test_a_broken_call_still_names_node_and_step() -> None:
    def crash(body: Any) -> Any:
        raise RuntimeError("bug in the transport")

    router = GraphRouter(graph({"root": {"routerType": "Switch", "steps": [{"name": "s", "serviceUrl": "http://h/x"}]}}),
                         FakeCall(**{"http://h/x": crash}))
    answer = run(router, {})
    assert answer.status == 502
    assert answer.body["error"] == "node 'root' step 's' (url 'http://h/x'): RuntimeError: bug in the transport"


def test_unknown_protocol_is_refused() -> None:
    router = GraphRouter(graph({"root": {"routerType": "Sequence", "steps": [{"serviceName": "a"}]}}), FakeCall())
    with pytest.raises(ValueError, match="v1 or v2"):
        run(router, {}, protocol="v3")
