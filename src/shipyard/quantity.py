"""Kubernetes quantities (``2``, ``500m``, ``4Gi``) and byte sizes shown the way Fluid prints them."""

from __future__ import annotations

import math
import re
from typing import Any

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([a-zA-Z]*)$")
_SUFFIXES = {"": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
             "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60}
_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NOT_A_DURATION = "is not a duration; expected e.g. 500ms, 6s, 1m, 1h, 1h30m or a number of seconds"


class QuantityError(ValueError):
    """A value that is not a quantity; ``path`` names the field it came from."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


def parse_quantity(value: Any, path: str = "") -> float:
    """A Kubernetes quantity (``2``, ``500m``, ``4Gi``, ``1.5``) as a number; QuantityError names ``path``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise QuantityError(path, f"expected a quantity such as 2, 500m or 4Gi, got {value!r}")
    match = _QUANTITY.match(str(value).strip())
    if not match or match.group(2) not in _SUFFIXES:
        raise QuantityError(path, f"expected a quantity such as 2, 500m or 4Gi, got {value!r}")
    return float(match.group(1)) * _SUFFIXES[match.group(2)]


def format_bytes(size: float) -> str:
    """``67108864`` -> ``64.00MiB`` (Fluid's style for ufsTotal, cached and cacheCapacity)."""
    value = float(size)
    for unit in _BINARY_UNITS:
        if abs(value) < 1024 or unit == _BINARY_UNITS[-1]:
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.2f}{unit}"
        value /= 1024
    return f"{value:.2f}{_BINARY_UNITS[-1]}"  # pragma: no cover - the loop always returns


def parse_duration(value: Any) -> float:
    """``"500ms"``, ``"6s"``, ``"1m"``, ``"1h30m"`` (Go's syntax, plus ``d``) or a number of seconds -> seconds (>= 0).

    ValueError says why not.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{value!r} {_NOT_A_DURATION}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip()
        sign, text = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.removeprefix("+"))
        try:
            seconds = sign * float(text)
        except ValueError:
            seconds, position = 0.0, 0
            for match in _DURATION_PART.finditer(text):
                if match.start() != position:
                    break
                seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
                position = match.end()
            if not text or position != len(text):
                raise ValueError(f"{value!r} {_NOT_A_DURATION}") from None
            seconds *= sign
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"{value!r} {_NOT_A_DURATION}")
    if seconds < 0:
        raise ValueError(f"{value!r} is negative")
    return seconds
