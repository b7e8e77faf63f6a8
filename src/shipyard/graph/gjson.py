"""The subset of GJSON (github.com/tidwall/gjson) that InferenceGraph conditions use.

KServe's router evaluates a step's ``condition`` as ``gjson.GetBytes(body, condition).Exists()``.
This module evaluates the same queries over a decoded JSON document (dicts, lists, str, int,
float, bool, None).

Supported:

- dotted paths ``a.b.c``; ``\\`` escapes the next character (``fav\\.movie``); ``*`` and ``?`` in a key
  match any run of characters / one character (the first matching key wins);
- array index ``items.0`` (a number on an object is an ordinary key);
- ``#``: the length of an array when last (``items.#``), else the rest of the path applied to each
  element, collected into an array (``items.#.name``);
- queries: ``#(path op value)`` (first matching element) and ``#(path op value)#`` (all matches,
  the rest of the path then applies to each), with ``==`` (or ``=``), ``!=``, ``<``, ``<=``, ``>``,
  ``>=``, ``%`` (like: ``*`` and ``?`` wildcards), ``!%`` (not like); ``#(path)`` (element has
  ``path``); an empty path compares the element itself (``#(=="fb")``); the path may be nested
  and hold queries of its own (``#(nets.#(=="fb"))``); the value is a JSON string (``"red"``) or a
  bare token (``client``, ``10``, ``true``);
- ``@this`` (the current value) and multipaths ``[a,b.c]`` building an array of the values that exist.

Comparison follows GJSON: a string element compares as a string, a number as a float (a value
that is not a number counts as 0), ``true``/``false`` against ``true``/``false``; null, object and
array elements never match an operator.

Not supported (a parse error with the position): other modifiers (``@reverse``...), ``|`` pipes,
``{...}`` object multipaths, ``..`` JSON lines, ``~`` boolean queries, literals ``!true``.

One difference from GJSON, on purpose: ``exists()`` of an all-matches query (or ``#`` mapping)
that collected nothing is False (GJSON returns ``[]``, which "exists").
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any, Union

__all__ = ["GjsonError", "Query", "parse", "get", "exists", "MISSING"]


class GjsonError(ValueError):
    """A query that does not parse; ``position`` is the 0-based character offset."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at position {position}")
        self.message = message
        self.position = position


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class _Collected(list):
    """An array built by ``#`` or ``#(...)#``: empty means "nothing matched"."""


@dataclass(frozen=True)
class _Key:
    text: str
    pattern: re.Pattern[str] | None  # set when the key holds wildcards


@dataclass(frozen=True)
class _Count:
    pass


@dataclass(frozen=True)
class _This:
    pass


@dataclass(frozen=True)
class _Query:
    path: tuple["_Component", ...]
    op: str | None
    value: str
    all: bool


@dataclass(frozen=True)
class _Multi:
    paths: tuple[tuple["_Component", ...], ...]


_Component = Union[_Key, _Count, _This, _Query, _Multi]


@dataclass(frozen=True)
class Query:
    """A parsed query."""

    text: str
    path: tuple[_Component, ...]

    def get(self, document: Any) -> Any:
        """The value at the query, or ``MISSING``."""
        return _eval(self.path, 0, document)

    def exists(self, document: Any) -> bool:
        """GJSON's ``Exists()`` (an empty all-matches result is False)."""
        result = self.get(document)
        if result is MISSING:
            return False
        return not (isinstance(result, _Collected) and not result)


