"""Schemathesis sends requests generated from the service's own OpenAPI schema: none may get a 5xx.

Driven through Hypothesis directly (one property per operation) rather than through
schemathesis' pytest plugin, which does not work with pytest 9.2.
"""

from __future__ import annotations

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from app.main import create_app
from app.settings import Settings
from tests.conftest import metric


def test_no_generated_request_gets_a_server_error(server, tiny_bundle):
    routes = ("/v1/predict", "/v2/models/{name}/infer")
    sent_before = [metric(server, "stackserve_requests_total", route=r) for r in routes]
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/predict", "POST /v2/models/{name}/infer", "GET /v1/model"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
        )
        def no_server_error(case) -> None:
            if "name" in (case.path_parameters or {}):  # the served model, so that bodies reach the model code
                case.path_parameters["name"] = tiny_bundle.name
            response = case.call(timeout=60)
            assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text}"
            if response.status_code >= 400:  # every error in its API's shape: the protocol's on /v2, ours on /v1
                error = response.json()["error"]
                if case.path.startswith("/v2"):
                    assert isinstance(error, str) and set(response.json()) == {"error"}, response.text
                else:
                    assert set(error) == {"code", "message"}, response.text

        no_server_error()
    sent = [metric(server, "stackserve_requests_total", route=r) - before for r, before in zip(routes, sent_before)]
    assert min(sent) >= 20, sent  # it really asked, and asked the model routes many different things


def test_every_route_documents_its_answer_and_the_key_is_a_security_scheme(tmp_path):
    """Clients generated from the schema get typed answers and know where the API key goes."""
    schema = TestClient(create_app(Settings(bundle=tmp_path))).get("/openapi.json").json()  # nothing is loaded
    assert schema["components"]["securitySchemes"]["APIKeyHeader"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "Needed by the model routes when the service has STACKSERVE_API_KEY set.",
    }
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            content = operation["responses"]["200"].get("content", {})
            assert content, f"{method.upper()} {path}: no documented answer"
            if "application/json" in content and path != "/metrics":
                assert "$ref" in content["application/json"]["schema"], f"{method.upper()} {path}: untyped answer"
            keyed = path.startswith("/v1/") or (path.startswith("/v2/models/") and "ready" not in path)
            assert (operation.get("security") == [{"APIKeyHeader": []}]) == keyed, f"{method.upper()} {path}"
