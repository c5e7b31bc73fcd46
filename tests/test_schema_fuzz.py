"""Schemathesis against the OpenAPI schema: no 5xx, and every answer matches the schema."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.conftest import GatewayFactory, role
from tests.peers.fake_upstream import FakeUpstream, text_script
from tests.test_toolchain import TOOLS_CONFIG

EXAMPLES = int(os.environ.get("STAGECAST_TEST_FUZZ_EXAMPLES", "60"))


@pytest.fixture
def api_schema(make_gateway: GatewayFactory, upstream: FakeUpstream) -> schemathesis.BaseSchema:
    # Any stage the fuzzer manages to start gets a short, valid answer.
    upstream.fallback = text_script(["ok"])
    gw = make_gateway(
        models={"fake": role(upstream.url), "other": role(upstream.url)},
        tools=TOOLS_CONFIG,
        heartbeat_interval=1.0,
    )
    return schemathesis.openapi.from_url(gw.url + "/openapi.json")


# Some of schemathesis's own strategies draw from the ``random`` module, which Hypothesis
# warns about when a case happens to take that path; with warnings as errors that failed the
# run now and then, as a "flaky" case. It is the fuzzer's business, not the gateway's.
@pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)
def test_api_conforms_to_its_schema(api_schema: schemathesis.BaseSchema) -> None:
    # Operation by operation, with Hypothesis driving each (the schemathesis pytest plugin
    # does not support this pytest version).
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 9
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case: schemathesis.Case) -> None:
            # Runtime rules the schema cannot carry (configured limits, enabled tools, a live
            # stage id) reject some schema-valid bodies with a 422 or 409 by design.
            case.call_and_validate(timeout=30, excluded_checks=[positive_data_acceptance])

        check()
