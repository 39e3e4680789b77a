"""No first-start gap: an event published before its handler's service ever started is handled once
it starts (``shared.entrypoints.EventDispatcher`` declares the queues of ``shared.events.HANDLERS``),
and that table is the services' own list of handlers."""
import importlib
import inspect
import time

import pytest
from kombu import Connection
from nameko.events import SERVICE_POOL, EventHandler as NamekoEventHandler
from nameko.standalone.rpc import ServiceRpcProxy

from shared import events
from shared.entrypoints import EventDispatcher, binding_keys, event_handler, routing_key, rpc

SERVICES = ("files", "bundles", "replicator", "indexer", "notifier", "checkout")
received: list = []


def service_pool_handlers() -> set[tuple[str, str, str, tuple[str, ...]]]:
    """(source, event, "service.method", key prefixes) of every service's shared-queue event handlers."""
    found = set()
    for name in SERVICES:
        module = importlib.import_module(f"services.{name}.service")
        service = next(cls for cls in vars(module).values() if inspect.isclass(cls) and getattr(cls, "name", None) == name)
        for method_name, method in inspect.getmembers(service):
            for entrypoint in getattr(method, "nameko_entrypoints", ()):
                if isinstance(entrypoint, NamekoEventHandler) and entrypoint.handler_type is SERVICE_POOL:
                    assert entrypoint.reliable_delivery, f"{name}.{method_name}: a shared queue must be durable"
                    found.add((entrypoint.source_service, entrypoint.event_type, f"{name}.{method_name}",
                               entrypoint.key_prefixes))
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


# --- object events: routed by the top folder of their key ---------------------------------------------

class ObjectEventPublisher:
    name = "replicator"  # the source of the object events, whose handler queues it declares
    dispatch = EventDispatcher()

    @rpc
    def publish(self, event_type, payload):
        self.dispatch(event_type, payload)


def test_an_object_event_reaches_only_the_handlers_of_its_folder(container_factory, rabbit_config):
    """The broker, not a worker, keeps a blob's or a file's events from the indexer and bundles."""
    publisher = container_factory(ObjectEventPublisher, rabbit_config)  # no handler has started
    publisher.start()
    keys = ("blobs/b", "files/f.v", "bundles/u.v", "bundles/u.dead", "collections/c.v", "odd")
    with ServiceRpcProxy("replicator", rabbit_config) as replicator:
        for key in keys:
            replicator.publish(events.OBJECT_CHANGED, {"key": key})
            replicator.publish(events.OBJECT_REPLICATED, {"key": key})
    waiting = {}
    with Connection(rabbit_config["AMQP_URI"]) as connection:
        channel = connection.channel()
        for source, event_type, handler, _ in events.HANDLERS:
            if event_type in events.ROUTED_BY_FOLDER:
                name = f"evt-{source}-{event_type}--{handler}"
                waiting[f"{event_type} {handler}"] = channel.queue_declare(queue=name, passive=True).message_count
    assert waiting == {"object_changed indexer.handle_object_changed": 2,
                       "object_changed replicator.handle_object_changed": len(keys),
                       "object_replicated bundles.handle_object_replicated": 1,
                       "object_replicated indexer.handle_object_replicated": 2}


def test_routing_keys_and_bindings():
    assert routing_key(events.OBJECT_REPLICATED, {"key": "files/f.v"}) == "object_replicated.files"
    assert routing_key(events.OBJECT_CHANGED, {"key": "odd"}) == "object_changed._"
    assert routing_key(events.OBJECT_CHANGED, {"key": "a.b/c"}) == "object_changed._"  # one word only
    assert routing_key(events.FILE_CREATED, {"key": "files/f.v"}) == "file_created"
    assert binding_keys(events.OBJECT_CHANGED) == ["object_changed.#"]
    # The bare type too: what a publisher naming no folder sends (its skip test settles the rest).
    assert binding_keys(events.OBJECT_CHANGED, ("bundles/",)) == ["object_changed", "object_changed.bundles"]
    assert binding_keys(events.BUNDLE_CREATED, ("bundles/",)) == ["bundle_created"]
    with pytest.raises(ValueError):
        binding_keys(events.OBJECT_CHANGED, ("bundles",))
