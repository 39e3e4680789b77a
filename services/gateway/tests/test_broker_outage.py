"""The gateway while no broker can be reached: 503 ``broker_unavailable`` with ``Retry-After`` at
once (no request hangs), and answers again by itself once the broker is back.

The gateway reaches the real RabbitMQ through a ``TcpProxy`` that the test takes down (every open
connection reset, new ones refused, as when the broker's node is gone) and brings back; the service
it calls (a stand-in ``bundles``) is connected directly and keeps running meanwhile.
"""
import time
import urllib.parse

import eventlet
import pytest

from devtools.proxy import TcpProxy
from devtools.waiting import wait_until
from services.gateway.service import GatewayService
from services.gateway.tests.test_gateway import assert_problem, gateway_config, issuer  # noqa: F401 (fixtures)
from shared.entrypoints import rpc

LISTING = "/v1/bundles/all?replica=aws"
FAST_S = 3.0  # the most a refusal may take while the broker is away: generous (a loaded machine), a tenth of the RPC timeout
SLOW_S = 8.0  # how long the stand-in bundles service takes to answer when asked to be slow
slow: list = []  # non-empty: the stand-in answers after SLOW_S
asked: list = []  # one entry per list_bundles the stand-in began


class Bundles:
    name = "bundles"

    @rpc
    def list_bundles(self, replica, prefix, per_page, search_after):
        asked.append(replica)
        if slow:
            eventlet.sleep(SLOW_S)
        return {"bundles": [], "search_after": None}


def through(amqp_uri: str, port: int) -> str:
    parts = urllib.parse.urlsplit(amqp_uri)
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{port}"))


@pytest.fixture
def broker_proxy(rabbit_config):
    target = urllib.parse.urlsplit(rabbit_config["AMQP_URI"])
    proxy = TcpProxy(target.hostname, target.port or 5672).up()
    try:
        yield proxy
    finally:
        proxy.up()  # the containers stop cleanly


@pytest.fixture
def gateway(container_factory, gateway_config, rabbit_config, broker_proxy):  # noqa: F811
    bundles = container_factory(Bundles, rabbit_config)
    bundles.start()
    # A long RPC timeout: a 503 within FAST_S cannot be the timeout's.
    config = {**gateway_config, "AMQP_URI": through(rabbit_config["AMQP_URI"], broker_proxy.port),
              "DSS_RPC_TIMEOUT": 30}
    container = container_factory(GatewayService, config)
    container.start()
    return container


def test_no_broker_is_a_quick_503_with_retry_after_and_the_gateway_recovers(gateway, broker_proxy, web_session):
    assert web_session.get(LISTING).status_code == 200

    broker_proxy.down()
    for _ in range(3):
        began = time.monotonic()
        response = web_session.get(LISTING)
        took = time.monotonic() - began
        assert_problem(response, 503, "broker_unavailable")
        assert int(response.headers["Retry-After"]) > 0
        assert took < FAST_S, f"refused after {took:.1f}s"
        eventlet.sleep(0.5)

    broker_proxy.up()
    deadline = time.monotonic() + 40  # the consumer's reconnection backoff after a few seconds away
    while (status := web_session.get(LISTING).status_code) != 200:
        assert status == 503
        assert time.monotonic() < deadline, "the gateway did not recover once the broker was back"
        eventlet.sleep(0.5)
    assert not gateway._died.ready()


def test_a_request_waiting_when_the_broker_goes_is_answered_503_within_seconds(gateway, broker_proxy, web_session):
    from services.gateway.dependencies import BROKER_LOST_AFTER_S
    assert web_session.get(LISTING).status_code == 200
    slow.append(True)
    try:
        asked.clear()
        waiting = eventlet.spawn(web_session.get, LISTING)
        wait_until(lambda: asked, SLOW_S / 2, "the request reaching the bundles service")  # its reply is SLOW_S away
        cut = time.monotonic()
        broker_proxy.down()
        response = waiting.wait()
        took = time.monotonic() - cut
    finally:
        slow.clear()
    assert_problem(response, 503, "broker_unavailable")
    assert response.headers["Retry-After"]
    assert took < BROKER_LOST_AFTER_S + 1.5 < SLOW_S - 1, f"answered {took:.1f}s after the cut"
    broker_proxy.up()
    deadline = time.monotonic() + 40
    while web_session.get(LISTING).status_code != 200:
        assert time.monotonic() < deadline, "the gateway did not recover once the broker was back"
        eventlet.sleep(0.5)
