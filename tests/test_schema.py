"""schemathesis against the demo service's OpenAPI schema: no 5xx, and every response
matches the schema it documents (status codes, content types, bodies)."""

import os
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from driftgate.demo import create_demo_app
from driftgate.settings import parse_settings

pytestmark = pytest.mark.slow

_STATE = Path(tempfile.mkdtemp(prefix="driftgate-schema-"))
os.environ["DRIFTGATE_SCHEMA_TEST_TOKEN"] = "schema-test-token"  # not the real variable
APP = create_demo_app(
    parse_settings(
        {
            "enforce_enabled": True,
            "enforce_readiness_gate": {"enabled": True, "min_requests": 5},
            "rollout": {"enabled": True, "state_path": str(_STATE / "rollout.json")},
            "admin": {"token_env": "DRIFTGATE_SCHEMA_TEST_TOKEN"},
        }
    )
)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case):
    case.call_and_validate()


ADMIN = schema.include(path_regex=r"^/api/guardian/rollout/(advance|rollback)$")


@ADMIN.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_authenticated_admin_operations_conform_to_the_schema(case):
    """The admin operations past authentication: moves, 400 at the ends, 422 for bad bodies.
    A valid request may be refused with 400 when the rollout cannot move (at the final stage,
    already aborted), as the contract says, so that one check is left out."""
    case.call_and_validate(
        headers={"Authorization": "Bearer schema-test-token"},
        excluded_checks=[positive_data_acceptance],
    )
