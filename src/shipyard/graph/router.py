"""Runs an inference graph: KServe's router (cmd/router/main.go) plus Shipyard's additions.

The router is transport-free: a ``Call`` function performs one service or URL step (the gateway
supplies it); ``nodeName`` steps are run here, recursively.

- Sequence: steps in order; each gets the node's input, or with ``data: $response`` the previous
  response chained (``chaining.py``). A step's condition is checked against the previous
  response (the input for the first step); no match stops the sequence and returns the last
  response (the input with 200 when no step ran). A failing Hard step aborts with its status;
  a failing Soft step's answer becomes the previous response and the sequence goes on. The
  sequence's answer is its last step's.
- Switch: the first step whose condition matches the input runs (a step without a condition
  always matches); no match answers 200 with the input (KServe's documentation; its code
  answers 404).
- Ensemble: every step concurrently on the input; ``{step name: body}``; the first failing Hard
  step (in step order) decides the status; a Soft failure appears as its error body.
- Splitter: smooth weighted round robin (exact over every 100 requests), not random.
- Bandit: ``BanditState.choose``; the decision waits under the request id for a reward.

Timeouts: per service step (``step.timeout_s``, else ``graph.step_timeout_s``), per nodeName step
(``step.timeout_s``) and for the whole graph (``graph.timeout_s``): 504 naming the node and step.
Retries (``step.retries``) repeat a service step on a transport error, a timeout or a 5xx, with a
short exponential backoff. Every failure answers ``{"error": "node 'n' step 's' (service 'x'):
...", "node": "n", "step": "s"}`` plus ``"cause"`` (the upstream's own body) when there was one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from shipyard.graph import chaining, gjson
from shipyard.graph.bandit import BanditState
from shipyard.graph.spec import BanditConfig, Graph, Node, Step

__all__ = ["StepResult", "StepError", "Call", "GraphAnswer", "GraphRouter", "PROTOCOLS"]

PROTOCOLS = ("v1", "v2")


@dataclass
class StepResult:
    """A service's answer: HTTP status and decoded JSON body."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class StepError(Exception):
    """A step that produced no answer (transport failure, timeout): the status to report."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Call = Callable[[Step, Any, str, dict[str, str], float | None], Awaitable[StepResult]]


@dataclass
class GraphAnswer:
    """The graph's answer and the (node, step) pairs taken, in order."""

    status: int
    body: Any
    route: list[tuple[str, str]]


@dataclass
class _Outcome:
    status: int
    body: Any  # the answer, or for a failure the error body naming node and step
    raw: Any = None  # for a failure: the upstream's own body, when it answered

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class _Run:
    protocol: str
    headers: dict[str, str]
    request_id: str
    deadline: float | None
    route: list[tuple[str, str]] = field(default_factory=list)
    inflight: dict[int, tuple[Node, Step]] = field(default_factory=dict)
    last: tuple[Node, Step] | None = None
    tokens: Any = field(default_factory=itertools.count)

    def remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return self.deadline - asyncio.get_running_loop().time()

    def start(self, node: Node, step: Step) -> int:
        token = next(self.tokens)
        self.inflight[token] = (node, step)
        self.last = (node, step)
        return token


def _error_body(node: Node, step: Step, message: str, cause: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "error": f"node {node.name!r} step {step.name!r} ({step.target}): {message}",
        "node": node.name,
        "step": step.name,
    }
    if cause is not None:
        body["cause"] = cause
    return body


