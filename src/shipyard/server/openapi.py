"""The OpenAPI 3 document of the REST data plane (served at ``/openapi.json``).

It describes exactly the routes ``rest.RestApp.route`` serves and every status they can return;
a schemathesis test checks the server against it.
"""

from __future__ import annotations

from typing import Any

from shipyard import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}
_ERROR_TEXT = {
    "400": "Bad input: the message names the field or tensor and what was expected",
    "404": "Unknown model, version or route",
    "413": "Request body over the server's limit",
    "500": "The model itself raised (the message has the exception type)",
    "501": "The model has no explainer",
    "502": "A transformer's predictor could not be reached or gave no usable answer",
    "503": "Model or server not ready",
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _responses(ok: dict[str, Any], *errors: str) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "OK", "content": _json(ok)}}
    for code in ("400", "413", *errors):  # any request can be malformed or too large
        responses[code] = {"description": _ERROR_TEXT[code], "content": _json(_ERROR)}
    return responses


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


_NAME = {"name": "model_name", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {"name": "model_version", "in": "path", "required": True, "schema": {"type": "string"}}
_PARAMETERS = {"type": "object", "additionalProperties": {"oneOf": [
    {"type": "string"}, {"type": "number"}, {"type": "boolean"}]}}
_DATATYPE = {"type": "string", "enum": ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                                        "INT64", "FP16", "FP32", "FP64", "BF16", "BYTES"]}
_TENSOR_META = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string"}, "datatype": _DATATYPE, "shape": {"type": "array", "items": {"type": "integer"}}}}
_STAT = {"type": "object", "properties": {"count": {"type": "integer"}, "ns": {"type": "integer"}}}

_SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"], "properties": {
        "name": {"type": "string"}, "version": {"type": "string"},
        "extensions": {"type": "array", "items": {"type": "string"}}}},
    "ModelMetadata": {"type": "object", "required": ["name", "platform", "inputs", "outputs"], "properties": {
        "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"}, "inputs": {"type": "array", "items": _TENSOR_META},
        "outputs": {"type": "array", "items": _TENSOR_META}}},
    "InferenceRequest": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": _PARAMETERS,
        "inputs": {"type": "array", "items": {"type": "object", "required": ["name", "shape", "datatype"],
                                              "properties": {"name": {"type": "string"},
                                                             "shape": {"type": "array", "items": {"type": "integer"}},
                                                             "datatype": _DATATYPE, "parameters": _PARAMETERS,
                                                             "data": {"type": "array", "items": {}}}}},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "parameters": _PARAMETERS}}}}},
    "InferenceResponse": {"type": "object", "required": ["model_name", "id", "outputs"], "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
        "parameters": _PARAMETERS,
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name", "shape", "datatype"],
                                               "properties": {"name": {"type": "string"},
                                                              "shape": {"type": "array", "items": {"type": "integer"}},
                                                              "datatype": _DATATYPE, "parameters": _PARAMETERS,
                                                              "data": {"type": "array", "items": {}}}}}}},
    "ModelStatistics": {"type": "object", "required": ["model_stats"], "properties": {"model_stats": {
        "type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "version": {"type": "string"}, "last_inference": {"type": "integer"},
            "inference_count": {"type": "integer"}, "execution_count": {"type": "integer"},
            "inference_stats": {"type": "object", "additionalProperties": _STAT},
            "batch_stats": {"type": "array", "items": {"type": "object"}},
            "memory_usage": {"type": "array", "items": {"type": "object"}}}}}}},
    "RepositoryIndex": {"type": "array", "items": {"type": "object", "required": ["name", "state"], "properties": {
        "name": {"type": "string"}, "version": {"type": "string"}, "state": {"type": "string"},
        "reason": {"type": "string"}}}},
}


def _get(summary: str, ok: dict[str, Any], *errors: str, parameters: list[Any] | None = None) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "responses": _responses(ok, *errors)}
    if parameters:
        operation["parameters"] = parameters
    return {"get": operation}


def _post(summary: str, body: dict[str, Any], ok: dict[str, Any], *errors: str, required: bool = True,
          parameters: list[Any] | None = None) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "requestBody": {"required": required, "content": _json(body)},
                                 "responses": _responses(ok, *errors)}
    if parameters:
        operation["parameters"] = parameters
    return {"post": operation}


