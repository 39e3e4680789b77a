"""The service `bench/nameko_floor.py` measures: plain nameko entrypoints that do nothing but what
the framework does for them (no metrics, tracing or retries of the store's own), so that their CPU
per message is the least any nameko service pays for one."""
from nameko.events import EventDispatcher, event_handler
from nameko.rpc import rpc

SOURCE = "bench_nameko_floor_source"
HANDLED = {"nothing_happened": 0, "something_to_pass_on": 0}


class NamekoFloorService:
    name = "bench_nameko_floor"

    dispatch = EventDispatcher()

    @event_handler(SOURCE, "nothing_happened")
    def handle_nothing_happened(self, payload):
        HANDLED["nothing_happened"] += 1

    @event_handler(SOURCE, "something_to_pass_on")
    def handle_something_to_pass_on(self, payload):
        self.dispatch("passed_on", payload)
        HANDLED["something_to_pass_on"] += 1

    @rpc
    def nothing(self):
        return None

    @rpc
    def handled(self):
        return dict(HANDLED)