_OPS = ("==", "!=", "<=", ">=", "!%", "=", "<", ">", "%")
_QUERY_PATH_STOP = frozenset("=!<>%) ")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str, position: int | None = None) -> GjsonError:
        return GjsonError(message, self.pos if position is None else position)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def path(self, stop: frozenset[str], allow_empty: bool = False) -> tuple[_Component, ...]:
        """Components separated by ``.`` until end of text or a character in ``stop``."""
        components: list[_Component] = []
        if self.pos >= len(self.text) or self.peek() in stop:
            if allow_empty:
                return ()
            raise self.error("empty path")
        while True:
            components.append(self.component(stop))
            char = self.peek()
            if char == "":
                return tuple(components)
            if char == ".":
                self.pos += 1
                if self.pos >= len(self.text) or self.peek() in stop or self.peek() == ".":
                    raise self.error("empty path component")
                continue
            if char in stop:
                return tuple(components)
            if char == "|":
                raise self.error("'|' pipes are not supported")
            raise self.error(f"unexpected {char!r}")

    def component(self, stop: frozenset[str]) -> _Component:
        char = self.peek()
        if char == "@":
            start = self.pos
            end = start + 1
            while end < len(self.text) and (self.text[end].isalnum() or self.text[end] == "_"):
                end += 1
            name = self.text[start:end]
            if name != "@this":
                raise self.error(f"modifier {name!r} is not supported (only @this)", start)
            self.pos = end
            return _This()
        if char == "[":
            return self.multipath()
        if char == "{":
            raise self.error("'{...}' object multipaths are not supported")
        if char == "#":
            if self.text.startswith("#(", self.pos):
                return self.query()
            self.pos += 1
            return _Count()
        return self.key(stop)

    def key(self, stop: frozenset[str]) -> _Key:
        start = self.pos
        chars: list[str] = []
        regex: list[str] = []
        wildcard = False
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\\":
                if self.pos + 1 >= len(self.text):
                    raise self.error("'\\' at the end of the query")
                escaped = self.text[self.pos + 1]
                chars.append(escaped)
                regex.append(re.escape(escaped))
                self.pos += 2
                continue
            if char in ".|" or char in stop:
                break
            if char in "()[]{}":
                # Special characters start something else; keys holding them need escaping.
                raise self.error(f"unexpected {char!r} in a key (escape it with '\\')")
            if char in "*?":
                wildcard = True
                regex.append(".*" if char == "*" else ".")
            else:
                regex.append(re.escape(char))
            chars.append(char)
            self.pos += 1
        if self.pos == start:
            raise self.error("empty path component")
        pattern = re.compile("".join(regex), re.DOTALL) if wildcard else None
        return _Key("".join(chars), pattern)

    def multipath(self) -> _Multi:
        self.pos += 1  # "["
        paths: list[tuple[_Component, ...]] = []
        stop = frozenset(",]")
        while True:
            while self.peek() == " ":
                self.pos += 1
            paths.append(self.path(stop))
            while self.peek() == " ":
                self.pos += 1
            char = self.peek()
            if char == ",":
                self.pos += 1
                continue
            if char == "]":
                self.pos += 1
                return _Multi(tuple(paths))
            raise self.error("expected ',' or ']' in a multipath")

    def query(self) -> _Query:
        open_at = self.pos + 1
        self.pos += 2  # "#("
        self.spaces()
        path = self.path(_QUERY_PATH_STOP, allow_empty=True)
        self.spaces()
        op: str | None = None
        value = ""
        if self.peek() != ")":
            op = next((candidate for candidate in _OPS if self.text.startswith(candidate, self.pos)), None)
            if op is None:
                if self.pos >= len(self.text):
                    raise self.error(f"query opened at position {open_at} is not closed with ')'")
                raise self.error(f"expected an operator (==, !=, <, <=, >, >=, %, !%) or ')', found {self.peek()!r}")
            self.pos += len(op)
            if op == "=":
                op = "=="
            self.spaces()
            value = self.value()
            self.spaces()
        elif not path:
            raise self.error("empty query '#()'")
        if self.peek() != ")":
            raise self.error(f"query opened at position {open_at} is not closed with ')'")
        self.pos += 1
        every = False
        if self.peek() == "#":
            every = True
            self.pos += 1
        return _Query(path, op, value, every)

    def value(self) -> str:
        start = self.pos
        if self.peek() == '"':
            end = self.pos + 1
            while end < len(self.text):
                if self.text[end] == "\\":
                    end += 2
                    continue
                if self.text[end] == '"':
                    break
                end += 1
            if end >= len(self.text):
                raise self.error("unterminated string", start)
            try:
                decoded = json.loads(self.text[start : end + 1])
            except ValueError as exc:
                raise self.error(f"bad string ({exc})", start) from None
            self.pos = end + 1
            return decoded
        depth = 0
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "(":
                depth += 1
            elif char == ")":
                if depth == 0:
                    break
                depth -= 1
            self.pos += 1
        token = self.text[start : self.pos].rstrip()
        if not token:
            raise self.error("missing value after the operator", start)
        return token

    def spaces(self) -> None:
        while self.peek() == " ":
            self.pos += 1


