"""``shipyard predict NAME --data ...``: send one request to a running server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import msgspec
import numpy as np
import typer
from rich.console import Console

from shipyard.cli.errors import fail
if TYPE_CHECKING:
    from shipyard.client import InferenceClient
from shipyard.protocol.datatypes import datatype_of


def _read_data(data: str) -> Any:
    text = data
    if data.startswith("@"):
        path = Path(data[1:]).expanduser()
        if not path.is_file():
            fail(f"--data {data}: file {path} does not exist")
        text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"--data is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
             "pass JSON text or @file.json")


def _v2_body(client: InferenceClient, name: str, version: str | None, rows: list[Any]) -> dict[str, Any]:
    """Wrap bare rows as the model's first input, named and typed from its metadata."""
    array = np.asarray(rows)
    inputs = client.metadata(name, version).get("inputs") or []
    input_name = inputs[0]["name"] if inputs else "input-0"
    datatype = inputs[0]["datatype"] if inputs else datatype_of(array.dtype)
    return {"inputs": [{"name": input_name, "shape": list(array.shape), "datatype": datatype,
                        "data": array.ravel().tolist()}]}


def predict(
    name: str = typer.Argument(..., help="Model name on the server."),
    data: str = typer.Option(
        ..., "--data", "-d",
        help="JSON request: a V2 body ({\"inputs\": [...]}), a V1 body ({\"instances\": [...]}), or bare rows "
        "([[...], ...]); @file.json reads a file.",
        show_default=False,
    ),
    url: str = typer.Option("http://127.0.0.1:8080", help="Server URL."),
    v1: bool = typer.Option(False, "--v1", help="Use KServe V1 (:predict) instead of V2 (/infer)."),
    version: Optional[str] = typer.Option(None, help="Model version (V2 only)."),
) -> None:
    """Send an inference request to a running server and print the answer.

    [b]Examples[/b]

      shipyard predict iris -d '[[5.1, 3.5, 1.4, 0.2]]'

      shipyard predict iris --v1 -d '{"instances": [[5.1, 3.5, 1.4, 0.2]]}'

      shipyard predict iris -d @request.json --url http://127.0.0.1:9000
    """
    from shipyard.client import InferenceClient, InferenceServerError  # httpx only for this command

    payload = _read_data(data)
    with InferenceClient(url) as client:
        try:
            if v1:
                body = payload if isinstance(payload, dict) else {"instances": payload}
                path = f"/v1/models/{name}:predict"
            else:
                if isinstance(payload, dict) and "instances" in payload:
                    fail("--data is a V1 body ('instances'); add --v1, or send a V2 body with 'inputs'")
                body = payload if isinstance(payload, dict) else _v2_body(client, name, version, payload)
                path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
            answer = client.request("POST", path, msgspec.json.encode(body))
        except InferenceServerError as exc:
            fail(exc.message if exc.status == 0 else f"server answered {exc.status}: {exc.message}")
    Console().print_json(data=answer)
