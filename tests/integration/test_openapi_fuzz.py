"""Schemathesis against /openapi.json: no 5xx, no undocumented status, the server stays up."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from serverproc import running


@pytest.fixture(scope="module")
def server(artifacts):
    with running(artifacts["sk_logreg"], "--name", "iris") as process:
        yield process
        assert process.process.poll() is None, "the server died during fuzzing"


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_api_conforms_to_its_openapi_document(server):
    """Every operation, fuzzed with generated valid and invalid requests (schemathesis + hypothesis).

    schemathesis's pytest plugin does not run on this pytest, so operations are driven directly.
    """
    api = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 20
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def exercise(case):
            if case.path.endswith("/unload"):
                case.path_parameters = {"model_name": "not-a-model"}  # keep iris loaded for the others
            response = case.call(timeout=30)
            case.validate_response(response, checks=CHECKS)

        exercise()
        assert httpx.get(f"{server.url}/v2/health/live", timeout=10).status_code == 200, operation.label


def test_document_lists_every_route(server):
    document = httpx.get(f"{server.url}/openapi.json").json()
    assert document["openapi"].startswith("3.")
    paths = set(document["paths"])
    for path in ["/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{model_name}/infer",
                 "/v2/models/{model_name}/versions/{model_version}/infer", "/v2/models/{model_name}/stats",
                 "/v2/repository/index", "/v2/repository/models/{model_name}/load", "/v1/models/{model_name}:predict"]:
        assert path in paths
