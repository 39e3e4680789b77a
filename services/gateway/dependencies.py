"""The gateway's dependencies: settings, authentication, the services over RPC, the broker."""
from __future__ import annotations

import logging
import time

import eventlet
from kombu import Connection
from kombu.exceptions import KombuError
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.exceptions import UnknownService
from nameko.extensions import DependencyProvider

from services.gateway.access import AccessPolicy
from services.gateway.auth import Authenticator
from shared.config import Settings
from shared.entrypoints import RpcProxy
from shared.exceptions import Unavailable
from shared.probes import consumer_problem

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 5
# How a request is published while the broker is unreachable: one quick retry (a connection the
# broker just closed is reopened), then 503 at once, rather than nameko's 2 + 4 + 6 s of retries.
REQUEST_RETRY_POLICY = {"max_retries": 1, "interval_start": 0.2, "interval_step": 0, "interval_max": 0.2}
BROKER_UNAVAILABLE = ("the message broker is unreachable", "broker_unavailable")
# A call waiting for its reply gives up with a 503 once the reply consumer has been disconnected
# this long (a blip shorter than that is survived: the reply waits in its queue for the reconnect).
BROKER_LOST_AFTER_S = 2.0
BROKER_WATCH_INTERVAL_S = 0.25


class BrokerLost(Exception):
    """Thrown into a call waiting for a reply that the gateway's consumer cannot receive."""


class GatewaySettings(DependencyProvider):
    """The resolved ``shared.config.Settings``."""

    def setup(self):
        self.settings = Settings.from_config(self.container.config)

    def get_dependency(self, worker_ctx):
        return self.settings


class AuthAPI:
    """Each route's auth step: ``writer`` for writes, ``caller`` for operations that act for their
    caller, ``reader`` for the others (a token only where the access policy asks for one)."""

    def __init__(self, authenticator: Authenticator, policy: AccessPolicy):
        self._authenticator = authenticator
        self.policy = policy

    def _authenticated(self, request) -> dict:
        return self._authenticator.authenticate(request.headers.get("Authorization"))

    def caller(self, request) -> dict:
        """The authenticated caller of ``request`` (401 without a valid token), allowed to read
        (403 ``read_not_allowed`` outside ``DSS_AUTH_READ_GROUPS``)."""
        return self.policy.require_reader(self._authenticated(request))

    def reader(self, request, operation_id: str) -> dict | None:
        """As ``caller`` where the access policy protects ``operation_id``; else None (anonymous)."""
        return self.caller(request) if self.policy.needs_token(operation_id) else None

    def writer(self, request) -> dict:
        """The authenticated caller, allowed to write (403 otherwise)."""
        return self._authenticator.require_writer(self._authenticated(request))


class Auth(DependencyProvider):
    def setup(self):
        settings = Settings.from_config(self.container.config)
        # Built once per container: the key sets it holds cache their JWKS across requests.
        self.authenticator = Authenticator.from_settings(settings)
        self.policy = AccessPolicy.from_settings(settings)  # an unknown operation stops the start here

    def get_dependency(self, worker_ctx):
        return AuthAPI(self.authenticator, self.policy)