@functools.lru_cache(maxsize=1024)
def parse(query: str) -> Query:
    """Parse ``query``; raises ``GjsonError`` with the position of the problem."""
    if not isinstance(query, str):
        raise GjsonError("a query must be a string", 0)
    parser = _Parser(query)
    path = parser.path(frozenset())
    return Query(query, path)


def get(document: Any, query: str, default: Any = None) -> Any:
    """The value ``query`` selects in ``document``, or ``default`` when nothing is there."""
    result = parse(query).get(document)
    if result is MISSING:
        return default
    return _plain(result)


def exists(document: Any, query: str) -> bool:
    """Whether ``query`` selects something in ``document`` (KServe's condition test)."""
    return parse(query).exists(document)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, _Collected) else value


def _eval(path: tuple[_Component, ...], index: int, current: Any) -> Any:
    while index < len(path):
        component = path[index]
        if isinstance(component, _Key):
            current = _lookup(current, component)
            if current is MISSING:
                return MISSING
        elif isinstance(component, _Count):
            if not isinstance(current, list):
                return MISSING
            if index == len(path) - 1:
                return len(current)
            return _map(path, index + 1, current)
        elif isinstance(component, _Query):
            if not isinstance(current, list):
                return MISSING
            if component.all:
                matches = [element for element in current if _matches(component, element)]
                if index == len(path) - 1:
                    return _Collected(matches)
                return _map(path, index + 1, matches)
            current = next((element for element in current if _matches(component, element)), MISSING)
            if current is MISSING:
                return MISSING
        elif isinstance(component, _Multi):
            values = (_eval(sub, 0, current) for sub in component.paths)
            current = [_plain(value) for value in values if value is not MISSING]
        # _This leaves the current value as it is.
        index += 1
    return current


def _map(path: tuple[_Component, ...], index: int, elements: list[Any]) -> _Collected:
    values = (_eval(path, index, element) for element in elements)
    return _Collected(_plain(value) for value in values if value is not MISSING)


def _lookup(current: Any, key: _Key) -> Any:
    if isinstance(current, dict):
        if key.pattern is None:
            return current.get(key.text, MISSING)
        for name, value in current.items():
            if isinstance(name, str) and key.pattern.fullmatch(name):
                return value
        return MISSING
    if isinstance(current, list) and key.pattern is None and key.text.isdigit() and key.text.isascii():
        position = int(key.text)
        return current[position] if position < len(current) else MISSING
    return MISSING


@functools.lru_cache(maxsize=256)
def _like(pattern: str) -> re.Pattern[str]:
    parts: list[str] = []
    position = 0
    while position < len(pattern):
        char = pattern[position]
        if char == "\\" and position + 1 < len(pattern):
            parts.append(re.escape(pattern[position + 1]))
            position += 2
            continue
        parts.append(".*" if char == "*" else "." if char == "?" else re.escape(char))
        position += 1
    return re.compile("".join(parts), re.DOTALL)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0  # GJSON: strconv.ParseFloat's error is ignored


def _matches(query: _Query, element: Any) -> bool:
    value = _eval(query.path, 0, element) if query.path else element
    if value is MISSING:
        return False
    if query.op is None:
        return True
    op, wanted = query.op, query.value
    if isinstance(value, bool):
        truth = "true" if value else "false"
        if op == "==":
            return wanted == truth
        if op == "!=":
            return wanted != truth
        if value:  # true sorts after false
            return {">": wanted == "false", ">=": True, "<": False, "<=": wanted == "true"}.get(op, False)
        return {">": False, ">=": wanted == "false", "<": wanted == "true", "<=": True}.get(op, False)
    if isinstance(value, str):
        if op == "%":
            return _like(wanted).fullmatch(value) is not None
        if op == "!%":
            return _like(wanted).fullmatch(value) is None
        return _compare(op, value, wanted)
    if isinstance(value, (int, float)):
        if op in ("%", "!%"):
            return False
        return _compare(op, float(value), _number(wanted))
    return False  # null, objects and arrays match no operator


def _compare(op: str, left: Any, right: Any) -> bool:
    if op == "==":
        return left == right
    if op == "!=":
        return left != right
    if op == "<":
        return left < right
    if op == "<=":
        return left <= right
    if op == ">":
        return left > right
    if op == ">=":
        return left >= right
    return False