def openapi_document(model_names: list[str] | None = None) -> dict[str, Any]:
    """The whole document; the names of the models being served are given as path examples."""
    name_param = {**_NAME, "example": model_names[0]} if model_names else _NAME
    version_param = {**_VERSION, "example": "1"}
    ready = {"type": "object", "required": ["name", "ready"], "properties": {
        "name": {"type": "string"}, "ready": {"type": "boolean"}}}
    infer = _post("V2 inference (JSON; the binary extension uses Inference-Header-Content-Length)",
                  _ref("InferenceRequest"), _ref("InferenceResponse"), "404", "500", "503")
    explain = _post("Explain a V2 request's rows (the model's explain(), or built-in SHAP)",
                    _ref("InferenceRequest"), {"type": "object"}, "404", "500", "501", "503")
    v1_body = {"type": "object", "properties": {"instances": {"type": "array", "items": {}},
                                                "inputs": {"type": "array", "items": {}}}}
    paths: dict[str, Any] = {
        "/": _get("Liveness (KServe V1)", {"type": "object", "properties": {"status": {"type": "string"}}}),
        "/v2": _get("Server metadata", _ref("ServerMetadata")),
        "/metrics": {"get": {"summary": "Prometheus metrics, summed over every worker process", "responses": {
            "200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}},
            **{code: value for code, value in _responses({}).items() if code != "200"}}}},
        "/v2/health/live": _get("Server liveness", {"type": "object", "properties": {"live": {"type": "boolean"}}}),
        "/v2/health/ready": _get("Server readiness", {"type": "object", "properties": {"ready": {"type": "boolean"}}},
                                 "503"),
        "/v2/models": _get("Names of the models this server holds",
                           {"type": "object", "properties": {"models": {"type": "array", "items": {"type": "string"}}}}),
        "/v2/models/stats": _get("Statistics of every model", _ref("ModelStatistics")),
        "/v2/models/{model_name}": _get("Model metadata", _ref("ModelMetadata"), "404", "503", parameters=[name_param]),
        "/v2/models/{model_name}/versions/{model_version}": _get(
            "Model metadata of a version", _ref("ModelMetadata"), "404", "503", parameters=[name_param, version_param]),
        "/v2/models/{model_name}/ready": _get("Model readiness", ready, "404", "503", parameters=[name_param]),
        "/v2/models/{model_name}/versions/{model_version}/ready": _get(
            "Readiness of a model version", ready, "404", "503", parameters=[name_param, version_param]),
        "/v2/models/{model_name}/stats": _get("Statistics of a model", _ref("ModelStatistics"), "404",
                                              parameters=[name_param]),
        "/v2/models/{model_name}/versions/{model_version}/stats": _get(
            "Statistics of a model version", _ref("ModelStatistics"), "404", parameters=[name_param, version_param]),
        "/v2/models/{model_name}/infer": {"post": {**infer["post"], "parameters": [name_param]}},
        "/v2/models/{model_name}/versions/{model_version}/infer": {
            "post": {**infer["post"], "parameters": [name_param, version_param]}},
        "/v2/models/{model_name}/explain": {"post": {**explain["post"], "parameters": [name_param]}},
        "/v2/models/{model_name}/versions/{model_version}/explain": {
            "post": {**explain["post"], "parameters": [name_param, version_param]}},
        "/v2/repository/index": _post(
            "Every model with its state", {"type": "object", "properties": {"ready": {"type": "boolean"}}},
            _ref("RepositoryIndex"), required=False),
        "/v2/repository/models/{model_name}/load": _post(
            "Load or reload a model (parameters: config, file:<path> as base64)",
            {"type": "object", "properties": {"parameters": {"type": "object"}}},
            {"type": "object", "properties": {"name": {"type": "string"}, "load": {"type": "boolean"}}},
            "404", required=False, parameters=[name_param]),
        "/v2/repository/models/{model_name}/unload": _post(
            "Unload a model", {"type": "object", "properties": {"parameters": {"type": "object"}}},
            {"type": "object", "properties": {"name": {"type": "string"}, "unload": {"type": "boolean"}}},
            "404", required=False, parameters=[name_param]),
        "/v1/models": _get("Names of the models (KServe V1)",
                           {"type": "object", "properties": {"models": {"type": "array", "items": {"type": "string"}}}}),
        "/v1/models/{model_name}": _get("Model status (KServe V1)", ready, "404", parameters=[name_param]),
        "/v1/models/{model_name}:predict": _post(
            "KServe V1 prediction", v1_body,
            {"type": "object", "required": ["predictions"], "properties": {"predictions": {"type": "array",
                                                                                          "items": {}}}},
            "404", "500", "503", parameters=[name_param]),
        "/v1/models/{model_name}:explain": _post(
            "KServe V1 explanation (the answer adds `explanations`, one per instance)", v1_body,
            {"type": "object"}, "404", "500", "501", "503", parameters=[name_param]),
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "Shipyard model server", "version": __version__,
                 "description": "Open Inference Protocol (V2) REST with the binary tensor, model repository, "
                                "statistics and classification extensions, and KServe V1."},
        "paths": paths,
        "components": {"schemas": _SCHEMAS},
    }
