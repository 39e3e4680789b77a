"""The gateway counts its HTTP answers by status (dss_http_responses_total), which the 5xx alert reads."""
from nameko.exceptions import RemoteError
from prometheus_client import REGISTRY

from services.gateway.tests.test_gateway import UUID, gateway, gateway_config, issuer  # noqa: F401 (fixtures)


def answered(status: int) -> float:
    return REGISTRY.get_sample_value("dss_http_responses_total", {"status": str(status)}) or 0.0


def test_every_answer_is_counted_by_status(gateway, web_session):  # noqa: F811
    before = {status: answered(status) for status in (200, 404, 405, 500)}
    gateway.checkout.get_file.side_effect = RemoteError("KeyError", "a bug behind the gateway")

    assert web_session.get("/v1/swagger.json", timeout=10).status_code == 200
    assert web_session.get("/v1/no-such-route", timeout=10).status_code == 404  # answered before any worker
    assert web_session.delete("/v1/swagger.json", timeout=10).status_code == 405
    for _ in range(2):
        assert web_session.get(f"/v1/files/{UUID}?replica=aws", timeout=10).status_code == 500

    assert {status: answered(status) - before[status] for status in before} == {200: 1, 404: 1, 405: 1, 500: 2}
