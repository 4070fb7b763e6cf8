"""The HTTP API's OpenAPI document, and a fuzz run from it against a real ``sidecar serve``:
no 500, no crash, every response matches the document (schemathesis, bounded examples)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings

from sidecar.demo.processes import ManagedProcess, free_port, sidecar_command

TOKEN_ENV = "SIDECAR_TEST_SCHEMA_TOKEN"
TOKEN = "schema-token-0f3a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}  # the case schemathesis strips to test auth
FUZZ_EXAMPLES = 30  # per operation and generation mode: a bounded run of a few seconds


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ManagedProcess]]:
    """A real sidecar (exact layer only: no model to load) requiring a token."""
    tmp_path = tmp_path_factory.mktemp("schema-sidecar")
    port = free_port()
    config = {
        "server": {
            "http_port": port,
            "grpc_enabled": False,
            "auth_token_env": TOKEN_ENV,
            "max_body_bytes": 64 * 1024,
            # fuzzed Authorization headers are wrong tokens: with the failed-token limit on,
            # the address would soon get 429 everywhere (tests/test_auth.py covers that)
            "auth_max_failures": 0,
        },
        "cache": {"data_dir": ":memory:", "default_cache_key": "fuzz", "vector_store": ""},
    }
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = ManagedProcess(
        "sidecar", sidecar_command(path), tmp_path / "sidecar.log", env={TOKEN_ENV: TOKEN}
    )
    proc.start()
    url = f"http://127.0.0.1:{port}"
    try:
        proc.wait_ready(f"{url}/readyz", 120, headers=AUTH)
        yield url, proc
    finally:
        proc.stop()


def test_openapi_document_needs_the_token_and_describes_the_api(
    served: tuple[str, ManagedProcess],
) -> None:
    url, _ = served
    assert httpx.get(f"{url}/openapi.json", timeout=10).status_code == 401
    doc = httpx.get(f"{url}/openapi.json", headers=AUTH, timeout=10).json()
    paths = doc["paths"]
    assert {
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/hooks/request",
        "/v1/hooks/response",
        "/v1/cache/entries/{entry_id}",
        "/v1/cache/partitions/{cache_key}",
    } <= set(paths)
    request_body = paths["/v1/hooks/request"]["post"]["requestBody"]["content"]
    envelope = request_body["application/json"]["schema"]
    assert set(envelope["required"]) == {"method", "path"}
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert paths["/healthz"]["get"]["security"] == []  # the probe stays open
    for status in ("400", "401", "413", "503"):
        assert status in paths["/v1/hooks/request"]["post"]["responses"]


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(scope="module")
def api_schema(served: tuple[str, ManagedProcess]) -> Any:
    url, _ = served
    return schemathesis.openapi.from_url(f"{url}/openapi.json", headers=AUTH)


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_fuzzed_calls_get_documented_answers(case: Any, served: tuple[str, ManagedProcess]) -> None:
    url, proc = served
    # Every check but positive_data_acceptance: the envelope's ``body`` is the LLM request,
    # valid or not depending on path and format (a 400 naming the field, documented), which a
    # JSON schema for the envelope cannot say.
    case.call_and_validate(
        base_url=url,
        headers=AUTH,
        timeout=30,
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
    )
    assert proc.running(), proc.log_tail()


def test_no_server_error_was_logged(served: tuple[str, ManagedProcess]) -> None:
    """Runs after the fuzz run (file order): nothing raised inside the sidecar."""
    _, proc = served
    log = Path(proc.log_path).read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in log and "Exception in ASGI application" not in log
