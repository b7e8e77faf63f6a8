"""Multi-armed bandit state for ``Bandit`` nodes: policies, pending decisions, rewards.

An arm is a step of a Bandit node. ``choose`` picks one and counts a pull; when a request id is
given, the decision waits in a bounded map (oldest dropped) until ``reward(request_id, r)``
credits every (node, arm) that request went through.

Policies (``BanditConfig.policy``):

- ``epsilon-greedy``: with probability epsilon a uniformly random arm, else the best mean reward;
- ``ucb1``: the best ``mean + scale * sqrt(2 ln N / n)`` (n = the arm's pulls, N = all pulls; scale
  is 1 for rewards in [0, 1], else twice the node's reward standard deviation);
- ``thompson``: a sample from each arm's posterior, the highest wins: Beta(1 + sum, 1 + n - sum)
  while every reward seen on the node is in [0, 1], a Gaussian around the mean otherwise.

Every policy first pulls each arm once (in step order). An arm pulled but not yet rewarded
counts with the node's mean reward as its mean, so a missing reward does not make it a
favourite. Ties go to the arm with fewer pulls, then to the random generator (seeded by
``BanditConfig.seed`` when set, so runs repeat).
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

from shipyard.graph.spec import BANDIT_POLICIES, BanditConfig

__all__ = ["BanditState", "UnknownRequestError", "STATE_VERSION"]

STATE_VERSION = 1
SAVED_PENDING = 10_000


class UnknownRequestError(KeyError):
    """A reward for a request id with no pending decision (HTTP 404)."""

    status = 404

    def __init__(self, request_id: str) -> None:
        super().__init__(request_id)
        self.request_id = request_id
        self.message = (
            f"no bandit decision is waiting for request id {request_id!r} "
            "(unknown, already rewarded, or dropped as one of the oldest)"
        )

    def __str__(self) -> str:
        return self.message


class _hybrid:
    """``BanditState.load(path)`` makes a new state; ``state.load(path)`` loads into ``state``."""

    def __init__(self, func: Callable[..., "BanditState"]) -> None:
        self.func = func
        self.__doc__ = func.__doc__

    def __get__(self, obj: "BanditState | None", owner: type["BanditState"]) -> Callable[..., "BanditState"]:
        if obj is None:
            return lambda path: self.func(owner(), path)
        return functools.partial(self.func, obj)


def _new_arm() -> dict[str, float]:
    return {"pulls": 0, "reward_sum": 0.0, "reward_sq": 0.0, "rewards": 0}


class BanditState:
    """Arm statistics per Bandit node, the pending decisions, and persistence."""

    def __init__(self, max_pending: int = 100_000) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.max_pending = max_pending
        self.arms: dict[str, dict[str, dict[str, float]]] = {}
        self._ranges: dict[str, list[float]] = {}  # node -> [min reward, max reward]
        self._configs: dict[str, BanditConfig] = {}
        self._rngs: dict[str, random.Random] = {}
        self._pending: OrderedDict[str, list[tuple[str, str]]] = OrderedDict()
        self._lock = threading.RLock()

    # -- configuration -----------------------------------------------------------------------

    def configure(self, node: str, config: BanditConfig) -> None:
        """Set a node's policy; a new seed restarts its random generator."""
        if config.policy not in BANDIT_POLICIES:
            raise ValueError(f"unknown bandit policy {config.policy!r} (known: {', '.join(BANDIT_POLICIES)})")
        with self._lock:
            old = self._configs.get(node)
            self._configs[node] = config
            if old is None or old.seed != config.seed or node not in self._rngs:
                self._rngs[node] = random.Random(config.seed)

    def sync_arms(self, arms_by_node: dict[str, Sequence[str]]) -> None:
        """Make the state match a graph: every listed arm present (0 pulls when new), other
        nodes and arms dropped with their pending decisions."""
        with self._lock:
            for node in list(self.arms):
                if node not in arms_by_node:
                    del self.arms[node]
                    self._ranges.pop(node, None)
            for node, arms in arms_by_node.items():
                stats = self.arms.setdefault(node, {})
                for arm in list(stats):
                    if arm not in arms:
                        del stats[arm]
                for arm in arms:
                    stats.setdefault(arm, _new_arm())
            for request_id in list(self._pending):
                kept = [(n, a) for n, a in self._pending[request_id] if a in self.arms.get(n, {})]
                if kept:
                    self._pending[request_id] = kept
                else:
                    del self._pending[request_id]

    def config(self, node: str) -> BanditConfig:
        """The node's policy (the default, Thompson sampling, when never configured)."""
        return self._configs.get(node) or BanditConfig()

    # -- decisions ---------------------------------------------------------------------------

    def choose(self, node: str, arms: Sequence[str], request_id: str | None = None) -> str:
        """Pick one of ``arms`` for ``node``, count the pull, remember it for ``request_id``."""
        if not arms:
            raise ValueError(f"bandit node {node!r} has no arms")
        with self._lock:
            if node not in self._rngs:
                self.configure(node, self.config(node))
            stats = self.arms.setdefault(node, {})
            for arm in arms:
                stats.setdefault(arm, _new_arm())
            arm = self._pick(node, list(arms))
            stats[arm]["pulls"] += 1
            if request_id is not None:
                self.record(request_id, node, arm)
            return arm

    def record(self, request_id: str, node: str, arm: str) -> None:
        """Remember that ``request_id`` went through ``arm`` of ``node`` (bounded, oldest dropped)."""
        with self._lock:
            decisions = self._pending.get(request_id)
            if decisions is None:
                self._pending[request_id] = [(node, arm)]
                while len(self._pending) > self.max_pending:
                    self._pending.popitem(last=False)
            else:
                decisions.append((node, arm))

    def pending(self, request_id: str) -> list[tuple[str, str]] | None:
        """The (node, arm) decisions waiting for ``request_id``'s reward, if any."""
        with self._lock:
            decisions = self._pending.get(request_id)
            return list(decisions) if decisions is not None else None

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def reward(self, request_id: str, reward: float) -> list[tuple[str, str]]:
        """Credit ``reward`` to every (node, arm) ``request_id`` went through; returns them."""
        if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
            raise ValueError(f"reward must be a finite number, got {reward!r}")
        value = float(reward)
        with self._lock:
            decisions = self._pending.pop(request_id, None)
            if decisions is None:
                raise UnknownRequestError(request_id)
            for node, arm in decisions:
                stats = self.arms.setdefault(node, {}).setdefault(arm, _new_arm())
                stats["rewards"] += 1
                stats["reward_sum"] += value
                stats["reward_sq"] += value * value
                bounds = self._ranges.setdefault(node, [value, value])
                bounds[0] = min(bounds[0], value)
                bounds[1] = max(bounds[1], value)
            return list(decisions)

    # -- policies ----------------------------------------------------------------------------

    def _pick(self, node: str, arms: list[str]) -> str:
        stats = self.arms[node]
        for arm in arms:
            if stats[arm]["pulls"] == 0:
                return arm
        config = self.config(node)
        rng = self._rngs[node]
        prior = self._node_mean(node, arms)
        means = {arm: self._mean(stats[arm], prior) for arm in arms}
        if config.policy == "epsilon-greedy":
            if rng.random() < config.epsilon:
                return arms[rng.randrange(len(arms))]
            scores = means
        elif config.policy == "ucb1":
            total = sum(stats[arm]["pulls"] for arm in arms)
            # Rewards in [0, 1]: UCB1 as published. Otherwise the bonus is scaled by twice the
            # node's reward standard deviation (which is 1 for a fair coin, so the two agree).
            scale = 1.0 if self._unit(node) else 2.0 * math.sqrt(self._node_variance(node, arms))
            scores = {
                arm: means[arm] + scale * math.sqrt(2.0 * math.log(total) / stats[arm]["pulls"]) for arm in arms
            }
        else:
            scores = self._thompson(node, arms, means, prior, rng)
        best = max(scores.values())
        tied = [arm for arm in arms if scores[arm] >= best]
        if len(tied) > 1:
            fewest = min(stats[arm]["pulls"] for arm in tied)
            tied = [arm for arm in tied if stats[arm]["pulls"] == fewest]
        return tied[0] if len(tied) == 1 else tied[rng.randrange(len(tied))]

    def _thompson(
        self, node: str, arms: list[str], means: dict[str, float], prior: float, rng: random.Random
    ) -> dict[str, float]:
        stats = self.arms[node]
        if self._unit(node):
            scores = {}
            for arm in arms:
                n, total = stats[arm]["rewards"], stats[arm]["reward_sum"]
                scores[arm] = rng.betavariate(1.0 + total, 1.0 + max(n - total, 0.0))
            return scores
        node_var = self._node_variance(node, arms)
        scores = {}
        for arm in arms:
            n = stats[arm]["rewards"]
            if n == 0:
                scores[arm] = rng.gauss(prior, math.sqrt(node_var))
                continue
            if n >= 2:
                var = max((stats[arm]["reward_sq"] - n * means[arm] ** 2) / (n - 1), 0.0)
                var = max(var, node_var / n, 1e-12)
            else:
                var = node_var
            scores[arm] = rng.gauss(means[arm], math.sqrt(var / n))
        return scores

    def _mean(self, arm: dict[str, float], prior: float) -> float:
        return arm["reward_sum"] / arm["rewards"] if arm["rewards"] else prior

    def _node_mean(self, node: str, arms: list[str]) -> float:
        stats = self.arms[node]
        n = sum(stats[arm]["rewards"] for arm in arms)
        return sum(stats[arm]["reward_sum"] for arm in arms) / n if n else 0.5

    def _node_variance(self, node: str, arms: list[str]) -> float:
        stats = self.arms[node]
        n = sum(stats[arm]["rewards"] for arm in arms)
        if n < 2:
            return 1.0
        total = sum(stats[arm]["reward_sum"] for arm in arms)
        squares = sum(stats[arm]["reward_sq"] for arm in arms)
        return max((squares - total * total / n) / (n - 1), 1e-6)

    def _unit(self, node: str) -> bool:
        bounds = self._ranges.get(node)
        return bounds is None or (bounds[0] >= 0.0 and bounds[1] <= 1.0)

    # -- reporting and persistence ----------------------------------------------------------

    def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{node: {arm: {"pulls", "meanReward", "rewards"}}}`` (meanReward None before a reward)."""
        with self._lock:
            return {
                node: {
                    arm: {
                        "pulls": int(stats["pulls"]),
                        "meanReward": stats["reward_sum"] / stats["rewards"] if stats["rewards"] else None,
                        "rewards": int(stats["rewards"]),
                    }
                    for arm, stats in arms.items()
                }
                for node, arms in self.arms.items()
            }

    def to_json(self) -> dict[str, Any]:
        """Everything ``save`` writes (the newest pending decisions only)."""
        with self._lock:
            pending = list(self._pending.items())[-SAVED_PENDING:]
            return {
                "version": STATE_VERSION,
                "arms": {node: {arm: dict(stats) for arm, stats in arms.items()} for node, arms in self.arms.items()},
                "ranges": {node: list(bounds) for node, bounds in self._ranges.items()},
                "pending": [[request_id, [list(item) for item in decisions]] for request_id, decisions in pending],
            }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the state as JSON, atomically (a temporary file renamed over ``path``)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(self.to_json(), separators=(",", ":"))
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, target)
        except BaseException:
            try:
                os.unlink(temporary)
            except FileNotFoundError:
                pass
            raise

    @_hybrid
    def load(self, path: str | os.PathLike[str]) -> "BanditState":
        """Replace statistics and pending decisions with ``path``'s (a missing file: nothing)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            return self
        try:
            data = json.loads(text)
            arms, ranges, pending = self._parse(data)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"bandit state {os.fspath(path)} is not valid: {exc}") from None
        with self._lock:
            self.arms = arms
            self._ranges = ranges
            self._pending = pending
            while len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)
        return self

    @staticmethod
    def _parse(
        data: Any,
    ) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, list[float]], OrderedDict[str, list[tuple[str, str]]]]:
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValueError(f"expected an object with version {STATE_VERSION}")
        arms: dict[str, dict[str, dict[str, float]]] = {}
        for node, node_arms in data.get("arms", {}).items():
            arms[node] = {}
            for arm, stats in node_arms.items():
                arms[node][arm] = {
                    "pulls": int(stats["pulls"]),
                    "reward_sum": float(stats["reward_sum"]),
                    "reward_sq": float(stats["reward_sq"]),
                    "rewards": int(stats["rewards"]),
                }
        ranges = {node: [float(bounds[0]), float(bounds[1])] for node, bounds in data.get("ranges", {}).items()}
        pending: OrderedDict[str, list[tuple[str, str]]] = OrderedDict()
        for request_id, decisions in data.get("pending", []):
            pending[str(request_id)] = [(str(node), str(arm)) for node, arm in decisions]
        return arms, ranges, pending
