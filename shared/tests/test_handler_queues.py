"""No first-start gap: an event published before its handler's service ever started is handled once
it starts (``shared.entrypoints.EventDispatcher`` declares the queues of ``shared.events.HANDLERS``),
and that table is the services' own list of handlers."""
import importlib
import inspect
import time

from nameko.events import SERVICE_POOL, EventHandler as NamekoEventHandler
from nameko.standalone.rpc import ServiceRpcProxy

from shared import events
from shared.entrypoints import EventDispatcher, event_handler, rpc

SERVICES = ("files", "bundles", "replicator", "indexer", "notifier", "checkout")
received: list = []


def service_pool_handlers() -> set[tuple[str, str, str]]:
    """(source, event, "service.method") of every service's shared-queue event handlers."""
    found = set()
    for name in SERVICES:
        module = importlib.import_module(f"services.{name}.service")
        service = next(cls for cls in vars(module).values() if inspect.isclass(cls) and getattr(cls, "name", None) == name)
        for method_name, method in inspect.getmembers(service):
            for entrypoint in getattr(method, "nameko_entrypoints", ()):
                if isinstance(entrypoint, NamekoEventHandler) and entrypoint.handler_type is SERVICE_POOL:
                    assert entrypoint.reliable_delivery, f"{name}.{method_name}: a shared queue must be durable"
                    found.add((entrypoint.source_service, entrypoint.event_type, f"{name}.{method_name}"))
    return found


def test_the_table_lists_exactly_the_services_handlers():
    assert set(events.HANDLERS) == service_pool_handlers()
    assert len(set(events.HANDLERS)) == len(events.HANDLERS)


class Publisher:
    name = "bundles"  # the source of bundle_created, whose handler queues it declares
    dispatch = EventDispatcher()

    @rpc
    def publish(self, payload):
        self.dispatch(events.BUNDLE_CREATED, payload)


class LateConsumer:
    name = "indexer"

    @event_handler("bundles", events.BUNDLE_CREATED)
    def handle_bundle_created(self, payload):
        received.append(payload)


def test_an_event_published_before_its_handler_ever_started_is_handled(container_factory, rabbit_config,
                                                                       rabbit_manager):
    received.clear()
    publisher = container_factory(Publisher, rabbit_config)  # a fresh vhost: no queue exists yet
    publisher.start()
    with ServiceRpcProxy("bundles", rabbit_config) as bundles:
        bundles.publish({"n": 1})

    queue = "evt-bundles-bundle_created--indexer.handle_bundle_created"
    assert rabbit_manager.get_queue(rabbit_config["vhost"], queue)["name"] == queue

    consumer = container_factory(LateConsumer, rabbit_config)
    consumer.start()
    deadline = time.monotonic() + 20
    while not received:
        assert time.monotonic() < deadline, "the event published before the handler started never arrived"
        time.sleep(0.1)
    assert received == [{"n": 1}]