class TimedServiceProxy:
    """A nameko service proxy whose calls give up after ``timeout`` seconds.

    nameko 2's proxy waits for a reply for ever; a service that is down or stuck must instead
    become a 503 the client can retry. Broker failures become 503s too, quickly: with
    ``broker_problem`` (what keeps the reply consumer from receiving, or None) a call is refused at
    once while there is one, and a call waiting for its reply gives up once there has been one for
    ``BROKER_LOST_AFTER_S``.
    """

    def __init__(self, proxy, service_name: str, timeout: float, broker_problem=None):
        self._proxy = proxy
        self._service_name = service_name
        self._timeout = timeout
        self._broker_problem = broker_problem  # None: not watched (a proxy without a broker of its own)

    def with_timeout(self, timeout: float) -> "TimedServiceProxy":
        return TimedServiceProxy(self._proxy, self._service_name, timeout, self._broker_problem)

    def __getattr__(self, method_name: str):
        if method_name.startswith("_"):
            raise AttributeError(method_name)

        def call(*args, **kwargs):
            return self._call(method_name, args, kwargs)
        return call

    def _call(self, method_name, args, kwargs):
        name = self._service_name
        problem = self._broker_problem and self._broker_problem()
        if problem:
            # No reply could reach us: answer at once instead of waiting out the RPC timeout.
            logger.warning("RPC %s.%s refused: the gateway's broker consumer is %s", name, method_name, problem)
            raise Unavailable(*BROKER_UNAVAILABLE)
        watcher = eventlet.spawn(self._watch, eventlet.getcurrent()) if self._broker_problem else None
        try:
            with eventlet.Timeout(self._timeout) as timer:
                return getattr(self._proxy, method_name)(*args, **kwargs)
        except BrokerLost:
            logger.warning("RPC %s.%s abandoned: the gateway lost its broker connection", name, method_name)
            raise Unavailable(*BROKER_UNAVAILABLE) from None
        except eventlet.Timeout as timeout:
            if timeout is not timer:
                raise
            logger.warning("%s.%s did not answer within %ss", name, method_name, self._timeout)
            raise Unavailable(f"the {name} service did not answer in time", "service_timeout") from None
        except UnknownService:
            raise Unavailable(f"the {name} service is not running", "service_unavailable") from None
        except (KombuError, OSError) as error:
            logger.warning("RPC %s.%s failed on the broker: %s", name, method_name, error)
            raise Unavailable(*BROKER_UNAVAILABLE) from None
        finally:
            if watcher is not None:
                watcher.kill()

    def _watch(self, caller) -> None:
        """Beside a call: once the reply consumer has been disconnected for ``BROKER_LOST_AFTER_S``,
        end the call's wait (the reply, if any, is dropped as after a timeout)."""
        lost_since = None
        while True:
            eventlet.sleep(BROKER_WATCH_INTERVAL_S)
            if not self._broker_problem():
                lost_since = None
                continue
            now = time.monotonic()
            lost_since = lost_since or now
            if now - lost_since >= BROKER_LOST_AFTER_S:
                caller.throw(BrokerLost())
                return


class ServiceRpc(RpcProxy):
    """``shared.entrypoints.RpcProxy`` with ``DSS_RPC_TIMEOUT`` applied to every call, answering
    503 ``broker_unavailable`` at once while no broker can be reached: the gateway's reply consumer
    is not connected (it reconnects by itself), or publishing the request fails after one quick
    retry."""

    def __init__(self, target_service, **options):
        options.setdefault("retry_policy", REQUEST_RETRY_POLICY)
        super().__init__(target_service, **options)

    def setup(self):
        super().setup()
        self.timeout = Settings.from_config(self.container.config).rpc_timeout

    def broker_problem(self) -> str | None:
        """None while the consumer of the replies is connected and consuming, else why not."""
        return consumer_problem(self.rpc_reply_listener.queue_consumer)

    def get_dependency(self, worker_ctx):
        return TimedServiceProxy(super().get_dependency(worker_ctx), self.target_service, self.timeout,
                                 self.broker_problem)


class BrokerAPI:
    def __init__(self, amqp_uri: str):
        self._amqp_uri = amqp_uri

    def health(self, timeout: float = HEALTH_TIMEOUT_S) -> dict:
        try:
            with eventlet.Timeout(timeout) as timer:
                with Connection(self._amqp_uri, connect_timeout=timeout) as connection:
                    connection.connect()
            return {"ok": True, "detail": "reachable"}
        except eventlet.Timeout as error:
            if error is not timer:
                raise
            return {"ok": False, "detail": "unreachable (timed out)"}
        except Exception as error:  # a probe: any failure is an answer
            # The type only: the URI (with its password) may appear in the message.
            return {"ok": False, "detail": f"unreachable ({type(error).__name__})"}


class Broker(DependencyProvider):
    def setup(self):
        self.amqp_uri = self.container.config[AMQP_URI_CONFIG_KEY]

    def get_dependency(self, worker_ctx):
        return BrokerAPI(self.amqp_uri)
