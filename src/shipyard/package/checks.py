"""Data checks: a package's declared signature (``inputs`` in shipyard.yaml) enforced on every request.

The server calls :meth:`InputChecks.before` on the decoded request tensors (whatever the protocol)
before the runtime's own check, and :meth:`InputChecks.after` on the runtime-checked tensors:

- ``before`` matches tensors to the declared inputs by name (a lone tensor fits a lone input),
  assembles a ``[-1, n]`` input from one tensor per named column when the request sends columns,
  and checks datatype (safe casts allowed) and shape;
- ``after`` checks every element against ``min``/``max``/``values``, per tensor and per column.

With ``checks: warn`` a broken rule is logged (at most once a second per model) and the request
goes on; the runtime's own checks stay strict, as the model could not run otherwise.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from shipyard.package.config import ColumnConfig, PackageConfig, TensorConfig
from shipyard.protocol.datatypes import DATATYPE_TO_DTYPE
from shipyard.protocol.errors import InvalidInput
from shipyard.runtimes.base import TensorSpec, Tensors, check_tensor

log = logging.getLogger("shipyard.checks")
WARN_EVERY_S = 1.0


@dataclass(frozen=True)
class Rule:
    """Allowed range and values for the elements of a tensor or one of its columns."""

    where: str
    min: float | None
    max: float | None
    values: tuple[Any, ...] | None

    @property
    def active(self) -> bool:
        return self.min is not None or self.max is not None or self.values is not None

    def check(self, array: np.ndarray, column: int | None) -> None:
        """Raise InvalidInput naming the first element that breaks the rule."""
        if not array.size:
            return
        if self.values is not None:
            bad = _not_allowed(array, self.values)
            if bad.any():
                raise InvalidInput(
                    f"{self.where}: value {_show(array[bad][0])} at {_position(bad, column)} is not one of the "
                    f"allowed values: {', '.join(map(str, self.values))}"
                )
        if (self.min is not None or self.max is not None) and array.dtype != object:
            low = -np.inf if self.min is None else self.min
            high = np.inf if self.max is None else self.max
            with np.errstate(invalid="ignore"):
                bad = ~((array >= low) & (array <= high))
            if bad.any():
                value = array[bad][0]
                if self.min is not None and value < self.min:
                    why = f"is below the minimum {self.min:g}"
                elif self.max is not None and value > self.max:
                    why = f"is above the maximum {self.max:g}"
                else:
                    why = f"is outside the allowed range [{low:g}, {high:g}]"
                raise InvalidInput(f"{self.where}: value {_show(value)} at {_position(bad, column)} {why}")


def _not_allowed(array: np.ndarray, values: tuple[Any, ...]) -> np.ndarray:
    """A boolean mask of the elements that are not among ``values``."""
    if array.dtype == object:  # BYTES tensors hold bytes (binary, gRPC) or str (JSON)
        allowed = {*values, *(v.encode() for v in values if isinstance(v, str))}
        flags = np.fromiter((item not in allowed for item in array.ravel()), dtype=bool, count=array.size)
        return flags.reshape(array.shape)
    return ~np.isin(array, [v for v in values if not isinstance(v, str)])


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return repr(value.item() if isinstance(value, np.generic) else value)


def _position(bad: np.ndarray, column: int | None) -> str:
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    if column is not None:
        return f"row {index[0]}"
    return f"index {list(index)}" if len(index) > 1 else f"row {index[0]}"


def _rule(where: str, item: TensorConfig | ColumnConfig) -> Rule:
    return Rule(where, item.min, item.max, tuple(item.values) if item.values is not None else None)


@dataclass(frozen=True)
class DeclaredInput:
    """One declared input: its spec, its column names, and the rules on it and its columns."""

    spec: TensorSpec
    columns: tuple[str, ...]
    rule: Rule
    column_rules: tuple[Rule, ...]

    @classmethod
    def from_config(cls, model: str, item: TensorConfig) -> "DeclaredInput":
        where = f"input '{item.name}'"
        columns = [c if isinstance(c, ColumnConfig) else ColumnConfig(name=c) for c in item.columns or []]
        return cls(
            spec=TensorSpec(item.name, item.datatype, tuple(item.shape)),
            columns=tuple(c.name for c in columns),
            rule=_rule(where, item),
            column_rules=tuple(_rule(f"{where}, column '{c.name}'", c) for c in columns),
        )

    def assemble(self, tensors: Tensors) -> np.ndarray | None:
        """Stack one tensor per column into the ``[-1, n]`` input; None when no column was sent."""
        sent = [name for name in self.columns if name in tensors]
        if not sent:
            return None
        missing = [name for name in self.columns if name not in tensors]
        if missing:
            raise InvalidInput(
                f"input '{self.spec.name}': missing column '{missing[0]}'; send every column "
                f"({', '.join(self.columns)}) or one tensor '{self.spec.name}' of shape {list(self.spec.shape)}"
            )
        parts = []
        for name in self.columns:
            column = tensors[name]
            if column.ndim == 2 and column.shape[1] == 1:
                column = column[:, 0]
            if column.ndim != 1:
                raise InvalidInput(
                    f"input '{self.spec.name}': column '{name}' must have shape [-1] or [-1, 1], got {list(column.shape)}"
                )
            parts.append(check_tensor(TensorSpec(name, self.spec.datatype, (-1,)), column))
        rows = {len(part) for part in parts}
        if len(rows) > 1:
            raise InvalidInput(f"input '{self.spec.name}': its columns have different lengths: {sorted(rows)}")
        table = np.empty((len(parts[0]), len(parts)), dtype=DATATYPE_TO_DTYPE[self.spec.datatype])
        for j, part in enumerate(parts):
            table[:, j] = part
        return table

    def check_values(self, array: np.ndarray) -> None:
        if self.rule.active:
            self.rule.check(array, None)
        if array.ndim == 2 and array.shape[1] == len(self.column_rules):
            for j, rule in enumerate(self.column_rules):
                if rule.active:
                    rule.check(array[:, j], j)


class InputChecks:
    """The declared inputs of one model and how strictly to hold requests to them."""

    def __init__(self, model: str, declared: Sequence[DeclaredInput], strict: bool) -> None:
        self.model = model
        self.declared = list(declared)
        self.strict = strict
        #: Requests that broke a rule (in warn mode they were served anyway).
        self.violations = 0
        self._warned_at = 0.0

    @property
    def specs(self) -> list[TensorSpec]:
        return [item.spec for item in self.declared]

    def before(self, tensors: Tensors, runtime_inputs: Sequence[TensorSpec]) -> Tensors:
        """Match the request to the declared inputs, then rename them to the runtime's input names."""
        try:
            matched = self._match(tensors)
        except InvalidInput as exc:
            self._broken(exc)
            return tensors
        if len(runtime_inputs) == 1 and len(matched) == 1:
            return {runtime_inputs[0].name: next(iter(matched.values()))}
        return matched

    def _match(self, tensors: Tensors) -> Tensors:
        declared = self.declared
        if len(declared) == 1 and len(tensors) == 1 and next(iter(tensors)) not in declared[0].columns:
            tensors = {declared[0].spec.name: next(iter(tensors.values()))}
        matched: Tensors = {}
        used: set[str] = set()
        for item in declared:
            name = item.spec.name
            if name in tensors:
                array = tensors[name]
                used.add(name)
            else:
                array = item.assemble(tensors) if item.columns else None
                if array is None:
                    raise InvalidInput(f"missing input '{name}' ({item.spec.describe()}) for model '{self.model}'")
                used.update(item.columns)
            matched[name] = check_tensor(item.spec, array)
        extra = [name for name in tensors if name not in used]
        if extra:
            takes = ", ".join(item.spec.name for item in declared)
            raise InvalidInput(f"unknown input '{extra[0]}' for model '{self.model}'; it takes: {takes}")
        return matched

    def after(self, checked: Tensors) -> Tensors:
        """Check element values against the declared ranges and allowed values."""
        arrays = list(checked.values())
        pairs = zip(self.declared, arrays) if len(arrays) == len(self.declared) == 1 else (
            (item, checked[item.spec.name]) for item in self.declared if item.spec.name in checked
        )
        try:
            for item, array in pairs:
                item.check_values(array)
        except InvalidInput as exc:
            self._broken(exc)
        return checked

    def _broken(self, exc: InvalidInput) -> None:
        """Count a broken rule; re-raise it when strict, else log it (rate-limited)."""
        self.violations += 1
        if self.strict:
            raise exc
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning("model '%s' (checks: warn): %s (%d requests broke a rule so far)", self.model, exc, self.violations)


def input_checks(model: str, config: PackageConfig) -> InputChecks | None:
    """The checks a package declares, or None when it declares no inputs."""
    if not config.inputs:
        return None
    declared = [DeclaredInput.from_config(model, item) for item in config.inputs]
    return InputChecks(model, declared, strict=config.checks == "strict")
