"""Schemathesis against the served OpenAPI spec: over a thousand valid and invalid requests, no 5xx.

The worker is not started, so fuzzed valid jobs queue up instead of training; every route still runs
its real code (validation, auth, lookups, cancel of queued jobs, 404/409 answers).
"""

from __future__ import annotations

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup

from api_helpers import AUTH, TOKEN

REQUESTS = 1100
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_api_fuzz_openapi_no_server_errors(tmp_path):
    from nfsd_server.api.app import ServerConfig, create_app

    app = create_app(ServerConfig(data_dir=tmp_path / "jobs", token=TOKEN), start_worker=False)
    with TestClient(app, headers=AUTH) as client:
        known_id = client.post("/v1/jobs", json={"prompt": "a red ball"}).json()["id"]
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        cases = st.one_of(
            schema.as_strategy(GenerationMode.POSITIVE),
            schema.as_strategy(GenerationMode.NEGATIVE),
            # Also hit a job that exists, so lookups succeed and cancel/result paths run past the 404.
            schema.as_strategy(GenerationMode.POSITIVE, path_parameters={"job_id": known_id}),
        )
        sent: list[int] = []
        failures: list[str] = []

        @settings(max_examples=REQUESTS, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=cases)
        def fuzz(case) -> None:
            response = case.call(headers=AUTH)
            sent.append(response.status_code)
            try:
                case.validate_response(response, checks=CHECKS)
            except (AssertionError, FailureGroup) as failure:  # collect all, so one run shows every kind of defect
                failures.append(f"{case.method} {case.formatted_path} → {response.status_code}: {failure}"[:600])

        fuzz()
    assert len(sent) >= 1000
    assert not [status for status in sent if status >= 500]
    assert not failures, "\n".join(sorted(set(failures))[:10])
    assert {200, 202, 404, 409, 422} <= set(sent)  # the fuzzer reached past validation, not only into it
