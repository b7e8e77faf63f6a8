"""KServe V1 (TF-Serving style) messages: ``instances`` in, ``predictions`` out."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from shipyard.protocol.errors import InvalidInput
from shipyard.protocol.v2 import encode, plain

_decoder = msgspec.json.Decoder()


def decode_instances(body: bytes) -> list[Any]:
    """Return the ``instances`` (or ``inputs``) list of a V1 predict body."""
    if not body:
        raise InvalidInput("request body is empty; expected a JSON object with 'instances' (a list)")
    try:
        payload = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidInput(f"expected a JSON object with 'instances' (a list), got a JSON {type(payload).__name__}")
    key = "instances" if "instances" in payload else "inputs" if "inputs" in payload else None
    if key is None:
        raise InvalidInput("missing 'instances': expected a JSON object with 'instances' (a list)")
    instances = payload[key]
    if not isinstance(instances, list):
        raise InvalidInput(f"'{key}' must be a list, got {type(instances).__name__}")
    return instances


def instances_to_array(instances: list[Any]) -> np.ndarray:
    """Turn V1 instances into one array: numeric when rectangular, else a 1-D object array."""
    try:
        array = np.asarray(instances)
        if array.dtype.kind in "biuf":
            return array
        if array.dtype.kind in "US":
            return np.array(instances, dtype=object)  # keep numbers mixed with strings as numbers
    except (ValueError, TypeError):
        pass
    objects = np.empty(len(instances), dtype=object)
    for index, item in enumerate(instances):
        objects[index] = item
    return objects


def records_to_columns(instances: list[Any]) -> dict[str, np.ndarray] | None:
    """Instances given as records (``[{"a": 1, "b": 2}, ...]``) as one array per column, else None."""
    if not instances or not all(isinstance(item, dict) for item in instances):
        return None
    keys = list(instances[0])
    for row, item in enumerate(instances):
        if list(item) != keys and set(item) != set(keys):
            raise InvalidInput(f"instance {row} has keys {sorted(item)}, but instance 0 has {sorted(keys)}")
    return {key: instances_to_array([item[key] for item in instances]) for key in keys}


def encode_predictions(array: np.ndarray) -> bytes:
    """Encode one output array as ``{"predictions": [...]}`` (BYTES become text)."""
    predictions = array.tolist()
    if array.dtype.kind in "OS":
        predictions = plain(predictions)
    return encode({"predictions": predictions})
