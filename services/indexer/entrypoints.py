"""The indexer's event handlers: ``shared.retry``'s broker-side retries, with the delays taken from
``DSS_INDEX_RETRY_DELAYS`` when the container starts (a deployment, or a test, changes them
without a code change)."""
from shared.config import Settings
from shared.retry import RetryingEventHandler


class IndexEventHandler(RetryingEventHandler):
    def setup(self):
        super().setup()
        self.delays = Settings.from_config(self.container.config).index_retry_delays


index_event_handler = IndexEventHandler.decorator
