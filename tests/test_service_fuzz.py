"""Fuzzing the service's OpenAPI schema (schemathesis: generated paths, queries, headers and bodies,
valid and not, for every operation, with a valid API key): no request gets a 500 or crashes the server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from facefleet.config import JobConfig
from facefleet.config.service import ServiceConfig
from facefleet.entrypoints.service.app import create_app
from facefleet.entrypoints.service.core import Service
from facefleet.entrypoints.service.keys import create_key

schemathesis = pytest.importorskip("schemathesis")

KEY: dict[str, str] = {}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    KEY["key"] = create_key(tmp / "keys.json", "fuzz", rate_limit=10_000.0, burst=10_000)
    (tmp / "root").mkdir()
    cfg = JobConfig(
        devices="cpu",
        service=ServiceConfig(data_dir=str(tmp / "state"), api_keys=str(tmp / "keys.json"), ui=False,
                              roots=(str(tmp / "root"),)),
    )  # fmt: skip
    service = Service(cfg, gpu_metrics=False).start()
    deadline = time.monotonic() + 120
    while not service.ready()[0]:
        assert time.monotonic() < deadline, service.ready()
        time.sleep(0.1)
    yield schemathesis.openapi.from_asgi("/openapi.json", create_app(service, start=False))
    service.close()


def test_no_server_errors(api: Any) -> None:
    from hypothesis import HealthCheck, given, settings

    ops = [r.ok() for r in api.get_all_operations()]
    assert len(ops) >= 8
    for op in ops:

        @given(case=op.as_strategy())
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            response = case.call(headers={"X-API-Key": KEY["key"]})
            assert response.status_code < 500, (case.as_curl_command(), response.text[:500])

        check()
