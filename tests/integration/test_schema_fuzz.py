"""Schema fuzzing: every endpoint of /openapi.json, fed what its schema allows, never answers 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from devtools.stack import Stack, create_token

pytestmark = pytest.mark.integration

# Bounded for CI: examples per endpoint, derandomised so that a failure reproduces.
EXAMPLES = 25


def test_no_generated_request_makes_the_server_fail(stack: Stack) -> None:
    schema = schemathesis.openapi.from_url(f"{stack.url}/openapi.json")
    token = create_token(stack.database_url, "it-fuzz")  # its own account: fuzzed deletes touch nobody else
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 13  # every endpoint of the API (SPEC), health included
    failures: list[str] = []
    statuses: dict[int, int] = {}
    for operation in operations:

        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            response = case.call(headers={"Authorization": f"Token {token}"}, timeout=60)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path} {case.body!r} -> {response.status_code} {response.text}")
            elif response.status_code >= 400 and "json" in str(response.headers.get("content-type")):
                body = response.json()
                if set(body) != {"error", "detail"}:  # SPEC's error shape, for every refusal
                    failures.append(f"{case.method} {case.path}: error body {body}")

        check()
    assert not failures, "\n".join(failures[:20])
    assert sum(statuses.values()) >= EXAMPLES * len(operations) // 2, statuses
    assert any(200 <= s < 300 for s in statuses), statuses  # the fuzzing reached real work, not only refusals