def _upstream_message(status: int, body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        detail = body["error"]
    elif isinstance(body, str):
        detail = body
    else:
        try:
            detail = json.dumps(body)
        except (TypeError, ValueError):
            detail = repr(body)
    if len(detail) > 500:
        detail = detail[:500] + "..."
    return f"answered {status}: {detail}"


class GraphRouter:
    """Executes one graph; keeps the Splitter counters and uses ``bandits`` for Bandit nodes."""

    retry_backoff_s = 0.05
    max_backoff_s = 1.0

    def __init__(self, graph: Graph, call: Call, bandits: BanditState | None = None,
                 on_step: Callable[[str, str, bool], None] | None = None) -> None:
        self.graph = graph
        self.call = call
        self.bandits = bandits if bandits is not None else BanditState()
        #: Told ``(node, step, ok)`` after each step taken (ok: a 2xx outcome, after its retries).
        self.on_step = on_step
        self._split: dict[str, list[int]] = {}
        arms: dict[str, list[str]] = {}
        for node in graph.nodes.values():
            if node.router_type == "Bandit":
                self.bandits.configure(node.name, node.bandit or BanditConfig())
                arms[node.name] = [step.name for step in node.steps]
            elif node.router_type == "Splitter":
                self._split[node.name] = [0] * len(node.steps)
        # Statistics follow the graph: arms (and nodes) no longer in it are dropped, new ones
        # start at zero, existing ones keep what they learned.
        self.bandits.sync_arms(arms)

    async def run(self, body: Any, protocol: str, headers: dict[str, str], request_id: str) -> GraphAnswer:
        """Run the graph on ``body`` (decoded JSON) for protocol "v1" or "v2"."""
        protocol = protocol.lower()
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be v1 or v2, got {protocol!r}")
        timeout = self.graph.timeout_s
        loop = asyncio.get_running_loop()
        run = _Run(protocol, dict(headers), request_id, loop.time() + timeout if timeout else None)
        work = self._node(self.graph.root, body, run, run.route)
        if not timeout:
            outcome = await work
        else:
            task = asyncio.ensure_future(work)
            try:
                done, _ = await asyncio.wait({task}, timeout=timeout)
            except asyncio.CancelledError:
                task.cancel()
                raise
            if done:
                outcome = task.result()
            else:
                outcome = self._graph_timeout(run, timeout)  # before cancelling: what is in flight
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        return GraphAnswer(outcome.status, outcome.body, run.route)

    def _graph_timeout(self, run: _Run, timeout: float) -> _Outcome:
        inflight = list(run.inflight.values())
        services = [item for item in inflight if item[1].node_name is None]
        where = (services or inflight or [run.last])[0]
        label = f"graph '{self.graph.namespace}/{self.graph.name}' timed out after {timeout:g}s"
        if where is None:
            return _Outcome(504, {"error": label, "node": "root", "step": None})
        node, step = where
        body = {
            "error": f"{label} in node {node.name!r} step {step.name!r} ({step.target})",
            "node": node.name,
            "step": step.name,
        }
        return _Outcome(504, body)

    # -- nodes -------------------------------------------------------------------------------

    async def _node(self, node: Node, data: Any, run: _Run, route: list[tuple[str, str]]) -> _Outcome:
        kind = node.router_type
        if kind == "Sequence":
            return await self._sequence(node, data, run, route)
        if kind == "Switch":
            for step in node.steps:
                if step.condition is None or gjson.exists(data, step.condition):
                    return await self._step(node, step, data, run, route)
            return _Outcome(200, data)
        if kind == "Ensemble":
            return await self._ensemble(node, data, run, route)
        if kind == "Splitter":
            return await self._step(node, self._split_pick(node), data, run, route)
        if kind == "Bandit":
            arm = self.bandits.choose(node.name, [step.name for step in node.steps], run.request_id or None)
            step = next(step for step in node.steps if step.name == arm)
            return await self._step(node, step, data, run, route)
        raise ValueError(f"node {node.name!r}: unknown routerType {kind!r}")

    async def _sequence(self, node: Node, data: Any, run: _Run, route: list[tuple[str, str]]) -> _Outcome:
        previous = data
        last = _Outcome(200, data)
        for step in node.steps:
            if step.condition is not None and not gjson.exists(previous, step.condition):
                break
            try:
                step_data = chaining.step_input(step, data, previous, run.protocol)
            except chaining.ChainingError as exc:
                route.append((node.name, step.name))
                outcome = _Outcome(exc.status, _error_body(node, step, str(exc)))
            else:
                outcome = await self._step(node, step, step_data, run, route)
            last = outcome
            if outcome.ok:
                previous = outcome.body
            elif step.dependency == "Hard":
                return outcome
            else:
                previous = outcome.raw if outcome.raw is not None else outcome.body
        return last

    async def _ensemble(self, node: Node, data: Any, run: _Run, route: list[tuple[str, str]]) -> _Outcome:
        routes: list[list[tuple[str, str]]] = [[] for _ in node.steps]
        try:
            outcomes = await asyncio.gather(
                *(self._step(node, step, data, run, routes[index]) for index, step in enumerate(node.steps))
            )
        finally:  # also when the graph's timeout cancels the ensemble: the route shows what started
            for taken in routes:
                route.extend(taken)
        merged: dict[str, Any] = {}
        for step, outcome in zip(node.steps, outcomes):
            if not outcome.ok and step.dependency == "Hard":
                return outcome
            merged[step.name] = outcome.body
        return _Outcome(200, merged)

    def _split_pick(self, node: Node) -> Step:
        current = self._split[node.name]
        weights = [step.weight or 0 for step in node.steps]
        total = sum(weights)
        best = 0
        for index, weight in enumerate(weights):
            current[index] += weight
            if current[index] > current[best]:
                best = index
        current[best] -= total
        return node.steps[best]

    # -- steps -------------------------------------------------------------------------------

    async def _step(self, node: Node, step: Step, data: Any, run: _Run, route: list[tuple[str, str]]) -> _Outcome:
        route.append((node.name, step.name))
        if self.on_step is None:
            return await self._take(node, step, data, run, route)
        ok = False  # also when the graph's timeout cancels the step
        try:
            outcome = await self._take(node, step, data, run, route)
            ok = outcome.ok
            return outcome
        finally:
            self.on_step(node.name, step.name, ok)

    async def _take(self, node: Node, step: Step, data: Any, run: _Run, route: list[tuple[str, str]]) -> _Outcome:
        if step.node_name is None:
            return await self._service(node, step, data, run)
        work = self._node(self.graph.nodes[step.node_name], data, run, route)
        if step.timeout_s is None:
            return await work
        token = run.start(node, step)
        try:
            return await asyncio.wait_for(work, step.timeout_s)
        except asyncio.TimeoutError:
            return _Outcome(504, _error_body(node, step, f"timed out after {step.timeout_s:g}s"))
        finally:
            run.inflight.pop(token, None)

    async def _service(self, node: Node, step: Step, data: Any, run: _Run) -> _Outcome:
        timeout = step.timeout_s if step.timeout_s is not None else self.graph.step_timeout_s
        attempts = step.retries + 1
        outcome = _Outcome(500, _error_body(node, step, "not run"))
        for attempt in range(attempts):
            remaining = run.remaining()
            hint = timeout
            if remaining is not None:
                hint = max(min(timeout, remaining) if timeout is not None else remaining, 0.001)
            token = run.start(node, step)
            retryable = True
            try:
                if timeout is None:
                    result = await self.call(step, data, run.protocol, run.headers, hint)
                else:
                    result = await asyncio.wait_for(
                        self.call(step, data, run.protocol, run.headers, hint), timeout
                    )
            except asyncio.TimeoutError:
                outcome = _Outcome(504, _error_body(node, step, f"timed out after {timeout:g}s"))
            except StepError as exc:
                outcome = _Outcome(exc.status, _error_body(node, step, exc.message))
            except Exception as exc:  # noqa: BLE001 - a Call bug still names the node and step
                outcome = _Outcome(502, _error_body(node, step, f"{type(exc).__name__}: {exc}"))
            else:
                if 200 <= result.status < 300:
                    return _Outcome(result.status, result.body)
                message = _upstream_message(result.status, result.body)
                outcome = _Outcome(result.status, _error_body(node, step, message, result.body), result.body)
                retryable = result.status >= 500
            finally:
                run.inflight.pop(token, None)
            if not retryable or attempt == attempts - 1:
                break
            backoff = min(self.retry_backoff_s * (2**attempt), self.max_backoff_s)
            remaining = run.remaining()
            if remaining is not None and backoff >= remaining:
                break
            await asyncio.sleep(backoff)
        if attempts > 1 and outcome.body.get("error"):
            tried = attempt + 1
            if tried > 1:
                outcome.body["error"] += f" (after {tried} attempts)"
        return outcome
