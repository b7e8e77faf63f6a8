"""How one step's response becomes the next step's request (``data: $response``).

- V1: ``{"predictions": [...]}`` becomes ``{"instances": [...]}``. KServe does this only when the
  step sets ``mapPredictionsToInstances: true``; Shipyard does it by default and passes the body
  as-is only when the step sets ``mapPredictionsToInstances: false``.
- V2: ``{"outputs": [...]}`` becomes ``{"inputs": [...]}`` (KServe has no V2 chaining, #3051).
  Each output keeps ``name``, ``datatype``, ``shape`` and ``data``; ``parameters`` (the
  response's and each output's) are dropped; ``id`` is kept. Without ``inputMap`` every output
  passes under its own name; with ``inputMap`` only the outputs it names pass, renamed.
- Anything else (an Ensemble's object, the request itself, an error body) passes as-is.
"""

from __future__ import annotations

from typing import Any

from shipyard.graph.spec import Step

__all__ = ["ChainingError", "step_input", "chain", "predictions_to_instances", "outputs_to_inputs"]


class ChainingError(ValueError):
    """The previous response cannot become this step's request (HTTP 400)."""

    status = 400


def step_input(step: Step, request: Any, previous: Any, protocol: str) -> Any:
    """What ``step`` receives: the node's input, or the previous response chained."""
    if step.data != "$response":
        return request
    return chain(previous, protocol, step)


def chain(previous: Any, protocol: str, step: Step) -> Any:
    """``previous`` reshaped into a request of ``protocol`` ("v1" or "v2") for ``step``."""
    if not isinstance(previous, dict):
        return previous
    if protocol == "v1":
        if step.map_predictions_to_instances and "predictions" in previous:
            return predictions_to_instances(previous)
        return previous
    if protocol == "v2" and isinstance(previous.get("outputs"), list):
        return outputs_to_inputs(previous, step.input_map)
    return previous


def predictions_to_instances(body: dict[str, Any]) -> dict[str, Any]:
    """V1 ``{"predictions": p}`` -> ``{"instances": p}``."""
    return {"instances": body["predictions"]}


def outputs_to_inputs(body: dict[str, Any], input_map: dict[str, str] | None = None) -> dict[str, Any]:
    """A V2 response -> a V2 request, outputs renamed (and selected) by ``input_map``."""
    outputs = body["outputs"]
    by_name: dict[str, dict[str, Any]] = {}
    for index, output in enumerate(outputs):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise ChainingError(f"outputs[{index}] of the previous response has no name")
        by_name.setdefault(output["name"], output)
    if input_map is None:
        chosen = [(name, name) for name in by_name]
    else:
        missing = [name for name in input_map if name not in by_name]
        if missing:
            raise ChainingError(
                f"inputMap names output(s) {', '.join(repr(name) for name in missing)} "
                f"that the previous response does not have (it has {', '.join(repr(n) for n in by_name) or 'none'})"
            )
        chosen = list(input_map.items())
    inputs = []
    for output_name, input_name in chosen:
        output = by_name[output_name]
        tensor = {"name": input_name}
        for key in ("datatype", "shape", "data"):
            if key in output:
                tensor[key] = output[key]
        inputs.append(tensor)
    request: dict[str, Any] = {"inputs": inputs}
    if "id" in body:
        request["id"] = body["id"]
    return request
